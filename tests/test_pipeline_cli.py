"""End to end through the CLI on a tiny synthetic market: run, predict, update, failures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli_sets, interrupt_update
from typer.testing import CliRunner

import relcast
from relcast.cli import app

DAYS, NEW_DAYS = 260, 6


def _sets(extra=()):
    return cli_sets(extra)


def _write_csv(panel, path: Path) -> Path:
    panel.to_frame().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("market")
    panel, _ = relcast.synthetic_market(num_stocks=6, num_days=DAYS + NEW_DAYS, seed=3)
    history = panel.select(end=panel.dates[DAYS - 1])
    new = panel.select(start=panel.dates[DAYS])
    universe = panel.meta.copy()
    universe.to_csv(root / "universe.csv", index=False)
    return {
        "full": panel,
        "history": _write_csv(history, root / "history.csv"),
        "new": _write_csv(new, root / "new.csv"),
        "all": _write_csv(panel, root / "all.csv"),
        "universe": root / "universe.csv",
    }


REGIME = [
    "relationships.regime=true",
    "relationships.regime_window=20",
    "relationships.extractor=v1",
    "stage3.feature_sets=[hybrid]",
]


def _run_tiny(market, out: Path, extra=(), seeds: int = 2, force: bool = False):
    """`relcast run` on the tiny market's history, two Stage3 seeds by default."""
    args = ["run", "--data", str(market["history"]), "--universe", str(market["universe"])]
    args += ["--out", str(out), "--seeds", str(seeds), *(["--force"] if force else [])]
    return CliRunner().invoke(app, [*args, *_sets(extra)])


