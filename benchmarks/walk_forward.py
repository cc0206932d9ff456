"""Walk-forward runs with and without warm starts: quality and cost, pooled and per block.

``python -m benchmarks.walk_forward`` runs the walk-forward configuration twice in fresh
processes, ``split.walk_forward.warm_start`` true then false, and writes
``benchmarks/results/walk_forward.json``: per run the wall time and peak RSS, per block its
seconds and each Stage1/Stage3 model's epochs and best validation Rank IC, and the pooled
metrics rows of every model (Rank IC with its Newey-West t, the paired tests the
evaluation computes), with the ratios warm / scratch.

``--market nasdaq`` (default) is the 1,026-stock benchmark universe (``../shared/data``,
test blocks 2015, 2016, 2017, the benchmark's industries, small preset); ``--market
synthetic`` a small synthetic market (blocks 2020-2022) that runs in minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MB, PeakRSS, run_isolated, write_result
from benchmarks.real_nasdaq import block_summary

NAME = "walk_forward"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RUNS = Path(__file__).resolve().parents[1] / "runs" / NAME

MARKETS = {
    "nasdaq": [
        f"data.source={SHARED / 'rsr_nasdaq'}",
        f"data.universe={SHARED / 'rsr_nasdaq_industry.csv'}",
        "data.horizons=1",
        "data.label_delay=0",
        "split.walk_forward.first_test=2015-01-01",
        "evaluation.topk=5",
        "stage3.models=[gru]",
        "stage3.feature_sets=[hybrid,own]",
        "stage3.max_epochs=8",
        "trainer.progress=false",
    ],
    "synthetic": [
        "data.source=synthetic",
        "data.synthetic_stocks=60",
        "data.synthetic_days=1100",
        "data.horizons=1",
        "split.walk_forward.first_test=2020-01-01",
        "stage1.d_model=32",
        "stage1.max_epochs=6",
        "stage2.enabled=false",
        "stage3.models=[gru]",
        "stage3.feature_sets=[hybrid,own]",
        "stage3.lookback=20",
        "stage3.max_epochs=6",
        "evaluation.topk=5",
        "trainer.progress=false",
    ],
}
ROWS = ("lightgbm", "stage1", "hybrid_gru", "stage3_own_gru")
KEEP = ("ic", "rank_ic", "icir", "rank_icir", "n_dates", "ic_t", "rank_ic_t", "rank_ic_p",
        "vs_lightgbm", "vs_own", "vs_reversal", "neutral")  # fmt: skip


def compact(row: dict) -> dict:
    """A metrics row without its per-date series (what the JSON keeps)."""
    out = {k: row[k] for k in KEEP if k in row}
    backtest = row.get("backtest")
    if isinstance(backtest, dict):
        out["backtest"] = {k: v for k, v in backtest.items() if not isinstance(v, list | dict)}
    return out


def run_one(overrides: list[str], out: str) -> dict[str, Any]:
    """One walk-forward run in this process: wall time, peak RSS, per-block and pooled rows."""
    import shutil

    from relcast.config import load_config
    from relcast.run.runner import Pipeline

    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("small", overrides=overrides)
    with PeakRSS() as peak:
        start = time.perf_counter()
        metrics = Pipeline(cfg, out).run(force=True)
        seconds = time.perf_counter() - start
    info = json.loads((Path(out) / "run.json").read_text())["steps"]["blocks"]
    blocks = {}
    for name in info["names"]:
        steps = json.loads((Path(out) / "blocks" / name / "run.json").read_text())["steps"]
        blocks[name] = {
            "seconds": info["seconds"].get(name),
            **block_summary(steps),  # epochs and validation of every network
            "test_rank_ic": {
                m: metrics["walk_forward"][name]["models"].get(m, {}).get("rank_ic") for m in ROWS
            },
        }
    pooled = {m: compact(row) for m, row in metrics["models"].items()}
    return {
        "wall_seconds": round(seconds, 1),
        "peak_rss_mb": round(peak.peak / MB),
        "blocks": blocks,
        "pooled": pooled,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--market", choices=sorted(MARKETS), default="nasdaq")
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for both runs")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    runs = {}
    for warm in (True, False):
        tag = "warm" if warm else "scratch"
        overrides = [*MARKETS[args.market], *args.set, f"split.walk_forward.warm_start={warm}"]
        runs[tag] = run_isolated(run_one, overrides, str(RUNS / f"{args.market}_{tag}"))
        print(f"[{tag}] {runs[tag]['wall_seconds']:.0f}s, peak RSS {runs[tag]['peak_rss_mb']} MB")
    warm, scratch = runs["warm"], runs["scratch"]
    ratios = {
        "wall_warm_over_scratch": round(warm["wall_seconds"] / scratch["wall_seconds"], 3),
        "pooled_rank_ic": {
            m: [warm["pooled"][m]["rank_ic"], scratch["pooled"][m]["rank_ic"]]
            for m in ROWS
            if m in warm["pooled"] and m in scratch["pooled"]
        },
    }
    result = {"market": args.market, "overrides": args.set, "runs": runs, "ratios": ratios}
    write_result(f"{NAME}_{args.market}", result, args.results_dir)
    print(json.dumps(ratios, indent=2))
    return result


if __name__ == "__main__":
    main()
