"""The visual report: PNGs, a self-contained report.html, the metrics tables, the helpers."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from relcast.evaluation import plots
from relcast.evaluation.metrics_table import COLUMNS, daily_ic_series, metrics_table_text
from relcast.evaluation.report import _read_logs, build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]
MODELS = ["naive_zero", "lightgbm", "stage1", "hybrid_gru", "control_shuffled_lightgbm"]
T, N = 60, len(SYMBOLS)
LEADER = 4  # "EEE": the stock the target (AAA, index 0) attends to


def _model_metrics(rng: np.random.Generator) -> dict:
    models = {}
    for i, m in enumerate(MODELS):
        row = {
            "ic": float(rng.normal(0.02, 0.01)),
            "rank_ic": 0.01 * i if m != "control_shuffled_lightgbm" else 0.5,  # control: fake best
            "icir": float(rng.normal(0.2, 0.1)),
            "rank_icir": float(rng.normal(0.2, 0.1)),
            "mse": 1.0 - 0.01 * i,
            "direction_acc": float(rng.uniform(0.45, 0.55)),
            "n_dates": T,
            "rank_ic_by_horizon": {"h1": 0.01 * i, "h2": 0.005 * i},
        }
        if m == "naive_zero":
            row.update(ic=None, rank_ic=None, icir=None, rank_icir=None, rank_ic_by_horizon={})
        else:
            # Newey-West statistics (evaluation.stats); p = 0.0004 shows as "<0.001"
            row.update(rank_ic_t=0.5 * i, rank_ic_p=0.0004 if i == 3 else 0.2, ic_t=1.0, ic_p=0.3)
            if m != "lightgbm":
                row["vs_lightgbm"] = {"baseline": "lightgbm", "t": 0.4 * i, "p": 0.5}
            row["vs_reversal"] = {
                "baseline": "reversal_1d",
                "t": 0.3 * i,
                "p": 0.6,
                "mean_diff": 0.002 * i,
                "ci95": [-0.01, 0.002 * i + 0.01],
            }
            row["neutral"] = {"rank_ic": 0.004 * i, "rank_ic_t": 0.2 * i, "ic": 0.003 * i}
            row["backtest"] = {
                "topk": {
                    "k": 2,
                    "excess_annualized_return_arithmetic": float(rng.normal(0, 0.1)),
                    "information_ratio": float(rng.normal(0, 1)),
                    "max_drawdown": -float(rng.uniform(0.01, 0.2)),
                    "mean_turnover": float(rng.uniform(0.1, 0.5)),
                    "cumulative_return": rng.normal(0, 0.01, T).tolist(),
                },
                "long_short": {"sharpe": 0.5},
            }
        if m == "hybrid_gru":
            row.update(
                pinball=0.3, coverage=0.78, coverage_nominal=0.8, seeds={"rank_ic_std": 0.0123}
            )
            row["vs_own"] = {
                "baseline": "stage3_own_gru",
                "t": 2.345,
                "p": 0.019,
                "clark_west": {"t": 1.804, "p": 0.0356},
            }
            row["neutral"]["vs_own"] = {"baseline": "stage3_own_gru", "t": 1.25, "p": 0.2}
        models[m] = row
    return models


def _lightning_csv(path: Path, epochs: int, rng: np.random.Generator) -> None:
    """A metrics.csv laid out as Lightning's CSVLogger writes it (NaN-padded rows)."""
    rows = []
    for e in range(epochs):
        rows.append({"epoch": e, "step": 10 * e + 9, "train_loss": 1.0 / (e + 1)})
        rows.append(
            {
                "epoch": e,
                "step": 10 * e + 9,
                "val_loss": 1.1 / (e + 1),
                "val_rank_ic": 0.01 * e + rng.normal(0, 0.005),
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["epoch", "step", "train_loss", "val_loss", "val_rank_ic"]).to_csv(
        path, index=False
    )


def make_run(root: Path, seed: int = 0) -> tuple[Path, dict]:
    """A small, consistent fake run folder: 5 models, 60 dates, 6 symbols, 2 horizons."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    dates = pd.bdate_range("2021-01-04", periods=T)
    metrics = {
        "split": {
            "train": ["2019-01-02", "2020-06-30"],
            "valid": ["2020-07-10", "2020-12-15"],
            "test": [str(dates[0].date()), str(dates[-1].date())],
            "embargo": 5,
        },
        "labels": {
            "horizons": 2,
            "delay": 0,
            "definition": "close[t+delay+h] / close[t+delay] - 1",
        },
        "test_dates_scored": T,
        "models": _model_metrics(rng),
    }
    (root / "metrics.json").write_text(json.dumps(metrics))
    (root / "config.yaml").write_text(
        "preset: small\ndata:\n  source: synthetic\n  horizons: 2\nstage3:\n  models: [gru]\n"
        "  quantiles: [0.1, 0.5, 0.9]\n"
    )

    label = rng.normal(0, 0.02, (T, N, 2))
    frames = []
    for m in MODELS:
        for h in (1, 2):
            pred = 0.5 * label[..., h - 1] / 0.02 + rng.normal(0, 1, (T, N))
            if m == "naive_zero":
                pred = np.zeros((T, N))
            f = pd.DataFrame(
                {
                    "date": np.repeat(dates, N),
                    "symbol": np.tile(SYMBOLS, T),
                    "model": m,
                    "horizon": h,
                    "pred": pred.ravel().astype(np.float32),
                    "label": label[..., h - 1].ravel().astype(np.float32),
                }
            )
            for q, shift in (("q0.1", -1.3), ("q0.5", 0.0), ("q0.9", 1.3)):
                f[q] = (f["pred"] + shift) if m == "hybrid_gru" else np.nan
            frames.append(f)
    pd.concat(frames, ignore_index=True).to_parquet(root / "predictions.parquet")

    bench = rng.normal(0, 0.01, T)
    bt = []
    for m in MODELS[1:]:
        for strategy in ("topk", "long_short"):
            r = rng.normal(0.0005, 0.01, T)
            bt.append(
                pd.DataFrame(
                    {
                        "date": dates,
                        "model": m,
                        "strategy": strategy,
                        "daily_return": r,
                        "benchmark_return": bench,
                        "excess_return": r - bench,
                        "turnover": 0.2,
                    }
                )
            )
    pd.concat(bt, ignore_index=True).to_parquet(root / "backtest.parquet")

    att = rng.uniform(0, 1, (T, N, N))
    att[:, 0, LEADER] += 6.0  # the target AAA attends mostly to EEE
    att /= att.sum(axis=2, keepdims=True)
    np.savez_compressed(
        root / "attention.npz",
        dates=dates.values.astype("M8[ns]").astype("i8"),
        symbols=np.array(SYMBOLS),
        attention=att.astype(np.float32),
    )
    (root / "importance.json").write_text(
        json.dumps(
            {
                "hybrid_tft": {
                    f"feature_{i}": float(w) for i, w in enumerate(rng.dirichlet(np.ones(25)))
                }
            }
        )
    )
    _lightning_csv(root / "logs" / "stage1" / "logs" / "version_0" / "metrics.csv", 6, rng)
    for k in range(2):  # two fits of one stage (folds, as the pipeline lays them out)
        fold = root / "logs" / "stage1_folds" / f"fold_{k}" / "logs" / "version_0"
        _lightning_csv(fold / "metrics.csv", 4, rng)
    _lightning_csv(
        root / "logs" / "stage3_hybrid_gru" / "logs" / "version_0" / "metrics.csv", 5, rng
    )
    return root, metrics


class _TableParser(HTMLParser):
    """Cells of the metrics table: {model: {column: (data-value, text, is_best)}}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict] = {}
        self._in_table = False
        self._model = None
        self._cell = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "metrics-table":
            self._in_table = True
        elif self._in_table and tag == "th" and "model" in (a.get("class") or ""):
            self._cell, self._text = ("model", None), ""
        elif self._in_table and tag == "td":
            self._cell = (a["data-col"], (float(a["data-value"]), "best" in a["class"]))
            self._text = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        if tag in ("th", "td") and self._cell is not None:
            col, info = self._cell
            if col == "model":
                self._model = self._text
                self.rows[self._model] = {}
            else:
                self.rows[self._model][col] = (info[0], self._text, info[1])
            self._cell = None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run, metrics = make_run(tmp_path_factory.mktemp("run"))
    out = build_report(run)
    return run, metrics, out, out.read_text()