@pytest.fixture(scope="module")
def run_dir(market, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    result = _run_tiny(market, out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_run_writes_every_artefact(run_dir):
    for name in (
        "config.yaml",
        "run.json",
        "panel.parquet",
        "split.json",
        "metrics.json",
        "predictions.parquet",
        "backtest.parquet",
        "relationships.npz",
        "data_with_relationships.parquet",
        "attention.npz",
        "report.html",
        "stage1/model.safetensors",
        "stage2/booster.json",
        "stage3/hybrid_gru/model.safetensors",
        "stage3/stage3_own_gru/model.safetensors",
    ):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    models = metrics["models"]
    for name in (
        "stage1",
        "stage1+stage2",
        "hybrid_gru",
        "stage3_own_gru",
        "lightgbm",
        "reversal_1d",
        "momentum_20d",
        "liquidity_20d",
        "naive_zero",
        "control_shuffled_lightgbm",
    ):
        assert name in models, name
    for key in ("ic", "rank_ic", "icir", "rank_icir", "mse", "direction_acc"):
        assert key in models["hybrid_gru"]
    # Stage1 learns the next-bar label only (stage1.horizons=1); its later horizons repeat it
    from relcast.run.runner import Pipeline

    assert Pipeline.open(run_dir).ctx.stage1_model.config.horizons == 1
    s1 = pd.read_parquet(run_dir / "predictions.parquet").query("model == 'stage1'")
    wide = s1.pivot_table(index=["date", "symbol"], columns="horizon", values="pred")
    np.testing.assert_array_equal(wide[1].to_numpy(), wide[2].to_numpy())
    # --seeds 2: two trainings per Stage3 model, reported as mean and std
    assert (run_dir / "stage3" / "hybrid_gru@seed1" / "model.safetensors").exists()
    seeds = models["hybrid_gru"]["seeds"]
    assert seeds["n"] == 2 and seeds["rank_ic_std"] > 0
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    assert {"date", "symbol", "model", "horizon", "pred", "label", "q0.1", "q0.9"} <= set(
        preds.columns
    )
    # every scored date is a test date: no train/valid date leaks into the evaluation
    test_start = pd.Timestamp(metrics["split"]["test"][0])
    assert (preds["date"] >= test_start).all()
    # quantiles ordered by construction
    q = preds.dropna(subset=["q0.1"])
    assert (q["q0.1"] <= q["q0.5"] + 1e-6).all() and (q["q0.5"] <= q["q0.9"] + 1e-6).all()


def test_metrics_carry_newey_west_statistics(run_dir):
    """Every row has its IC / Rank IC t and p; the paired tests compare the reported forecasts
    (recomputed here from predictions.parquet); seeded Stage3 rows compare their seed means."""
    from relcast.evaluation.metrics_table import daily_ic_series
    from relcast.evaluation.stats import newey_west_test, paired_test

    metrics = json.loads((run_dir / "metrics.json").read_text())
    models, lag = metrics["models"], metrics["statistics"]["newey_west_lag"]
    assert lag == 5  # horizon-1 label + 4
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    stage1, lgbm = (daily_ic_series(preds, m) for m in ("stage1", "lightgbm"))
    assert models["stage1"]["rank_ic_t"] == pytest.approx(newey_west_test(stage1.values, lag)["t"])
    paired = paired_test(stage1.values, lgbm.reindex(stage1.index).values, lag)
    got = models["stage1"]["vs_lightgbm"]
    assert got["baseline"] == "lightgbm" and got["n"] == paired["n"] > lag + 1
    assert got["t"] == pytest.approx(paired["t"]) and got["p"] == pytest.approx(paired["p"])
    assert "vs_lightgbm" not in models["lightgbm"] and "vs_own" not in models["stage1"]
    for name, row in models.items():
        if name != "naive_zero":  # a zero forecast has no IC, so no t
            assert all(np.isfinite(row[k]) for k in ("ic_t", "ic_p", "rank_ic_t", "rank_ic_p"))
    hybrid = models["hybrid_gru"]
    assert hybrid["vs_own"]["baseline"] == "stage3_own_gru"
    assert hybrid["vs_own"]["forecasts"] == "seed_average" and np.isfinite(hybrid["vs_own"]["t"])
    assert np.isfinite(hybrid["seeds"]["rank_ic_t_std"])
    assert np.isfinite(hybrid["seeds"]["rank_ic_t_mean"])
    # the row is the seeds' ensemble, and predictions.parquet holds that forecast
    hybrid_ic = daily_ic_series(preds, "hybrid_gru")
    assert hybrid["rank_ic_t"] == pytest.approx(newey_west_test(hybrid_ic.values, lag)["t"])
    cw = hybrid["vs_own"]["clark_west"]
    assert np.isfinite(cw["t"]) and 0 <= cw["p"] <= 1
    lo, hi = hybrid["vs_own"]["ci95"]
    assert lo <= hybrid["vs_own"]["mean_diff"] <= hi
    for name, row in models.items():  # every model but the constant has its neutral scores
        if name != "naive_zero":
            assert "rank_ic" in row["neutral"], name
        if name not in ("naive_zero", "reversal_1d"):
            assert row["vs_reversal"]["baseline"] == "reversal_1d", name
    # 6 stocks cannot be regressed on 5 factors and an intercept: no neutral IC, not a fake one
    assert metrics["statistics"]["neutral_factors"][0] == "reversal_1d"
    assert hybrid["neutral"]["rank_ic"] is None  # NaN, written as null


def test_shuffled_label_control_scores_near_zero(run_dir):
    """The leakage control: LightGBM trained on labels shuffled across stocks within each date
    has nothing to learn, so its test Rank IC must be noise. A daily Rank IC lies in [-1, 1],
    so the mean of n independent ones has a std of at most 1/sqrt(n): 4/sqrt(n) is a 4-sigma
    bound (a leak, e.g. labels reaching the control's features or its scoring misaligned,
    lands far outside it)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    control = metrics["models"]["control_shuffled_lightgbm"]
    n = control["n_dates"]
    assert n >= 10 and n <= metrics["test_dates_scored"]
    assert abs(control["rank_ic"]) < 4 / np.sqrt(n), (control["rank_ic"], n)
    assert abs(control["ic"]) < 4 / np.sqrt(n), (control["ic"], n)


def test_rerun_resumes_without_retraining(run_dir, market):
    before = (run_dir / "stage1" / "model.safetensors").stat().st_mtime_ns
    result = _run_tiny(market, run_dir)
    assert result.exit_code == 0, result.output
    assert "done already, skipped" in result.output
    assert (run_dir / "stage1" / "model.safetensors").stat().st_mtime_ns == before


@pytest.fixture(scope="module")
def regime_run_dir(market, tmp_path_factory):
    out = tmp_path_factory.mktemp("regime") / "run"
    result = _run_tiny(market, out, REGIME, seeds=1)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_predict_latest_and_given_date(run_dir, market):
    from relcast.run.inference import predict_date

    frame = predict_date(run_dir, str(market["history"]))
    assert set(frame["date"]) == {pd.Timestamp(market["full"].dates[DAYS - 1])}
    assert set(frame["model"]) == {"hybrid_gru", "stage3_own_gru"}
    _check_predict_matches_evaluation(run_dir, market)


def test_force_retrains_every_step(run_dir, market, tmp_path):
    import shutil

    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    weights = [work / "stage1" / "model.safetensors", work / "stage3/hybrid_gru/model.safetensors"]
    before = [p.stat().st_mtime_ns for p in weights]
    result = _run_tiny(market, work, force=True)
    assert result.exit_code == 0, result.output
    assert "done already" not in result.output
    assert all(p.stat().st_mtime_ns > t for p, t in zip(weights, before, strict=True))


def _check_predict_matches_evaluation(run_dir, market):
    """The run's own evaluation forecast its last labelled test date with the same weights."""
    from relcast.run.inference import predict_date

    stored = pd.read_parquet(run_dir / "predictions.parquet")
    stored = stored[stored["model"] == "hybrid_gru"]
    last = stored["date"].max()
    mine = predict_date(run_dir, str(market["history"]), date=str(last.date()))
    mine = mine[mine["model"] == "hybrid_gru"]
    merged = stored[stored["date"] == last].merge(
        mine, on=["symbol", "horizon"], suffixes=("_eval", "_predict")
    )
    assert len(merged) == len(mine) > 0
    np.testing.assert_allclose(merged["pred_eval"], merged["pred_predict"], atol=1e-5)


def test_update_matches_a_full_extraction(run_dir, market, tmp_path):
    from relcast.run.inference import update_run
    from relcast.run.runner import Pipeline

    work = _check_update_matches_full_extraction(run_dir, market, tmp_path)
    # the run now holds the new dates, and refuses them a second time
    assert Pipeline.open(work).ctx.panel.num_dates == DAYS + NEW_DAYS
    with pytest.raises(relcast.RelcastDataError, match="not after the run's last date"):
        update_run(work, str(market["new"]))


def _check_update_matches_full_extraction(run_dir, market, tmp_path) -> Path:
    """``update`` on the new dates equals the same weights applied to the whole market."""
    import shutil

    from relcast.evaluation.scoring import seed_ensemble
    from relcast.run.inference import update_run
    from relcast.run.runner import Pipeline
    from relcast.training.stage3 import predict_stage3

    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    forecasts = update_run(work, str(market["new"]))
    new_dates = set(pd.to_datetime(market["full"].dates[DAYS:]))
    assert set(forecasts["date"]) == new_dates

    # Reference: the same weights applied to the whole market at once (features over all
    # dates, Stage1 extraction of every post-training date in one batch).
    pipe = Pipeline.open(run_dir)
    full = market["full"].select(symbols=list(pipe.ctx.panel.symbols))
    features = pipe.ctx.features_for(full)
    stored, names = pipe.ctx.relationships
    rel = pipe.ctx.extractor.extract(pipe.ctx.stage1_model, features, np.arange(full.num_dates))
    values = rel.values.copy()
    values[: len(stored)] = stored  # training span keeps its out-of-fold values
    added = np.arange(DAYS, DAYS + NEW_DAYS)
    inputs = pipe.ctx.stage3_inputs("hybrid", features=features, relationships=(values, names))
    runs = []  # with --seeds 2 the forecast is the seeds' ensemble
    for folder in pipe.ctx.seed_folders("hybrid_gru"):
        model, spec = pipe.ctx.stage3_model(folder)  # tiled as it was trained
        runs.append(predict_stage3(model, inputs, index=added, chunk_length=spec.chunk_length))
    ref = seed_ensemble([r["point"] for r in runs])
    got = forecasts[forecasts["model"] == "hybrid_gru"]
    t = np.searchsorted(full.dates, got["date"].to_numpy(dtype="datetime64[ns]"))
    n = pd.Index(full.symbols).get_indexer(got["symbol"])
    np.testing.assert_allclose(
        got["pred"].to_numpy(), ref[t, n, got["horizon"].to_numpy() - 1], atol=1e-5
    )
    return work


def test_regime_run_trains_saves_and_reuses_the_gate(regime_run_dir, market, tmp_path):
    from relcast.features.regime_detection import REGIME_COLUMNS, REGIME_NAMES
    from relcast.models.regime_gate import RegimeGatedModel
    from relcast.run.runner import Pipeline

    pipe = Pipeline.open(regime_run_dir)
    assert pipe.ctx.features.groups["regime"] == list(REGIME_COLUMNS)
    model = pipe.ctx.stage3_model("hybrid_gru")[0]
    assert isinstance(model, RegimeGatedModel)
    names = pipe.ctx.stage3_inputs("hybrid").names
    assert [names[i] for i in model.spec()["sector_columns"]] == ["attention_to_sector"]
    assert "attention_to_index" in [names[i] for i in model.spec()["index_columns"]]
    # the gate was trained (moved off its identity start) and reloads with its weights
    logged = json.loads((regime_run_dir / "run.json").read_text())
    scales = logged["steps"]["stage3"]["models"]["hybrid_gru"]["regime_gate_scales"]
    assert set(scales) == set(REGIME_NAMES)
    for regime, s in model.scales().items():
        assert s == pytest.approx(scales[regime], abs=1e-6)
    f = pipe.ctx.features
    assert len(np.unique(f.group("regime")[f.mask].argmax(-1))) == 3  # every regime occurs
    assert (np.abs(model.gate.logit.detach().numpy()) > 1e-6).all()  # every scale trained
    # the report shows the learned scales
    report = (regime_run_dir / "report.html").read_text()
    assert 'id="regime-hybrid_gru"' in report
    assert f"x{scales['bull']['index']:.3f}" in report
    # the evaluation, predict and update paths all see the same gated model
    _check_predict_matches_evaluation(regime_run_dir, market)
    _check_update_matches_full_extraction(regime_run_dir, market, tmp_path)


def test_interrupted_update_leaves_the_run_usable(run_dir, market, tmp_path, monkeypatch):
    import shutil

    from relcast.run import inference

    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    before = _digest(work)
    from relcast.runfolder import folder as runfolder  # where RunFolder's writes happen

    calls = {"n": 0}
    real = runfolder.atomic_write

    def crash_on_second_file(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("simulated crash mid-write")
        return real(path, data)

    monkeypatch.setattr(runfolder, "atomic_write", crash_on_second_file)
    with pytest.raises(OSError, match="simulated crash"):
        inference.update_run(work, str(market["new"]))
    monkeypatch.undo()
    inference.recover_update(work)  # what opening the run does: drops the stray temp file
    assert _digest(work) == before
    frame = inference.predict_date(work, str(market["history"]))
    assert len(frame) > 0


def test_crash_during_renames_is_finished_on_next_open(run_dir, market, tmp_path, monkeypatch):
    import shutil

    from relcast.run import inference

    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    interrupt_update(work, market["new"], monkeypatch)  # dies after its journal
    frame = inference.predict_date(work, str(market["all"]))  # opening finishes the update
    assert not (work / inference.JOURNAL).exists()
    assert pd.Timestamp(market["full"].dates[-1]) in set(frame["date"])
    from relcast.run.runner import Pipeline

    pipe = Pipeline.open(work)
    assert pipe.ctx.panel.num_dates == DAYS + NEW_DAYS == len(pipe.ctx.relationships[0])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "stage1.dmodel=3"], "unknown key"),
        (["--set", "stage3.models=[xgboost]"], "stage3.models"),
        (["--preset", "huge"], "preset must be one of"),
        (["--data", "/nonexistent/market.csv"], "nonexistent"),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(args, message, tmp_path):
    out = tmp_path / "out"
    base = ["run", "--out", str(out)]
    if "--data" not in args:
        base += ["--data", "synthetic"]
    result = CliRunner().invoke(app, [*base, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_bad_data_file_fails_cleanly(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("date,symbol,open,high,low,close\n2020-01-01,A,1,2,0.5,1\n")
    before = bad.read_bytes()
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--data", str(bad), "--out", str(out)])
    assert result.exit_code == 2
    assert "volume" in result.output and "bad.csv" in result.output
    assert not out.exists() and bad.read_bytes() == before


def test_step_commands_need_a_run_folder(tmp_path):
    result = CliRunner().invoke(app, ["stage3", "--run", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "run.json" in result.output


def test_help_reads_well():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("run", "stage1", "extract", "stage3", "predict", "update", "report", "app"):
        assert cmd in result.output


@pytest.fixture(scope="module")
def chunk_run_dir(market, tmp_path_factory):
    out = tmp_path_factory.mktemp("chunk") / "run"
    extra = ["stage3.chunk_length=20", "relationships.extractor=v3", "relationships.v3.steps=5"]
    result = _run_tiny(market, out, extra, seeds=1)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_chunk_length_reaches_training_evaluation_predict_and_update(
    chunk_run_dir, market, tmp_path, monkeypatch
):
    """stage3.chunk_length is saved with each Stage3 model (its spec) and every later use
    tiles as training did: evaluation, `predict` and `update` give one forecast per date.
    The fitted extractor (V3's trained encoder) is saved too: they never fit it again."""
    from relcast.training.contrastive import ContrastiveExtractor

    def refit(*args, **kwargs):
        raise AssertionError("the saved V3 extractor was trained again")

    assert (chunk_run_dir / "extractor.safetensors").exists()
    monkeypatch.setattr(ContrastiveExtractor, "fit", refit)
    from relcast.run.context import RunContext
    from relcast.training.stage3 import predict_stage3

    run = chunk_run_dir
    saved = json.loads((run / "stage3" / "hybrid_gru" / "model.json").read_text())["spec"]
    assert (saved["chunk_length"], saved["lookback"]) == (20, 8)
    ctx = RunContext.open(run)
    model, spec = ctx.stage3_model("hybrid_gru")
    assert spec.chunk_length == 20 and spec.chunk_steps == 20
    # evaluation scored the chunks of training: its forecasts equal a prediction tiled by 20
    # and differ from one tiled by the default 128 (a GRU's state depends on where its chunk
    # starts, so the tiling is visible in the forecast)
    inputs = ctx.stage3_inputs("hybrid")
    test = ctx.split.test
    tiled = {
        c: predict_stage3(model, inputs, index=test, chunk_length=c)["point"] for c in (20, 128)
    }
    stored = pd.read_parquet(run / "predictions.parquet")
    stored = stored[(stored["model"] == "hybrid_gru") & (stored["horizon"] == 1)]
    t = np.searchsorted(ctx.panel.dates, stored["date"].to_numpy(dtype="datetime64[ns]"))
    n = pd.Index(ctx.panel.symbols).get_indexer(stored["symbol"])
    np.testing.assert_allclose(stored["pred"], tiled[20][t, n, 0], atol=1e-6)
    assert np.max(np.abs(stored["pred"].to_numpy() - tiled[128][t, n, 0])) > 1e-4
    # predict and update read the saved spec, not the config, and agree with evaluation
    config = (run / "config.yaml").read_text()
    assert "chunk_length: 20" in config
    _check_predict_matches_evaluation(run, market)
    _check_update_matches_full_extraction(run, market, tmp_path)


def test_tft_updates_resume_from_the_saved_state(market, tmp_path, monkeypatch):
    """A TFT run updated three times: the first update runs each tile from its start and
    saves the state after its last date; the second resumes there and runs one step per new
    date; the third finds the state damaged, says so and runs the tiles again. All give the
    chunk pass's forecasts on the whole market (the run's evaluation path)."""
    from relcast.models.temporal.tft import TemporalFusionTransformer
    from relcast.run.inference import update_run
    from relcast.run.runner import Pipeline
    from relcast.training.stage3 import predict_stage3
    from relcast.training.stream import StreamState

    out = tmp_path / "run"
    tft = ["stage3.models=[tft]", "stage3.feature_sets=[own]", "stage3.chunk_length=12"]
    result = _run_tiny(market, out, tft, seeds=1)
    assert result.exit_code == 0, result.output + repr(result.exception)
    full = market["full"]
    first = _write_csv(full.select(end=full.dates[DAYS + 2]).select(start=full.dates[DAYS]),
                       tmp_path / "first.csv")  # fmt: skip
    second = _write_csv(full.select(end=full.dates[DAYS + 4]).select(start=full.dates[DAYS + 3]),
                        tmp_path / "second.csv")  # fmt: skip
    third = _write_csv(full.select(start=full.dates[DAYS + 5]), tmp_path / "third.csv")
    steps = {"n": 0}
    real_step = TemporalFusionTransformer.stream_step

    def counted(self, x, state):
        steps["n"] += 1
        return real_step(self, x, state)

    monkeypatch.setattr(TemporalFusionTransformer, "stream_step", counted)
    got = [update_run(out, str(first))]
    assert steps["n"] > 8  # each tile from its first step (lookback 8)
    saved = out / "stage3" / "stage3_own_tft" / "stream_state.npz"
    assert StreamState.from_bytes(saved.read_bytes()).t == DAYS + 2
    steps["n"] = 0
    got.append(update_run(out, str(second)))
    assert steps["n"] == 2  # one step per new date: resumed
    assert StreamState.from_bytes(saved.read_bytes()).t == DAYS + 4
    # a damaged (truncated) state: said, then forecast without it
    saved.write_bytes(saved.read_bytes()[:100])
    steps["n"] = 0
    with pytest.warns(UserWarning, match="unreadable"):
        got.append(update_run(out, str(third)))
    assert steps["n"] >= 8  # not resumed: a tile runs at least its lookback of 8 steps
    assert StreamState.from_bytes(saved.read_bytes()).t == DAYS + NEW_DAYS - 1

    pipe = Pipeline.open(out)
    panel = full.select(symbols=list(pipe.ctx.panel.symbols))
    inputs = pipe.ctx.stage3_inputs("own", features=pipe.ctx.features_for(panel))
    model, spec = pipe.ctx.stage3_model("stage3_own_tft")
    added = np.arange(DAYS, DAYS + NEW_DAYS)
    ref = predict_stage3(model, inputs, index=added, chunk_length=spec.chunk_length)["point"]
    table = pd.concat(got, ignore_index=True)
    assert set(table["date"]) == set(pd.to_datetime(full.dates[DAYS:]))
    t = np.searchsorted(panel.dates, table["date"].to_numpy(dtype="datetime64[ns]"))
    n = pd.Index(panel.symbols).get_indexer(table["symbol"])
    np.testing.assert_allclose(
        table["pred"].to_numpy(), ref[t, n, table["horizon"].to_numpy() - 1], atol=1e-5
    )
