"""The joint mode against the staged pipeline: does Stage3's loss reaching Stage1 pay, and what
does it cost?

``python -m benchmarks.joint`` runs one pipeline on a synthetic market with planted lead-lag
(20 stocks in 10 leader/follower pairs, 2,000 days: where the staged hybrid should find the
signal and own history cannot) with three Stage3 models
trained on the same run's Stage1 and store: ``hybrid_gru`` (staged: Stage1 frozen),
``hybrid_joint`` (the joint model, inner GRU, its Stage1 starting from the same weights and
trained on with the Stage3 loss) and ``stage3_own_gru``; ``evaluation.seeds`` seeds each.
``benchmarks/results/joint.json`` holds per model the pooled test Rank IC with its Newey-West
t, the paired test against the staged hybrid and own history, validation Rank IC, seconds
per epoch and epochs, and the ratios joint / staged. ``--market nasdaq`` runs the same on
the 1,026 NASDAQ stocks (test 2017; hours on 2 cores: the joint model runs a Stage1 pass per
date of every batch).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MB, PeakRSS, format_table, run_isolated, write_result

NAME = "joint"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RUNS = Path(__file__).resolve().parents[1] / "runs" / NAME
MARKETS = {
    "synthetic": [  # data.source and data.universe: the planted market (synthetic_csv)
        "data.horizons=1",
        "stage2.enabled=false",
        "stage3.lookback=20",
        "stage3.max_epochs=6",
    ],
    "nasdaq": [
        f"data.source={SHARED / 'rsr_nasdaq'}",
        f"data.universe={SHARED / 'rsr_nasdaq_industry.csv'}",
        "data.horizons=1",
        "data.label_delay=0",
        "split.train_end=2015-12-31",
        "split.valid_end=2016-12-31",
        "stage1.max_epochs=10",
        "stage3.max_epochs=8",
    ],
}
COMMON = [
    "stage3.models=[gru,joint]",
    "stage3.feature_sets=[hybrid,own]",
    "stage3.baseline_models=[gru]",
    "evaluation.topk=5",
    "trainer.progress=false",
]
ROWS = ("hybrid_gru", "hybrid_joint", "stage3_own_gru", "lightgbm", "reversal_1d")


# the market of tests/test_stage3.py's slow hybrid-vs-own test: 10 planted leader/follower
# pairs strong enough that Stage1 learns them (the pipeline's default synthetic market plants
# 0.35 on a quarter of the stocks, which the small preset does not learn at 30 stocks)
PLANTED = dict(num_stocks=20, num_days=2000, seed=0, lead_lag_pairs=10, lead_lag_strength=0.6)


def synthetic_csv(folder: Path) -> list[str]:
    """Write the planted market as a CSV and universe file; the overrides that read them."""
    import relcast

    folder.mkdir(parents=True, exist_ok=True)
    panel, _ = relcast.synthetic_market(**PLANTED)
    panel.to_frame().to_csv(folder / "market.csv", index=False)
    panel.meta.to_csv(folder / "universe.csv", index=False)
    return [f"data.source={folder / 'market.csv'}", f"data.universe={folder / 'universe.csv'}"]


def measure(overrides: list[str], out: str) -> dict[str, Any]:
    """The run in this process: per step seconds and peak RSS, then the models' rows."""
    import shutil

    from relcast.config import load_config
    from relcast.run.pipeline import STEP_NAMES
    from relcast.run.runner import Pipeline

    shutil.rmtree(out, ignore_errors=True)
    pipe = Pipeline(load_config("small", overrides=overrides), out)
    steps = {}
    for step in STEP_NAMES:
        with PeakRSS() as peak:
            start = time.perf_counter()
            pipe.step(step)
        steps[step] = {
            "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(peak.peak / MB),
        }
    metrics = json.loads((Path(out) / "metrics.json").read_text())["models"]
    trained = pipe.ctx.info()["steps"]["stage3"]["models"]
    rows = {}
    for name in ROWS:
        m = metrics.get(name)
        if m is None:
            continue
        row = {k: m.get(k) for k in ("ic", "rank_ic", "rank_ic_t", "icir")}
        for peer in ("staged", "own", "reversal", "lightgbm"):
            if m.get(f"vs_{peer}"):
                row[f"vs_{peer}_diff"] = m[f"vs_{peer}"]["mean_diff"]
                row[f"vs_{peer}_t"] = m[f"vs_{peer}"]["t"]
        if m.get("seeds"):
            row["seed_rank_ic_std"] = m["seeds"].get("rank_ic_std")
        runs = [v for k, v in trained.items() if k == name or k.startswith(f"{name}@")]
        if runs:
            row["val_rank_ic"] = sum(r["best_val_rank_ic"] for r in runs) / len(runs)
            row["seconds_per_epoch"] = sum(r["seconds_per_epoch"] for r in runs) / len(runs)
            row["epochs"] = [r["epochs"] for r in runs]
        rows[name] = row
    return {"steps": steps, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--market", choices=sorted(MARKETS), default="synthetic")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], help="more overrides")
    args = parser.parse_args(argv)
    out = str(RUNS / args.market)
    data = synthetic_csv(RUNS / "planted_market") if args.market == "synthetic" else []
    overrides = [
        *data, *MARKETS[args.market], *COMMON, f"evaluation.seeds={args.seeds}", *args.set
    ]  # fmt: skip
    got = run_isolated(measure, overrides, out)
    rows = got["rows"]
    joint, staged = rows.get("hybrid_joint", {}), rows.get("hybrid_gru", {})
    ratios = {}
    if joint and staged:
        ratios["seconds_per_epoch_joint_over_staged"] = round(
            joint["seconds_per_epoch"] / staged["seconds_per_epoch"], 2
        )
        ratios["test_rank_ic_joint_minus_staged"] = joint["rank_ic"] - staged["rank_ic"]
    result = {"market": args.market, "overrides": overrides, **got, "ratios": ratios}
    write_result(f"{NAME}_{args.market}", result)
    print(format_table([{"model": k, **v} for k, v in rows.items()]))
    print(format_table([{"step": k, **v} for k, v in got["steps"].items()]))
    print(json.dumps(ratios, indent=1))
    return result


if __name__ == "__main__":
    main()
