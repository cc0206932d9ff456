"""The app's pure parts, without a browser (and without Gradio where they do not need it):
widget values to config overrides, the metrics table, the plots drawn from a run folder,
session order, step logs. The browser test is tests/test_app_ui.py (``make test-ui``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relcast.app import run_plots
from relcast.app.data_tab import SOURCES, load_data
from relcast.app.evaluate_tab import evaluate_choices
from relcast.app.session import (
    check_order,
    end_session,
    failure_message,
    new_session,
    progress_md,
    render_log,
    step_summary,
)
from relcast.app.settings_tab import SETTINGS, prepare, settings_overrides, settings_values
from relcast.config import RelcastConfigError, load_config
from relcast.data.panel import RelcastDataError
from relcast.evaluation.metrics_table import COLUMNS, metrics_table_text
from relcast.evaluation.plot_data import backtest_series, prediction_band

PNG = b"\x89PNG\r\n\x1a\n"
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "IDX"]
T = 12


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("preset", ["small", "medium", "large"])
def test_settings_round_trip_through_the_config(preset):
    """Every widget lands on its own config key: change each one, read them all back."""
    values = dict(zip(SETTINGS, settings_values(load_config(preset)), strict=True))
    changed = {
        "d_model": 48,
        "num_heads": 3,
        "stage1_epochs": values["stage1_epochs"] + 3,
        "horizons": values["horizons"] + 2,
        "models": ["lstm", "tcn"],
        "feature_sets": ["own"],
        "lookback": values["lookback"] + 7,
        "stage3_epochs": values["stage3_epochs"] + 5,
        "extractor": "v3",
        "stage2": not values["stage2"],
        "regime": False,
    }
    assert set(changed) == set(SETTINGS)
    overrides = settings_overrides(*(changed[k] for k in SETTINGS))
    assert overrides[-1] == "trainer.progress=true"  # the app streams the progress bar
    again = load_config(preset, overrides=overrides)
    assert dict(zip(SETTINGS, settings_values(again), strict=True)) == changed


def test_free_text_settings_win_and_comments_are_skipped():
    values = settings_values(load_config("small"))
    extra = "# a note\n\n  stage3.lookback=13  \nstage3.hidden_size=24\n"
    overrides = settings_overrides(*values, extra=extra)
    assert "# a note" not in overrides and "" not in overrides
    cfg = load_config("small", overrides=overrides)
    assert cfg.stage3.lookback == 13 and cfg.stage3.hidden_size == 24


@pytest.mark.parametrize("empty", ["models", "feature_sets"])
def test_settings_need_a_model_and_a_feature_set(empty):
    values = dict(zip(SETTINGS, settings_values(load_config("small")), strict=True))
    values[empty] = []
    with pytest.raises(RelcastConfigError, match="at least one"):
        settings_overrides(*(values[k] for k in SETTINGS))


# ----------------------------------------------------------------------------- the table
def _metrics() -> dict:
    def row(rank_ic, **kw):
        return {"rank_ic": rank_ic, "ic": rank_ic / 2, "mse": 1.0, "n_dates": T, **kw}

    return {
        "models": {
            "lightgbm": row(0.02),
            "hybrid_tft": row(0.05, seeds={"rank_ic_std": 0.01}),
            "control_shuffled_lightgbm": row(0.30),  # a control is never "best"
        }
    }


def test_metrics_frame_is_the_reports_table():
    frame = run_plots.metrics_frame(_metrics())
    assert list(frame.columns) == ["model", *(c.label for c in COLUMNS)]
    assert list(frame["model"]) == ["lightgbm", "hybrid_tft", "control_shuffled_lightgbm"]
    rank = frame.set_index("model")["Rank IC"]
    assert rank["hybrid_tft"] == "+0.0500 ± 0.0100*"
    assert rank["control_shuffled_lightgbm"] == "+0.3000"  # higher, but not marked best
    assert rank["lightgbm"] == "+0.0200"
    # the terminal table shows the same cells
    text = metrics_table_text(_metrics())
    for model, cell in rank.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(model + " "))
        assert cell in line


# ----------------------------------------------------------------------------- a run folder
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A fake evaluated run: predictions (one model with quantiles), attention, backtest."""
    run = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2024-01-01", periods=T)
    stocks = SYMBOLS[:4]  # the index is not predicted
    rows = []
    for model in ("lightgbm", "hybrid_tft", "naive_zero", "stage3_own_gru"):
        for d in dates:
            for s in stocks:
                pred = float(rng.normal(0, 3.0))
                r = {"date": d, "symbol": s, "model": model, "horizon": 1, "pred": pred}
                r["label"] = float(rng.normal(0.001, 0.02))
                q = model == "hybrid_tft"
                r.update({c: pred + o if q else np.nan for c, o in (("q0.1", -1), ("q0.9", 1))})
                r["q0.5"] = pred if q else np.nan
                rows.append(r)
    pd.DataFrame(rows).to_parquet(run / "predictions.parquet")
    att = rng.random((T, len(SYMBOLS), len(SYMBOLS))).astype(np.float32)
    att /= att.sum(-1, keepdims=True)
    np.savez(
        run / "attention.npz",
        dates=dates.to_numpy().astype("int64"),
        symbols=np.array(["IDX", "DDD", "AAA", "BBB", "CCC"]),
        attention=att,
    )
    bt = [
        {"date": d, "model": m, "strategy": st, "daily_return": float(rng.normal(0, 0.01)),
         "benchmark_return": 0.001, "excess_return": 0.0, "turnover": 0.2}
        for st in ("topk", "long_short") for m in ("lightgbm", "hybrid_tft") for d in dates
    ]  # fmt: skip
    pd.DataFrame(bt).to_parquet(run / "backtest.parquet")
    (run / "importance.json").write_text(json.dumps({"hybrid_tft": {"ret_1": 0.7, "rsi": 0.3}}))
    (run / "metrics.json").write_text(json.dumps(_metrics()))
    return run


