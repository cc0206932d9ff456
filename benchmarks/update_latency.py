"""Latency of the incremental daily update for one new date on a 500-stock universe.

The steps of :func:`relcast.run.inference.update_run` for one new date, each timed (median of
a few repetitions after a warm-up), on **untrained** models, since latency does not depend on
the weights:

1. features: ``build_features`` on a trailing window of ``lookback + 120`` bars (enough for
   the longest indicator warm-up plus the Stage3 lookback);
2. Stage1: ``predict_stage1`` for the one date with a small-preset
   ``CrossSectionalTransformer`` (d_model 64, 4 heads, 2 layers) over 500 stocks + the index,
   with and without the attention weights (the V1 extractor needs them);
3. Stage3: ``predict_stage3`` of the 500 windows ending at that date, for the TFT (medium
   preset: hidden 64, 4 heads, lookback 90) and the GRU (small preset: hidden 64, 2 layers,
   lookback 60), on hybrid inputs (own + index + calendar + 16 relationship dims). The
   chunk pass runs the TFT from the start of the tile that scores the date (90 to 179 steps
   per stock), as the first update after a run does; a daily update resumes from the state
   the update of the day before saved (:mod:`relcast.training.stream`) and runs one step.

Then, end to end, :func:`relcast.run.inference.update_run` on a small trained run folder
(full mode only: ``relcast run`` with a tiny GRU + TFT config on 30 stocks, then two
updates of one new date each: the first runs the chunks, the second resumes).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MB, PeakRSS, format_table, run_isolated, write_result

NAME = "update_latency"
FULL = dict(num_stocks=500, history=210, repeats=5, tft_lookback=90, gru_lookback=60,
            horizons=10, hidden_size=64, update_run=True)  # fmt: skip
QUICK = dict(num_stocks=40, history=150, repeats=2, tft_lookback=20, gru_lookback=20,
             horizons=2, hidden_size=16, update_run=False)  # fmt: skip
NUM_REL = 16


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_steps(cfg: dict[str, Any]) -> dict[str, Any]:
    """Per-step latency of one new date (untrained models)."""
    import torch

    import relcast
    from relcast.config import load_config
    from relcast.features.build import build_features
    from relcast.models.cross_sectional import (
        CrossSectionalTransformer,
        Stage1Config,
        predict_stage1,
    )
    from relcast.models.temporal.registry import create_model
    from relcast.training.specs import CHUNK_LENGTH
    from relcast.training.stage1 import encode_sectors
    from relcast.training.stage3 import predict_stage3
    from relcast.training.stage3_inputs import assemble_inputs
    from relcast.training.stream import stream_forecast

    torch.manual_seed(0)
    panel, _ = relcast.synthetic_market(cfg["num_stocks"], cfg["history"], seed=0)
    last = panel.num_dates - 1
    rows = []

    def step(name: str, fn, **extra) -> Any:
        with PeakRSS() as peak:
            seconds = _median_seconds(fn, cfg["repeats"])
        rows.append({"step": name, "ms": 1e3 * seconds, "peak_rss_mb": peak.delta / MB, **extra})

    step("features (trailing window)", lambda: build_features(panel, train_end=last // 2),
         bars=panel.num_dates)  # fmt: skip
    features = build_features(panel, train_end=last // 2)

    sector_ids, num_sectors = encode_sectors(panel.sectors, len(panel.symbols))
    config = Stage1Config.from_settings(
        load_config("small").stage1, num_features=len(features.names),
        num_stocks=len(panel.symbols), num_sectors=num_sectors, horizons=cfg["horizons"],
    )  # fmt: skip
    stage1 = CrossSectionalTransformer(config, sector_ids=torch.as_tensor(sector_ids)).eval()
    one = np.array([last])
    step("stage1 one date", lambda: predict_stage1(stage1, features, one),
         stocks=len(panel.symbols))  # fmt: skip
    step("stage1 one date + attention",
         lambda: predict_stage1(stage1, features, one, need_weights=True, average_heads=True),
         stocks=len(panel.symbols))  # fmt: skip

    T, N = features.mask.shape
    rel = np.random.default_rng(0).standard_normal((T, N, NUM_REL)).astype(np.float32)
    inputs = assemble_inputs(features, (rel, [f"rel_{k}" for k in range(NUM_REL)]), "hybrid",
                             sectors=panel.sectors)  # fmt: skip
    for name, lookback, hparams in (
        ("tft", cfg["tft_lookback"], dict(num_heads=4)),
        ("gru", cfg["gru_lookback"], dict(num_layers=2)),
    ):
        model = create_model(
            name, num_features=inputs.num_features, horizons=cfg["horizons"],
            num_stocks=N, num_sectors=inputs.num_sectors, lookback=lookback,
            hidden_size=cfg["hidden_size"], **hparams,
        ).eval()  # fmt: skip
        windows = int(np.isfinite(predict_stage3(model, inputs, one)["point"][last, :, 0]).sum())
        step(f"stage3 {name} one date", lambda m=model: predict_stage3(m, inputs, one),
             windows=windows, lookback=lookback)  # fmt: skip
        if name == "tft":  # one step from the state the update of the day before saved
            _, yesterday = stream_forecast(model, inputs, one - 1, chunk_length=CHUNK_LENGTH)
            step("stage3 tft one date, resumed from the day before",
                 lambda m=model, s=yesterday: stream_forecast(
                     m, inputs, one, chunk_length=CHUNK_LENGTH, state=s),
                 windows=windows, lookback=lookback, state_mb=_state_mb(yesterday))  # fmt: skip
    first = sum(r["ms"] for r in rows if r["step"] in FIRST_UPDATE)
    rows.append({"step": "total, first update after a run (features + stage1 + tft + gru)",
                 "ms": first})  # fmt: skip
    daily = sum(r["ms"] for r in rows if r["step"] in DAILY_UPDATE)
    rows.append({"step": "total, daily update (features + stage1 + tft resumed + gru)",
                 "ms": daily})  # fmt: skip
    return {"rows": rows}


FIRST_UPDATE = ("features (trailing window)", "stage1 one date", "stage3 tft one date",
                "stage3 gru one date")  # fmt: skip
DAILY_UPDATE = ("features (trailing window)", "stage1 one date", "stage3 gru one date",
                "stage3 tft one date, resumed from the day before")  # fmt: skip


def _state_mb(state) -> float:
    return sum(v.nbytes for v in state.tensors.values()) / MB


def measure_update_run(num_stocks: int = 30, days: int = 260) -> dict[str, Any]:
    """``update_run`` with one new date on a tiny trained run folder."""
    from typer.testing import CliRunner

    import relcast
    from relcast.cli import app
    from relcast.run.inference import update_run

    tiny = ["data.horizons=2", "stage1.d_model=16", "stage1.num_heads=2", "stage1.num_layers=1",
            "stage1.relationship_dim=4", "stage1.max_epochs=1", "stage2.n_estimators=10",
            "relationships.oof_folds=2", "stage3.models=[gru,tft]", "stage3.feature_sets=[hybrid]",
            "stage3.hidden_size=16", "stage3.gru.num_layers=1", "stage3.lookback=20",
            "stage3.max_epochs=1", "evaluation.topk=3", "trainer.progress=false",
            "trainer.accelerator=cpu"]  # fmt: skip
    panel, _ = relcast.synthetic_market(num_stocks, days + 2, seed=1)
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        panel.select(end=panel.dates[days - 1]).to_frame().to_csv(root / "hist.csv", index=False)
        for k, name in enumerate(("new.csv", "next.csv")):  # two days, one update each
            day = panel.select(start=panel.dates[days + k], end=panel.dates[days + k])
            day.to_frame().to_csv(root / name, index=False)
        panel.meta.to_csv(root / "universe.csv", index=False)
        sets = [a for s in tiny for a in ("--set", s)]
        t0 = time.perf_counter()
        result = CliRunner().invoke(app, ["run", "--data", str(root / "hist.csv"), "--universe",
                                          str(root / "universe.csv"), "--out", str(root / "run"),
                                          *sets])  # fmt: skip
        run_s = time.perf_counter() - t0
        if result.exit_code != 0:
            return {"error": f"relcast run failed: {result.output[-500:]}"}
        t0 = time.perf_counter()
        forecasts = update_run(root / "run", str(root / "new.csv"))
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        update_run(root / "run", str(root / "next.csv"))  # the TFT resumes from the state
        resumed = time.perf_counter() - t0
    return {"stocks": num_stocks, "history_days": days, "new_dates": 1, "models": "gru, tft",
            "ms": 1e3 * seconds, "ms_next_day": 1e3 * resumed,
            "forecast_rows": len(forecasts), "training_run_s": run_s}  # fmt: skip


def run(quick: bool = False, results_dir=None) -> dict[str, Any]:
    """Time every step, print the table, write the JSON."""
    cfg = QUICK if quick else FULL
    steps = run_isolated(measure_steps, cfg, isolate=not quick)
    rows = steps["rows"]
    update = {"skipped": "quick mode"}
    if cfg["update_run"]:
        try:
            update = run_isolated(measure_update_run)
        except Exception as exc:  # the benchmark reports, it does not hide the others
            update = {"error": repr(exc)}
    ms = {r["step"]: r["ms"] for r in rows}
    tft, resumed = ms["stage3 tft one date"], ms["stage3 tft one date, resumed from the day before"]
    ratios = {
        "stage3_tft_share_of_first_update": tft / rows[-2]["ms"],
        "stage3_tft_chunk_pass_over_resumed": tft / resumed,
        "daily_update_below_1s": rows[-1]["ms"] < 1000.0,
    }
    result = {"config": cfg, "untrained_models": True, "rows": rows, "update_run": update,
              "ratios": ratios}  # fmt: skip
    write_result(NAME, result, results_dir)
    print(f"\n## {NAME}: one new date, {cfg['num_stocks']} stocks (untrained models)\n")
    print(format_table(rows, ["step", "ms", "peak_rss_mb", "stocks", "windows", "lookback",
                              "state_mb"]))  # fmt: skip
    print(f"\nupdate_run end to end: {update}")
    return result


if __name__ == "__main__":
    run()