def test_every_plot_is_a_valid_png_embedded_in_the_html(report):
    run, _, out, text = report
    assert out == run / "report.html"
    pngs = sorted((run / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert names == {
        "attention_AAA.png",
        "importance_hybrid_tft.png",
        "prediction_bands.png",
        "cumulative_topk.png",
        "cumulative_long_short.png",
        "ic_over_time.png",
        "training_curves.png",
    }
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, p.name
        assert base64.b64encode(data).decode() in text, f"{p.name} not embedded"
    assert text.count('src="data:image/png;base64,') == len(pngs)
    assert "Could not draw" not in text and "Skipped" not in text


def test_html_is_self_contained(report):
    _, _, _, text = report
    assert "http://" not in text and "https://" not in text
    assert 'src="/' not in text and "<script" not in text.lower()
    assert "<link" not in text.lower() and "@import" not in text and "url(" not in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_metrics_table_lists_every_model_with_its_numbers(report):
    _, metrics, _, text = report
    parser = _TableParser()
    parser.feed(text)
    assert list(parser.rows) == MODELS
    for m, row in metrics["models"].items():
        for c in COLUMNS:
            value = row
            for key in c.path:
                value = value.get(key) if isinstance(value, dict) else None
            got, shown, _ = parser.rows[m][c.key]
            if value is None:
                assert math.isnan(got) and shown == "-"
            else:
                assert got == pytest.approx(value, rel=1e-12)
    # formatted numbers: signed 4 dp, percentages, seeds as mean ± std
    assert parser.rows["stage1"]["rank_ic"][1] == "+0.0200"
    assert parser.rows["hybrid_gru"]["rank_ic"][1] == "+0.0300 ± 0.0123"
    turnover = metrics["models"]["lightgbm"]["backtest"]["topk"]["mean_turnover"]
    assert parser.rows["lightgbm"]["topk_turnover"][1] == f"{100 * turnover:.1f}%"
    # best per column: the control never wins; MSE is lower-is-better
    best_rank = [m for m in MODELS if parser.rows[m]["rank_ic"][2]]
    assert best_rank == ["hybrid_gru"]
    best_mse = [m for m in MODELS if parser.rows[m]["mse"][2]]
    assert best_mse == ["hybrid_gru"]  # control has lower MSE but is excluded
    for c in COLUMNS:
        marked = sum(parser.rows[m][c.key][2] for m in MODELS)
        assert marked >= 1 if c.higher_is_better is not None else marked == 0, c.key
    # significance columns: t with 2 dp, p with 3 dp or "<0.001", "-" where not tested
    assert parser.rows["hybrid_gru"]["rank_ic_p"][1] == "<0.001"
    assert parser.rows["stage1"]["rank_ic_p"][1] == "0.200"
    assert parser.rows["hybrid_gru"]["vs_own_t"][1] == "+2.35"
    assert parser.rows["stage1"]["vs_own_t"][1] == "-"
    assert parser.rows["lightgbm"]["vs_lightgbm_t"][1] == "-"
    assert "Newey-West" in text  # the legend says what the t columns are
    assert parser.rows["hybrid_gru"]["neutral_vs_own_t"][1] == "+1.25"
    # the paired tests' table: interval and Clark-West beside the Newey-West t
    paired = text[text.index('id="paired-table"') :]
    paired = paired[: paired.index("</table>")]
    assert "[-0.0100, +0.0160]" in paired  # hybrid_gru (i = 3) vs reversal_1d
    assert re.search(r"stage3_own_gru</td><td>raw</td>.*?\+2\.35.*?\+1\.80.*?0\.036", paired)
    assert re.search(r"stage3_own_gru</td><td>neutral</td>.*?\+1\.25", paired)


def test_training_logs_keep_each_fit_apart(report):
    run, _, _, _ = report
    curves, notes = _read_logs(run / "logs")
    assert not notes and set(curves) == {"stage1", "stage1_folds", "stage3_hybrid_gru"}
    folds = curves["stage1_folds"]
    assert folds["version"].nunique() == 2 and "version" not in curves["stage1"]
    assert len(folds) == 2 * 8  # 4 epochs x 2 rows (train, val) per fold


def test_header_has_split_dates_and_config(report):
    _, metrics, _, text = report
    for span in ("train", "valid", "test"):
        start, end = metrics["split"][span]
        assert f"{start} to {end}" in text
    assert "synthetic" in text and "full config.yaml" in text


def test_missing_optional_inputs_are_skipped_with_a_note(tmp_path):
    run, _ = make_run(tmp_path / "run")
    for name in ("attention.npz", "importance.json", "backtest.parquet", "config.yaml"):
        (run / name).unlink()
    import shutil

    shutil.rmtree(run / "logs")
    text = build_report(run).read_text()
    for missing in (
        "attention.npz",
        "importance.json",
        "backtest.parquet",
        "config.yaml",
        "metrics.csv",
    ):
        assert re.search(rf'class="note">Skipped: [^<]*{re.escape(missing)}', text), missing
    assert {p.name for p in (run / "plots").glob("*.png")} == {
        "prediction_bands.png",
        "ic_over_time.png",
    }
    assert text.count("data:image/png;base64,") == 2
    # only metrics.json: still a report with the table
    (run / "predictions.parquet").unlink()
    text = build_report(run).read_text()
    assert 'id="metrics-table"' in text and "data:image/png" not in text
    assert "predictions.parquet not found" in text


def test_missing_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluate"):
        build_report(tmp_path)


def test_metrics_table_text_has_one_row_per_model(report):
    _, metrics, _, _ = report
    text = metrics_table_text(metrics)
    lines = text.splitlines()
    assert all(c.label in lines[0] for c in COLUMNS)
    body = lines[2 : 2 + len(MODELS)]
    assert [line.split()[0] for line in body] == MODELS
    assert len({len(line) for line in lines[:2] + body}) == 1  # fixed width
    hybrid = next(line for line in body if line.startswith("hybrid_gru"))
    assert "+0.0300 ± 0.0123*" in hybrid
    assert "+2.35*" in hybrid and "<0.001" in hybrid  # vs own t (the only one), Rank IC p
    assert any(line.startswith("t: Newey-West") for line in lines[2 + len(MODELS) :])
    assert metrics_table_text(metrics["models"]) == text  # the models part alone works too


def test_attention_influence_ranks_the_planted_symbol_first(tmp_path):
    rng = np.random.default_rng(1)
    att = rng.uniform(0, 1, (30, 8, 8))
    att[:, 5, 2] += 4.0  # stock 5 attends mostly to stock 2
    att[:3, 5] = np.nan  # masked dates are ignored
    att /= att.sum(axis=2, keepdims=True)
    symbols = [f"S{i}" for i in range(8)]
    influence = plots.attention_influence(att, symbols, "S5")
    assert influence.index[0] == "S2"
    assert influence.iloc[0] == pytest.approx(np.nanmean(att[:, 5, 2]))
    assert plots.attention_influence(att, symbols, 5).index[0] == "S2"
    dates = pd.bdate_range("2022-01-03", periods=30).values
    path = plots.attention_heatmap(att, dates, symbols, "S5", tmp_path / "a.png", max_symbols=4)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="not among"):
        plots.attention_influence(att, symbols, "NOPE")


def test_target_choice_reads_dates_in_blocks_as_the_plain_mean(monkeypatch):
    """The report's target is chosen block by block over dates (no float64 copy of all
    [T, N, N]); the choice equals the one from the plain time mean, NaN dates ignored."""
    import relcast.evaluation.report as report_module

    rng = np.random.default_rng(4)
    att = rng.uniform(0, 1, (23, 6, 6)).astype(np.float32)
    att[:, 3, 1] += 2.0  # stock 3 attends mostly to stock 1
    att[:, 4, 0] += 1.5
    att[:5, 3] = np.nan  # masked dates
    symbols = np.array([f"S{i}" for i in range(6)])
    monkeypatch.setattr(report_module, "BLOCK_VALUES", 4 * 36)  # blocks of 4 dates
    with np.errstate(all="ignore"):
        mean = np.nanmean(att.astype(np.float64), axis=0)
    np.fill_diagonal(mean, -np.inf)
    expected = symbols[int(np.argmax(mean.max(axis=1)))]
    assert expected == "S3"
    assert report_module._choose_target(att, symbols, set()) == "S3"
    assert report_module._choose_target(att, symbols, {"S4", "S0"}) == "S4"
    att[:, 3] = np.nan  # a stock never seen cannot be chosen
    assert report_module._choose_target(att, symbols, set()) == "S4"


def test_report_picks_the_stock_with_concentrated_attention(report):
    run, _, _, text = report
    assert (run / "plots" / "attention_AAA.png").exists()  # AAA -> EEE planted
    assert "How AAA attends" in text


def test_daily_ic_series_matches_scipy_spearman():
    rng = np.random.default_rng(2)
    dates = pd.bdate_range("2022-01-03", periods=8)
    label = rng.normal(size=(8, 5))
    pred = label + rng.normal(size=(8, 5))
    pred[3, :] = np.round(pred[3, :])  # ties -> average ranks
    pred[3, :2] = 1.0
    frame = pd.DataFrame(
        {
            "date": np.repeat(dates, 5),
            "symbol": np.tile(list("abcde"), 8),
            "model": "m",
            "horizon": 1,
            "pred": pred.ravel(),
            "label": label.ravel(),
        }
    )
    frame = frame.drop(index=[7, 8])  # two missing cells on date 1
    ic = daily_ic_series(frame, "m", horizon=1)
    assert list(ic.index) == list(dates)
    for t in range(8):
        keep = [n for n in range(5) if t * 5 + n not in (7, 8)]
        expected = spearmanr(pred[t, keep], label[t, keep]).statistic
        assert ic.iloc[t] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="no predictions"):
        daily_ic_series(frame, "other")