def test_plots_are_drawn_from_the_run_folder(run_dir, tmp_path):
    paths = [
        run_plots.attention_plot(run_dir, "AAA", tmp_path),
        run_plots.importance_plot(run_dir, "hybrid_tft", tmp_path),
        run_plots.prediction_plot(run_dir, "hybrid_tft", "BBB", tmp_path),
        run_plots.prediction_plot(run_dir, "lightgbm", "BBB", tmp_path),
        run_plots.backtest_plot(run_dir, "topk", tmp_path),
        run_plots.backtest_plot(run_dir, "long_short", tmp_path),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG, path
    assert len({p.name for p in paths}) == len(paths)  # no plot overwrites another
    assert run_plots.importance_plot(run_dir, "lightgbm", tmp_path) is None  # not a TFT
    with pytest.raises(ValueError, match="no predictions for 'ZZZ'"):
        run_plots.prediction_plot(run_dir, "hybrid_tft", "ZZZ", tmp_path)


def test_evaluate_choices(run_dir):
    c = evaluate_choices(run_dir)
    assert c["stocks"] == ["AAA", "BBB", "CCC", "DDD"]
    assert c["targets"] == ["DDD", "AAA", "BBB", "CCC"]  # attention order, predicted only
    assert c["importance"] == ["hybrid_tft"]
    # intervals first, then hybrid first; a constant forecast is not worth a plot
    assert c["models"][0] == "hybrid_tft" and "naive_zero" not in c["models"]


# ------------------------------------------------------- the evaluate tab on a large run
TAB_MODELS = ("lightgbm", "stage3_own_tft", "hybrid_tft", "naive_zero", "hybrid_gru")


def _write_predictions(path: Path, models, seed: int = 1) -> None:
    """predictions.parquet as evaluate writes it (frames.write_frames: each model's rows of a
    horizon in row groups of their own, float32, label_z): horizons 1 and 2, a few (date,
    stock) rows missing, a stock without attention (EEE); hybrid_tft has quantiles at both
    horizons, stage3_own_tft at horizon 2 only."""
    from relcast.evaluation.frames import prediction_columns, write_frames

    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2024-01-01", periods=T)
    stocks = ["AAA", "BBB", "CCC", "DDD", "EEE"]
    keep = rng.random((T, len(stocks))) > 0.15
    keep[:, stocks.index("CCC")] = keep[:, stocks.index("DDD")] = True
    t, n = np.nonzero(keep)
    pieces = []
    for model in models:
        for h in (1, 2):
            pred = rng.normal(0, 3.0, len(t)).astype(np.float32)
            frame = pd.DataFrame(
                {
                    "date": dates[t],
                    "symbol": np.array(stocks)[n],
                    "model": model,
                    "horizon": h,
                    "pred": pred,
                    "label": rng.normal(0.001, 0.02, len(t)).astype(np.float32),
                    "label_z": np.float32(0.0),
                }
            )
            if model == "hybrid_tft" or (model == "stage3_own_tft" and h == 2):
                for level, offset in ((0.1, -1.0), (0.5, 0.0), (0.9, 1.0)):
                    frame[f"q{level:g}"] = pred + np.float32(offset)
            pieces.append(frame)
    write_frames(path, pieces, prediction_columns((0.1, 0.5, 0.9)))


@pytest.fixture
def tab_run(run_dir, tmp_path) -> Path:
    """``run_dir`` (attention, backtest, importance, metrics) with the predictions above."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    from relcast.runfolder import RUN_FORMAT, RUN_KIND

    # a run folder (relcast's marker): the report writes there
    (run / "run.json").write_text(json.dumps({"kind": RUN_KIND, "format": RUN_FORMAT, "steps": {}}))
    _write_predictions(run / "predictions.parquet", TAB_MODELS)
    return run


def _zscore(wide: pd.DataFrame, symbol: str) -> pd.Series:
    """``symbol``'s column of a (date x stock) table z-scored across the stocks of each date
    (population std), on the dates the stock has a row."""
    wide = wide.astype(float)
    z = (wide[symbol] - wide.mean(axis=1)) / wide.std(axis=1, ddof=0)
    return z[wide[symbol].notna()]


def test_evaluate_tab_shows_what_the_whole_file_gives(tab_run, tmp_path, monkeypatch):
    """The tab's dropdowns and prediction bands, read a model and horizon at a time, are what
    the whole predictions table gives (computed here from all of it)."""
    from relcast.app.evaluate_tab import evaluate_outputs
    from relcast.evaluation import plots

    whole = pd.read_parquet(tab_run / "predictions.parquet")
    drawn: dict[str, dict] = {}
    draw = plots.prediction_bands

    def record(dates, label, pred, lo, hi, title, path, **kw):
        drawn[Path(path).name] = {"dates": dates, "label": label, "pred": pred, "lo": lo, "hi": hi}
        return draw(dates, label, pred, lo, hi, title, path, **kw)

    monkeypatch.setattr(plots, "prediction_bands", record)
    out = evaluate_outputs(tab_run, tmp_path / "plots")
    c = out["choices"]
    assert c["stocks"] == sorted(whole["symbol"].unique()) == ["AAA", "BBB", "CCC", "DDD", "EEE"]
    assert c["targets"] == ["DDD", "AAA", "BBB", "CCC"]  # attention order, predicted only
    qcols = ["q0.1", "q0.5", "q0.9"]
    with_q = set(whole.loc[whole[qcols].notna().all(axis=1), "model"])  # at any horizon
    offered = [m for m in dict.fromkeys(whole["model"]) if m != "naive_zero"]  # file order
    want = sorted(offered, key=lambda m: (m not in with_q, not m.startswith("hybrid")))
    assert c["models"] == want == ["hybrid_tft", "stage3_own_tft", "hybrid_gru", "lightgbm"]
    assert (out["pred_model"], out["target"]) == ("hybrid_tft", "DDD")
    assert out["bands"].read_bytes()[:8] == PNG and out["curves"].read_bytes()[:8] == PNG
    assert list(out["table"]["model"]) == list(_metrics()["models"])

    for model in c["models"]:  # what choosing each model for stock CCC draws
        run_plots.prediction_plot(tab_run, model, "CCC", tmp_path)
    for model, symbol in [("hybrid_tft", "DDD"), *((m, "CCC") for m in c["models"])]:
        got = drawn[f"pred_{model}_{symbol}.png"]
        sub = whole[(whole["model"] == model) & (whole["horizon"] == 1)]
        wide = {v: sub.pivot(index="date", columns="symbol", values=v) for v in sub.columns[4:]}
        label = _zscore(wide["label"], symbol)
        np.testing.assert_array_equal(got["dates"], label.index.to_numpy())
        np.testing.assert_allclose(got["label"], label.to_numpy(), rtol=1e-5, atol=1e-6)
        if model == "hybrid_tft":  # quantile forecasts: drawn as they are, with the band
            q = {k: wide[k].loc[label.index, symbol].to_numpy(float) for k in ["pred", *qcols]}
            np.testing.assert_array_equal(got["pred"], q["pred"])
            np.testing.assert_array_equal(got["lo"], q["q0.1"])
            np.testing.assert_array_equal(got["hi"], q["q0.9"])
        else:  # no quantiles at horizon 1 (stage3_own_tft has them at 2 only): z-scored
            pred = _zscore(wide["pred"], symbol)
            np.testing.assert_allclose(got["pred"], pred.to_numpy(), rtol=1e-5, atol=1e-6)
            assert got["lo"] is None and got["hi"] is None
        before = prediction_band(whole, model, symbol)  # the band drawn from the whole table
        for key in ("dates", "label", "pred", "lo", "hi"):
            np.testing.assert_array_equal(got[key], getattr(before, key))


def test_evaluate_tab_never_reads_the_whole_predictions_file(tab_run, tmp_path, monkeypatch):
    """Evaluate's outputs (report included) and every redraw read predictions.parquet a model
    and horizon at a time: never with pandas.read_parquet, never pyarrow without a model
    filter, never more rows in one read than one model has at one horizon."""
    import warnings

    import pyarrow.parquet as pq

    from relcast.app.evaluate_tab import evaluate_choices, evaluate_outputs

    whole = pd.read_parquet(tab_run / "predictions.parquet")
    one_view = int(whole.groupby(["model", "horizon"]).size().max())
    assert one_view * 2 * len(TAB_MODELS) == len(whole)
    bad: list[str] = []
    rows_read: list[int] = []
    read_parquet, read_table = pd.read_parquet, pq.read_table

    def predictions(source) -> bool:
        return isinstance(source, str | Path) and Path(source).name == "predictions.parquet"

    def guarded_read_parquet(path, *args, **kwargs):
        if predictions(path):
            bad.append("pandas.read_parquet(predictions.parquet)")
            raise AssertionError("read the whole predictions.parquet with pandas")
        return read_parquet(path, *args, **kwargs)

    def guarded_read_table(source, *args, **kwargs):
        table = read_table(source, *args, **kwargs)
        if predictions(source):
            filters = kwargs.get("filters") or []
            if not any(f[0] == "model" for f in filters):
                bad.append(f"pyarrow read_table of predictions.parquet with filters={filters}")
            rows_read.append(table.num_rows)
        return table

    monkeypatch.setattr(pd, "read_parquet", guarded_read_parquet)
    monkeypatch.setattr(pq, "read_table", guarded_read_table)
    with warnings.catch_warnings(record=True) as caught:  # the report turns errors into notes
        warnings.simplefilter("always")
        out = evaluate_outputs(tab_run, tmp_path)
        c = evaluate_choices(tab_run)
        for model in c["models"]:
            run_plots.prediction_plot(tab_run, model, "BBB", tmp_path)
    assert bad == []
    assert [str(w.message) for w in caught if "could not" in str(w.message)] == []
    assert rows_read and max(rows_read) <= one_view
    assert out["report"].exists()


def test_a_rewritten_predictions_file_is_read_again(tab_run):
    """The app keeps one pass over predictions.parquet per file: evaluating again (a new
    file) shows the new models, not the remembered ones."""
    from relcast.app.evaluate_tab import evaluate_choices

    assert evaluate_choices(tab_run)["models"][0] == "hybrid_tft"
    _write_predictions(tab_run / "predictions.tmp", ["lightgbm", "hybrid_gru"], seed=2)
    (tab_run / "predictions.tmp").replace(tab_run / "predictions.parquet")
    assert evaluate_choices(tab_run)["models"] == ["hybrid_gru", "lightgbm"]


def test_prediction_band_zscores_across_stocks(run_dir):
    frame = pd.read_parquet(run_dir / "predictions.parquet")
    for model, with_q in (("hybrid_tft", True), ("lightgbm", False)):
        band = prediction_band(frame, model, "CCC")
        sub = frame[frame["model"] == model]
        label = sub.pivot(index="date", columns="symbol", values="label")  # (T, 4)
        pred = sub.pivot(index="date", columns="symbol", values="pred")
        z = (label["CCC"] - label.mean(axis=1)) / label.std(axis=1, ddof=0)
        np.testing.assert_allclose(band.label, z.to_numpy(), rtol=1e-10)
        assert band.has_interval is with_q
        if with_q:  # quantile forecasts are already on the z-scored scale: left as they are
            np.testing.assert_allclose(band.pred, pred["CCC"].to_numpy())
            np.testing.assert_allclose(band.hi - band.lo, 2.0)
            assert band.band_label == "q0.1-q0.9 interval"
        else:  # a point score's scale is arbitrary: z-scored like the label
            zp = (pred["CCC"] - pred.mean(axis=1)) / pred.std(axis=1, ddof=0)
            np.testing.assert_allclose(band.pred, zp.to_numpy(), rtol=1e-10)
            assert band.lo is None and band.hi is None


def test_backtest_series(run_dir):
    bt = pd.read_parquet(run_dir / "backtest.parquet")
    series, bench = backtest_series(bt, "topk", ["hybrid_tft", "missing", "lightgbm"])
    assert list(series) == ["hybrid_tft", "lightgbm"]  # the order asked, absent ones dropped
    dates, ret = series["lightgbm"]
    want = bt.query("strategy == 'topk' and model == 'lightgbm'").sort_values("date")
    np.testing.assert_array_equal(ret, want["daily_return"].to_numpy())
    assert bench is not None and len(bench[0]) == T
    _, no_bench = backtest_series(bt, "long_short")  # market-neutral: no benchmark
    assert no_bench is None
    with pytest.raises(ValueError, match="no 'other' rows"):
        backtest_series(bt, "other")


# ----------------------------------------------------------------------------- the session
def test_session_order_progress_and_cleanup(tmp_path):
    session = new_session(tmp_path)
    folder = Path(session["dir"])
    assert folder.is_dir() and folder.parent == tmp_path
    with pytest.raises(RelcastDataError, match="run step 2 Settings before 3 Stage1"):
        check_order(session, "stage1")
    session["done"] = ["data", "settings"]
    check_order(session, "stage1")
    bar = progress_md(session, running="stage1")
    assert "**✓ 2 Settings**" in bar and "*▶ 3 Stage1 (running)*" in bar and "○ 4" in bar
    end_session(session)
    assert not folder.exists()


def test_step_logs_read_like_a_terminal(tmp_path):
    log = tmp_path / "step.log"
    log.write_bytes(
        b"\x1b[32mstarting\x1b[0m\nEpoch 0:  10%\rEpoch 0:  50%\rEpoch 0: 100%\n"
        b"LitLogger: try it\nerror: stage1.num_heads must divide d_model\n  (stage1.d_model=30)\n"
    )
    shown = render_log(log, "$ relcast stage1").splitlines()
    assert shown == [
        "$ relcast stage1",
        "starting",
        "Epoch 0: 100%",
        "error: stage1.num_heads must divide d_model",
        "  (stage1.d_model=30)",
    ]
    assert failure_message(log, "stage1") == (
        "stage1.num_heads must divide d_model\n  (stage1.d_model=30)"
    )
    log.write_text("Traceback ...\nValueError: boom\n")
    assert failure_message(log, "extract").startswith("relcast extract failed: ValueError: boom")


def test_step_summary_reads_run_json(tmp_path):
    steps = {
        "stage1": {"epochs": 4, "best_val_rank_ic": 0.0312, "seconds": 12.4},
        "stage2": {"enabled": True, "helped": False},
        "stage3": {"models": {"hybrid_gru": {"best_val_rank_ic": -0.01, "num_inputs": 46,
                                             "seconds_per_epoch": 1.25}}},
    }  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps({"steps": steps}))
    s1 = step_summary(tmp_path, "stage1")
    assert "4 epochs" in s1 and "+0.0312" in s1 and "did not help" in s1
    s3 = step_summary(tmp_path, "stage3")
    assert "hybrid_gru" in s3 and "46 inputs" in s3 and "1.2 s/epoch" in s3


def test_load_a_market_and_prepare_a_run(tmp_path):
    session = new_session(tmp_path)
    overrides, text = load_data(session, SOURCES[2], None, None, 5, 260)
    assert overrides == [
        "data.source=synthetic",
        "data.synthetic_stocks=5",
        "data.synthetic_days=260",
    ]
    assert "Synthetic market: 5 stocks, 260 days" in text
    session.update(data=overrides, done=["data"])
    values = dict(zip(SETTINGS, settings_values(load_config("small")), strict=True))
    values.update(lookback=8, horizons=2)
    info = prepare(session, "small", settings_overrides(*(values[k] for k in SETTINGS)))
    run = Path(session["run"])
    assert session["done"] == ["data", "settings"] and run.parent == Path(session["dir"])
    assert (run / "split.json").exists() and f"Run folder: {run}" in info
    assert "lookback 8, horizons 1..2" in info


def test_an_upload_error_names_the_users_file(tmp_path):
    import relcast

    panel, _ = relcast.synthetic_market(num_stocks=3, num_days=60, seed=0)
    frame = panel.to_frame().drop(columns="close")  # a structural problem: stops the read
    upload = tmp_path / "my prices.csv"
    frame.to_csv(upload, index=False)
    session = new_session(tmp_path / "runs")
    with pytest.raises(RelcastDataError) as err:
        load_data(session, SOURCES[1], str(upload), None, 0, 0)
    assert "my prices.csv" in str(err.value) and session["dir"] not in str(err.value)
    assert upload.read_text().count("\n") == len(frame) + 1  # the user's file is untouched


def test_build_app_when_gradio_is_installed(tmp_path):
    pytest.importorskip("gradio")
    from relcast.app.main import build_app

    demo = build_app(tmp_path)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for key in ("load-data", "apply", "stage1-run", "stage3-cancel", "metrics-table"):
        assert key in ids


@pytest.mark.parametrize(
    "line",
    [
        "data.source={secret}",
        "data.universe={secret}",
        "data.source={session}/../{name}",
        "data.source={link}",
    ],
    ids=["absolute source", "absolute universe", "dot-dot", "symlink in the session"],
)
def test_more_settings_never_read_a_server_path(line, tmp_path):
    # issue #27: paths in the app come from uploads or the session folder only
    import relcast

    panel, _ = relcast.synthetic_market(num_stocks=3, num_days=80, seed=0)
    secret = tmp_path / "server" / "prices.csv"
    secret.parent.mkdir()
    panel.to_frame().to_csv(secret, index=False)
    session = new_session(tmp_path / "runs")
    upload = tmp_path / "mine.csv"
    panel.to_frame().to_csv(upload, index=False)
    overrides, _ = load_data(session, SOURCES[1], str(upload), None, 0, 0)
    session.update(data=overrides, done=["data"])
    link = Path(session["dir"]) / "link.csv"
    link.symlink_to(secret)
    values = dict(zip(SETTINGS, settings_values(load_config("small")), strict=True))
    extra = line.format(
        secret=secret, session=session["dir"], name="../server/prices.csv", link=link
    )
    before = sorted(p.name for p in Path(session["dir"]).rglob("*"))
    with pytest.raises(RelcastDataError, match="not a file of this session"):
        prepare(session, "small", settings_overrides(*(values[k] for k in SETTINGS), extra=extra))
    assert sorted(p.name for p in Path(session["dir"]).rglob("*")) == before  # nothing copied
