"""Stage1 and Stage1+Stage2 forecast quality, cost, and LightGBM as the peer in the same run.

For each market and seed, the pipeline's own steps ``prepare -> stage1 -> stage2`` (small
preset, IC loss, early stopping on validation rank IC), then the horizon-1 IC and rank IC of

- ``stage1``: the Transformer's baseline forecast,
- ``stage1+stage2``: the same, corrected by the LightGBM residual booster,
- ``lightgbm``: LightGBM on the raw features alone (the evaluation's baseline, same split),

on the validation and the test span, against labels z-scored across stocks per date (indices
excluded). Also Stage1's training seconds and epochs, the peak RSS above the process's
baseline while Stage1 trains and while Stage2 fits (a fresh process per market and seed).

Markets:

- ``real``: the bundled data (29 US large caps + S&P 500, 2006-2013, as in ``make demo``);
- ``synthetic``: ``synthetic_market`` (30 stocks, 1,500 days, its default planted lead-lag
  pairs and regimes), generated with the seed, so each seed is another market.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import MB, PeakRSS, format_table, run_isolated, write_result

NAME = "stage1_quality"
MARKETS = {
    "real": ["data.source=demo", "data.start=2006-01-01"],
    "synthetic": [
        "data.source=synthetic",
        "data.synthetic_stocks=30",
        "data.synthetic_days=1500",
    ],
}
FULL = dict(seeds=[0, 1, 2], markets=list(MARKETS), overrides=[])
QUICK = dict(
    seeds=[0],
    markets=["synthetic"],
    overrides=[
        "data.synthetic_stocks=6",
        "data.synthetic_days=400",
        "stage1.max_epochs=2",
        "stage1.d_model=16",
        "stage1.num_heads=2",
        "stage1.num_layers=1",
        "stage2.n_estimators=20",
    ],
)
MODELS = ("stage1", "stage1+stage2", "lightgbm")


def measure(market: str, seed: int, overrides: list[str]) -> dict[str, Any]:
    """One market and seed in this process: train, score, time, measure memory."""
    from relcast.config import load_config
    from relcast.features.labels import normalize_labels_cross_section
    from relcast.metrics import signal_metrics
    from relcast.run.runner import Pipeline
    from relcast.training.baselines import lightgbm_scores

    cfg = load_config(
        "small",
        overrides=[*MARKETS[market], *overrides, f"trainer.seed={seed}", "trainer.progress=false"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline(cfg, tmp)
        pipe.step("prepare")
        with PeakRSS() as peak1:
            start = time.perf_counter()
            pipe.step("stage1")
            stage1_seconds = time.perf_counter() - start
        with PeakRSS() as peak2:
            start = time.perf_counter()
            pipe.step("stage2")
            stage2_seconds = time.perf_counter() - start
        f, split = pipe.ctx.features, pipe.ctx.split
        cell = f.mask & pipe.ctx.target[None, :]
        z = normalize_labels_cross_section(pipe.ctx.labels, cell)[..., 0]  # (T, N)
        out = pipe.ctx.stage1_outputs
        raw = np.nan_to_num(f.values)
        scores = {
            "stage1": out["pred"][..., 0],
            "stage1+stage2": pipe.ctx.stage2_booster.predict(
                raw, out["embeddings"], out["pred"][..., 0], f.mask
            ),
            "lightgbm": lightgbm_scores(raw, z, cell, split, seed),
        }
        info = pipe.ctx.info()["steps"]
        rows = []
        for span in ("valid", "test"):
            on_span = np.zeros(len(f.dates), dtype=bool)
            on_span[getattr(split, span)] = True
            mask = cell & on_span[:, None]
            for model, score in scores.items():
                m = signal_metrics(score, z, mask)
                rows.append(
                    {"market": market, "seed": seed, "span": span, "model": model,
                     "ic": m["ic"], "rank_ic": m["rank_ic"], "n_dates": m["n_dates"]}
                )  # fmt: skip
        return {
            "rows": rows,
            "cost": {
                "market": market,
                "seed": seed,
                "stocks": int(pipe.ctx.target.sum()),
                "dates": len(f.dates),
                "train_dates": len(split.train),
                "stage1_seconds": stage1_seconds,
                "stage1_epochs": info["stage1"]["epochs"],
                "stage1_best_val_rank_ic": info["stage1"]["best_val_rank_ic"],
                "stage1_peak_rss_mb": peak1.delta / MB,
                "stage2_seconds": stage2_seconds,
                "stage2_peak_rss_mb": peak2.delta / MB,
                "stage2_helped_on_valid": bool(info["stage2"]["helped"]),
            },
        }


def summarise(rows: list[dict], costs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Mean and std over seeds: quality per (market, span, model), cost per market."""
    quality = []
    for market in dict.fromkeys(r["market"] for r in rows):
        for span in ("valid", "test"):
            for model in MODELS:
                sel = [
                    r for r in rows if (r["market"], r["span"], r["model"]) == (market, span, model)
                ]
                row = {"market": market, "span": span, "model": model, "seeds": len(sel)}
                for key in ("ic", "rank_ic"):
                    values = [r[key] for r in sel]
                    row[key] = statistics.fmean(values)
                    row[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
                quality.append(row)
    cost = []
    for market in dict.fromkeys(c["market"] for c in costs):
        sel = [c for c in costs if c["market"] == market]
        row = {"market": market, "stocks": sel[0]["stocks"], "dates": sel[0]["dates"]}
        for key in ("stage1_seconds", "stage1_epochs", "stage1_peak_rss_mb", "stage2_seconds",
                    "stage2_peak_rss_mb"):  # fmt: skip
            row[key] = statistics.fmean(c[key] for c in sel)
        row["stage2_helped_on_valid"] = (
            f"{sum(c['stage2_helped_on_valid'] for c in sel)}/{len(sel)}"
        )
        cost.append(row)
    return quality, cost


def run(quick: bool = False, results_dir=None) -> dict[str, Any]:
    """Every market and seed in a fresh process; print the tables, write the JSON."""
    cfg = QUICK if quick else FULL
    rows, costs = [], []
    for market in cfg["markets"]:
        for seed in cfg["seeds"]:
            got = run_isolated(measure, market, seed, cfg["overrides"], isolate=not quick)
            rows += got["rows"]
            costs.append(got["cost"])
    quality, cost = summarise(rows, costs)
    # differences, not ratios: an IC near zero makes a ratio meaningless
    test = {(q["market"], q["model"]): q["rank_ic"] for q in quality if q["span"] == "test"}
    ratios = {
        f"{market}: test rank IC {model} minus lightgbm": round(
            test[(market, model)] - test[(market, "lightgbm")], 4
        )
        for market in cfg["markets"]
        for model in ("stage1", "stage1+stage2")
    }
    result = {"config": cfg, "rows": quality, "cost": cost, "per_seed": rows,
              "per_seed_cost": costs, "ratios": ratios}  # fmt: skip
    write_result(NAME, result, results_dir)
    print(f"\n## {NAME}: horizon-1 IC / rank IC, mean (std) over {len(cfg['seeds'])} seeds\n")
    print(format_table(quality, ["market", "span", "model", "ic", "ic_std", "rank_ic",
                                 "rank_ic_std"]))  # fmt: skip
    print()
    print(format_table(cost))
    return result


if __name__ == "__main__":
    run()
