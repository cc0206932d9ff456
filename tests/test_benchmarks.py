"""Quick mode of every benchmark: runs, writes JSON with machine info, rows and ratios."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("psutil")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is not installed

from benchmarks import run_all  # noqa: E402
from benchmarks.common import saved_activation_bytes  # noqa: E402

MACHINE_KEYS = {"cpu_count", "torch_threads", "python", "torch", "date"}


def _positive(row: dict, keys: list[str]) -> None:
    for key in keys:
        assert np.isfinite(row[key]) and row[key] > 0, (key, row)


def test_saved_activation_bytes_counts_what_backward_keeps():
    x = torch.randn(64, 32, requires_grad=True)
    with saved_activation_bytes() as small:
        torch.tanh(x).sum()
    with saved_activation_bytes() as big:
        torch.tanh(torch.tanh(x @ torch.randn(32, 256))).sum()
    assert small["bytes"] == 64 * 32 * 4  # tanh keeps its output
    assert big["bytes"] > 2 * 64 * 256 * 4  # two tanh outputs of [64, 256] at least


@pytest.mark.skipif(
    importlib.util.find_spec("pytorch_forecasting") is None,
    reason="needs the bench extra: pip install -e '.[bench]' torch==2.13.0",
)
def test_quick_mode_writes_every_result(tmp_path):
    results = run_all.main(["--quick", "--results-dir", str(tmp_path)])
    assert set(results) == set(run_all.BENCHMARKS)
    for name in run_all.BENCHMARKS:
        saved = json.loads((tmp_path / f"{name}.json").read_text())
        assert saved["benchmark"] == name
        assert MACHINE_KEYS <= set(saved["machine"])
        assert saved["rows"] and saved["ratios"]

    seed = json.loads((tmp_path / "seed_claim.json").read_text())
    dims = {(r["model"], r["feature_set"]): r["input_dims"] for r in seed["rows"]}
    assert dims[("tft", "rawconcat")] == 600 and dims[("tft", "hybrid")] == 46
    for row in seed["rows"]:
        _positive(row, ["params", "ms_per_window", "epoch_seconds", "activation_mb"])
    # 600 input dims keep more activations alive than 46, whatever the model
    for model in ("tft", "lstm", "tcn"):
        assert seed["ratios"][model]["hybrid_over_rawconcat_activation_mb"] < 1

    race = json.loads((tmp_path / "race_tft.json").read_text())
    assert race["same_test_windows"], "both sides must be scored on the same windows"
    for row in race["rows"]:
        _positive(row, ["build_s", "train_windows_per_s", "infer_windows_per_s",
                        "test_pinball", "activation_mb"])  # fmt: skip

    feats = json.loads((tmp_path / "features_throughput.json").read_text())
    assert {r["side"] for r in feats["rows"]} == {"relcast", "pandas"}
    for row in feats["rows"]:
        _positive(row, ["seconds", "bars_per_s", "features"])

    latency = json.loads((tmp_path / "update_latency.json").read_text())
    steps = {r["step"]: r for r in latency["rows"]}
    assert steps["stage3 tft one date"]["windows"] > 0
    for row in latency["rows"]:
        _positive(row, ["ms"])

    quality = json.loads((tmp_path / "stage1_quality.json").read_text())
    assert {r["model"] for r in quality["rows"]} == {"stage1", "stage1+stage2", "lightgbm"}
    assert {r["span"] for r in quality["rows"]} == {"valid", "test"}
    # every model is scored on the same dates of a span, and each gives its own forecast
    for span in ("valid", "test"):
        rows = [r for r in quality["per_seed"] if r["span"] == span]
        assert len({r["n_dates"] for r in rows}) == 1 and rows[0]["n_dates"] >= 10, rows
        assert all(np.isfinite(r["rank_ic"]) and np.isfinite(r["ic"]) for r in rows), rows
        assert len({round(r["rank_ic"], 10) for r in rows}) == len(rows), rows
    test_ic = {r["model"]: r["rank_ic"] for r in quality["rows"] if r["span"] == "test"}
    for model in ("stage1", "stage1+stage2"):  # the summary's differences are of these rows
        diff = quality["ratios"][f"synthetic: test rank IC {model} minus lightgbm"]
        assert diff == pytest.approx(test_ic[model] - test_ic["lightgbm"], abs=1e-4)
    for row in quality["cost"]:
        _positive(row, ["stage1_seconds", "stage1_epochs", "stage1_peak_rss_mb"])

    regime = json.loads((tmp_path / "regime_gate.json").read_text())
    assert {r["variant"] for r in regime["rows"]} == {"hybrid+gate", "hybrid", "own"}
    inputs = {r["variant"]: r["inputs"] for r in regime["rows"]}
    assert inputs["hybrid+gate"] == inputs["hybrid"] > inputs["own"]  # same inputs, gate or not
    for scales in regime["gates"].values():
        assert set(scales) == {"bull", "bear", "sideways"}
    assert sum(regime["regime_share"].values()) == pytest.approx(1.0)


def test_stage1_max_stocks_quick_mode(tmp_path):
    """The max_stocks benchmark (not part of run_all): both variants on both markets,
    per-epoch Rank ICs, the machine-load caveat, ratios from the rows; a run of one market
    keeps the other market's rows."""
    from benchmarks import stage1_max_stocks as bench

    bench.run(quick=True, results_dir=tmp_path)
    saved = json.loads((tmp_path / "stage1_max_stocks.json").read_text())
    assert MACHINE_KEYS <= set(saved["machine"]) and "shared" in saved["caveat"]
    assert [(r["market"], r["variant"]) for r in saved["rows"]] == [
        (m, v) for m in bench.MARKETS for v in ("full", "max_stocks")
    ]
    for row in saved["rows"]:
        assert len(row["val_rank_ic_per_epoch"]) == row["epochs"]
        assert row["epochs"] == saved["config"]["epochs"][row["market"]][row["variant"]]
        assert (row["max_stocks"] is None) == (row["variant"] == "full")
        assert row["max_stocks"] is None or row["max_stocks"] < row["stocks"]
        _positive(
            row, ["train_cpu_s_per_epoch", "train_wall_s_per_epoch", "valid_wall_s_per_epoch"]
        )
    full, sub = saved["rows"][:2]
    speedup = full["train_cpu_s_per_epoch"] / sub["train_cpu_s_per_epoch"]
    assert saved["ratios"]["lead_lag"]["train_cpu_speedup"] == pytest.approx(speedup, abs=1e-3)
    bench.run(quick=True, results_dir=tmp_path, markets=("sector_signal",))
    again = json.loads((tmp_path / "stage1_max_stocks.json").read_text())
    assert again["rows"][:2] == saved["rows"][:2]  # lead_lag kept as measured
    assert again["rows"][2]["measured_at"] >= saved["rows"][2]["measured_at"]
