"""The whole pipeline on the field's real relational-ranking universe, walk-forward.

Data: ``../shared/data/rsr_nasdaq`` (1,026 NASDAQ stocks, RSR 2019 / StockMixer 2024's raw
Google Finance files, read as they are by :func:`relcast.read_panel`; never copied into the
project) with the benchmark's own industries (``rsr_nasdaq_industry.csv``, 113 of them, the
universe file: Stage1's sector embedding). Protocol: walk-forward test blocks 2015, 2016 and
2017 (about 750 test dates); each block trains on every date before the year before it and
validates on that year; every stage is retrained per block, warm-started from the block
before (``split.walk_forward.warm_start``; a warm network fine-tunes for at most
``warm_epochs``); next-day label (``data.horizons=1``, ``data.label_delay=0``), small preset,
top-5 portfolios, Stage3 GRU on hybrid and own inputs with 3 seeds (the reported forecast
is their mean), LightGBM and every factor baseline.

``python -m benchmarks.real_nasdaq`` (``make bench-real``) runs it in a fresh process, block
by block and step by step, and writes ``benchmarks/results/real_nasdaq.json``: per model the
pooled and per-block IC, Rank IC, ICIR, Newey-West t, factor-neutral Rank IC with its t, the
seeds' spread, and the paired tests (Newey-West, Clark-West, block-bootstrap interval)
against ``reversal_1d``, ``lightgbm`` and ``stage3_own_*``; wall time and peak RSS of every
step of every block. ``--tag NAME --set KEY=VALUE ...`` runs a variant beside it (its own
run folder and entry in the JSON); ``--resume`` keeps the finished blocks and steps;
``--collect`` only assembles the JSON from the run folders. Settings are chosen on the
validation years only (``validation`` in each block's entry).

The earlier single-split protocol (train 2013-2015, valid 2016, test 2017) and its ablations
are in ``benchmarks/results/real_nasdaq_2017_split.json`` (git history holds its script).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MB, PeakRSS, format_table, run_isolated, write_result

NAME = "real_nasdaq"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED / "rsr_nasdaq"
INDUSTRIES = SHARED / "rsr_nasdaq_industry.csv"
RUNS = Path(__file__).resolve().parents[1] / "runs" / NAME

PROTOCOL = [
    f"data.source={DATA}",
    f"data.universe={INDUSTRIES}",
    "data.horizons=1",
    "data.label_delay=0",
    "split.walk_forward.first_test=2015-01-01",
    "evaluation.topk=5",
    "trainer.progress=false",
]
# Cost choices made before any test block was scored, to fit the run in an hour on 2 cores:
# the first block's networks train from scratch, the later ones fine-tune for warm_epochs;
# Stage1 at most 10 epochs (with the preset's 30, block 2015's Stage1 ran all 30, best 27,
# and its 3 fold models per block, from scratch at that count on 1-3 years, alone would
# take about an hour: the fold models are the run's largest cost)
MAIN = [
    "stage3.models=[gru]",
    "stage3.feature_sets=[hybrid,own]",
    "evaluation.seeds=3",
    "stage1.max_epochs=10",
    "stage3.max_epochs=8",
    "split.walk_forward.warm_epochs=3",
]
QUICK = [  # a smoke run: two short blocks, one epoch
    "data.start=2014-06-01",
    "split.walk_forward.first_test=2016-01-01",
    "stage1.max_epochs=1",
    "stage3.max_epochs=1",
    "stage3.lookback=20",
    "evaluation.seeds=2",
]
# The published numbers on this universe (their conventions: IC with masked stocks
# zero-filled, no costs, test 2017 only) and the independent re-runs (../shared/data/README.md)
PUBLISHED = [
    {"model": "LSTM (StockMixer Table 2)", "ic": 0.032, "icir": 0.354, "span": "2017"},
    {"model": "RSR-I (StockMixer Table 2)", "ic": 0.038, "icir": 0.398, "span": "2017"},
    {"model": "STHAN-SR (StockMixer Table 2)", "ic": 0.039, "icir": 0.451, "span": "2017"},
    {"model": "StockMixer (StockMixer Table 2)", "ic": 0.043, "icir": 0.501, "span": "2017"},
    {"model": "StockMixer, its code re-run (5 seeds, hrj04)", "ic": 0.017, "ic_sd": 0.005,
     "icir": 0.21, "span": "2017"},
    {"model": "StockMixer, re-run on traded stocks (5 seeds, WHYtian)", "ic": 0.017,
     "ic_sd": 0.005, "rank_ic": 0.030, "rank_ic_sd": 0.004, "span": "2017"},
    {"model": "StockMixer, 5-seed mean forecast (WHYtian)", "ic": 0.021, "rank_ic": 0.037,
     "span": "2017"},
    {"model": "1-day reversal (WHYtian)", "rank_ic": 0.0325, "span": "2017"},
]  # fmt: skip
PEERS = ("reversal", "lightgbm", "own")  # the paired tests' keys: vs_reversal, ...
COLUMNS = ["model", "ic", "rank_ic", "rank_ic_t", "icir", "neutral_rank_ic", "neutral_t",
           "vs_reversal_diff", "vs_reversal_t", "vs_lightgbm_t", "vs_own_diff", "vs_own_t",
           "vs_own_cw_t", "seed_rank_ic_std"]  # fmt: skip


def flat_row(name: str, m: dict) -> dict[str, Any]:
    """One model's headline numbers: signal metrics, Newey-West t, factor-neutral Rank IC,
    paired tests (mean difference, NW t, bootstrap 95% interval, Clark-West t), seeds' spread
    and the top-k backtest."""
    row: dict[str, Any] = {"model": name}
    for key in ("ic", "rank_ic", "icir", "rank_icir", "ic_t", "rank_ic_t", "rank_ic_p", "n_dates"):
        row[key] = m.get(key)
    neutral = m.get("neutral") or {}
    row["neutral_rank_ic"] = neutral.get("rank_ic")
    row["neutral_t"] = neutral.get("rank_ic_t")
    for peer in PEERS:
        paired = m.get(f"vs_{peer}")
        if not paired:
            continue
        row[f"vs_{peer}_model"] = paired.get("baseline")
        row[f"vs_{peer}_diff"] = paired.get("mean_diff")
        row[f"vs_{peer}_t"] = paired.get("t")
        row[f"vs_{peer}_ci95"] = paired.get("ci95")
        if paired.get("clark_west"):
            row[f"vs_{peer}_cw_t"] = paired["clark_west"].get("t")
        neutral_paired = neutral.get(f"vs_{peer}")
        if neutral_paired:
            row[f"neutral_vs_{peer}_t"] = neutral_paired.get("t")
    seeds = m.get("seeds")
    if seeds:
        row["seeds"] = seeds.get("n")
        row["seed_rank_ic_mean"] = seeds.get("rank_ic_mean")
        row["seed_rank_ic_std"] = seeds.get("rank_ic_std")
    top = (m.get("backtest") or {}).get("topk", {})
    if top:
        row["topk_excess_ann"] = top.get("excess_annualized_return_arithmetic")
        row["topk_ir"] = top.get("information_ratio")
    return row


def block_summary(steps: dict) -> dict[str, Any]:
    """A block's training record: Stage1's and each Stage3 model's epochs, whether it started
    warm, and best validation Rank IC (what settings are chosen on)."""
    stage1 = steps.get("stage1", {})
    keys = ("seconds", "epochs", "best_epoch", "best_val_rank_ic")
    out = {
        "stage1": {k: stage1.get(k) for k in keys},
        "fold_epochs": steps.get("extract", {}).get("fold_epochs"),
        "stage3": {
            name: {k: row.get(k) for k in ("epochs", "seconds_per_epoch", "best_val_rank_ic")}
            for name, row in steps.get("stage3", {}).get("models", {}).items()
        },
    }
    stage2 = steps.get("stage2", {})
    for name in ("stage1", "stage1+stage2"):
        if isinstance(stage2.get(name), dict):
            out[f"{name} (stage2 valid)"] = stage2[name].get("rank_ic")
    return out


# what a variant never takes from its base run's blocks: Stage3 models and every output of
# the steps it redoes (a stale seed_predictions.parquet would be pooled as its own)
NOT_REUSED = (
    "stage3", "logs", "*.tmp*", "metrics.json", "predictions.parquet",
    "seed_predictions.parquet", "backtest.parquet", "importance.json", "attention.npz",
)  # fmt: skip


def start_from(base: Path, out: Path, steps: list[str]) -> None:
    """Start the walk-forward folder ``out`` from the finished ``steps`` of every block of
    the run folder ``base`` (the same Stage1 weights, so a variant compares only what it
    changes); the blocks' later steps are redone."""
    import shutil

    from relcast.runfolder import read_json
    from relcast.runfolder.formats import write_json

    blocks = sorted(p for p in (base / "blocks").iterdir() if p.is_dir())
    if not blocks:
        raise SystemExit(f"{base} has no blocks to start from")
    for block in blocks:
        done = read_json(block / "run.json")["steps"]
        if not all(step in done for step in steps):
            raise SystemExit(f"{block}: steps {steps} not all done (has {sorted(done)})")
        target = out / "blocks" / block.name
        shutil.copytree(block, target, ignore=shutil.ignore_patterns(*NOT_REUSED))
        info = read_json(target / "run.json")
        info["steps"] = {step: done[step] for step in steps}
        write_json(target / "run.json", info)


def measure(
    tag: str, overrides: list[str], fresh: bool = True, base: str | None = None,
    reuse: tuple[str, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    """One walk-forward run in this process, block by block and step by step (each step's
    seconds and peak RSS), then the pooled scoring; leaves ``bench.json`` in its folder.
    ``base`` with ``reuse``: start from that run's finished ``reuse`` steps (:func:`start_from`)."""
    import shutil

    import psutil

    from relcast.config import load_config
    from relcast.run.pipeline import run_steps
    from relcast.run.source import load_source
    from relcast.run.walk_forward import (
        BLOCK_STEPS,
        block_contexts,
        run_walk_forward,
        start_walk_forward,
    )
    from relcast.runfolder import RunFolder, read_json
    from relcast.runfolder.formats import write_json

    cfg = load_config("small", overrides=[*PROTOCOL, *overrides])
    out = RUNS / tag
    if (fresh or base is not None) and out.exists():
        shutil.rmtree(out)
    total = time.perf_counter()
    root = RunFolder(out)
    with root.lock("walk_forward"):  # a run folder first: then the blocks go in
        start_walk_forward(root, cfg, force=fresh or base is not None)
    if base is not None and reuse:
        start_from(Path(base), out, list(reuse))
    contexts = block_contexts(cfg, out, load_source(cfg).dates)
    if base is not None and reuse:  # the kept steps now belong to this run's config
        for ctx in contexts:
            ctx.folder.write("config.yaml", ctx.config.to_yaml().encode())
    blocks: dict[str, Any] = {}
    for ctx in contexts:
        steps: dict[str, Any] = {}
        for step in BLOCK_STEPS:
            if ctx.folder.has("run.json") and ctx.done(step.name):
                seconds = ctx.info()["steps"][step.name].get("seconds")
                steps[step.name] = {"seconds": seconds, "peak_rss_mb": None, "resumed": True}
                continue
            with PeakRSS() as peak:
                start = time.perf_counter()
                run_steps(ctx, steps=(step,))
                seconds = time.perf_counter() - start
            steps[step.name] = {"seconds": round(seconds, 1), "peak_rss_mb": round(peak.peak / MB)}
            print(
                f"[{tag} {ctx.dir.name}] {step.name}: {seconds:.0f}s, "
                f"peak RSS {peak.peak / MB:.0f} MB",
                flush=True,
            )
        blocks[ctx.dir.name] = {
            "seconds": round(sum(s["seconds"] or 0 for s in steps.values()), 1),
            "steps": steps,
            "training": block_summary(ctx.info()["steps"]),
            "spans": read_json(ctx.dir / "metrics.json").get("split", {}),
        }
        ctx.forget()  # the next block reads its own data
    with PeakRSS() as peak:
        start = time.perf_counter()
        metrics = run_walk_forward(cfg, out)  # every block done: the pooled scores and report
        pooled_seconds = time.perf_counter() - start
    print(f"[{tag}] pooled scoring and report: {pooled_seconds:.0f}s", flush=True)
    got = {
        "tag": tag,
        "overrides": overrides,
        "reused_from": {"run": str(base), "steps": list(reuse)} if base and reuse else None,
        "blocks": blocks,
        "pooled_step": {"seconds": round(pooled_seconds, 1), "peak_rss_mb": round(peak.peak / MB)},
        "wall_seconds": round(time.perf_counter() - total, 1),
        "peak_rss_mb": round(psutil.Process().memory_info().rss / MB),
        "metrics": {
            "split": metrics.get("split"),
            "statistics": metrics.get("statistics"),
            "pooled": {name: flat_row(name, m) for name, m in metrics["models"].items()},
            "per_block": {
                block: {name: flat_row(name, m) for name, m in one["models"].items()}
                for block, one in metrics["walk_forward"].items()
            },
        },
    }
    write_json(out / "bench.json", got)
    return got


def verdict(rows: dict[str, dict]) -> list[str]:
    """Which models beat the 1-day reversal and own history with paired NW t >= 2 (pooled)."""
    lines = []
    for name, row in rows.items():
        beats = [
            f"{peer} (diff {row[f'vs_{peer}_diff']:+.4f}, t {row[f'vs_{peer}_t']:.2f})"
            for peer in ("reversal", "own")
            if row.get(f"vs_{peer}_t") is not None and row[f"vs_{peer}_t"] >= 2
        ]
        if beats:
            lines.append(f"{name} beats " + " and ".join(beats))
    return lines or ["no model beats reversal_1d or own history with paired t >= 2"]


# One-seed rows of different runs on the same test dates: a variant's single seed against
# the main run's seed 0 of its twin (not against the 3-seed mean, which ranks better by
# itself). (run, model, base run, base model)
CROSS = [
    ("relational", "stage3_own_stockmixer", "main", "stage3_own_gru@seed0"),
    ("relational", "stage3_own_rsr", "main", "stage3_own_gru@seed0"),
    ("relational", "stage3_own_master", "main", "stage3_own_gru@seed0"),
    ("max_stocks512", "stage1", "main", "stage1"),
    ("max_stocks512", "stage1+stage2", "main", "stage1+stage2"),
    ("max_stocks512", "hybrid_gru", "main", "hybrid_gru@seed0"),
    ("orthogonal", "hybrid_gru", "main", "hybrid_gru@seed0"),
    ("orthogonal", "hybrid_gru", "main", "stage3_own_gru@seed0"),
    ("joint", "hybrid_joint", "main", "hybrid_gru@seed0"),
    ("joint", "hybrid_joint", "main", "stage3_own_gru@seed0"),
]


def daily_rank_ic_of(run: str, model: str):
    """The pooled next-day Rank IC per test date of ``model`` in the run folder ``run``
    (``name@seedK``: one seed, from ``seed_predictions.parquet``), as a Series by date."""
    import numpy as np
    import pandas as pd

    from relcast.metrics import daily_rank_ic

    name = "seed_predictions.parquet" if "@seed" in model else "predictions.parquet"
    frame = pd.read_parquet(
        RUNS / run / name, columns=["date", "symbol", "model", "horizon", "pred", "label"],
        filters=[("model", "==", model), ("horizon", "==", 1)],
    )  # fmt: skip
    if frame.empty:
        raise ValueError(f"{RUNS / run / name} has no forecasts of {model}")
    pred = frame.pivot(index="date", columns="symbol", values="pred")
    label = frame.pivot(index="date", columns="symbol", values="label").reindex_like(pred)
    p, y = pred.to_numpy(np.float64), label.to_numpy(np.float64)
    return pd.Series(daily_rank_ic(p, y, np.isfinite(p) & np.isfinite(y)), index=pred.index)


def cross_pairs(lag: int) -> list[dict[str, Any]]:
    """The paired test of every :data:`CROSS` pair whose runs are there: Rank IC of each,
    the mean daily difference, its Newey-West t and block-bootstrap 95% interval."""
    import numpy as np

    from relcast.evaluation.stats import block_bootstrap_interval, paired_test

    rows = []
    for run, model, base_run, base in CROSS:
        if not all((RUNS / r / "bench.json").exists() for r in (run, base_run)):
            continue
        a, b = daily_rank_ic_of(run, model), daily_rank_ic_of(base_run, base)
        dates = a.index.intersection(b.index)
        x, y = a[dates].to_numpy(), b[dates].to_numpy()
        test = paired_test(x, y, lag)
        ci = block_bootstrap_interval(x - y, lag)
        rows.append({
            "model": f"{run}: {model}", "baseline": f"{base_run}: {base}", "dates": len(dates),
            "rank_ic": float(np.nanmean(x)), "baseline_rank_ic": float(np.nanmean(y)),
            "diff": test["mean_diff"], "t": test["t"], "ci95": [ci["lo"], ci["hi"]],
        })  # fmt: skip
    return rows


def collect(results_dir=None) -> dict[str, Any]:
    """Assemble ``real_nasdaq.json`` from the ``bench.json`` of every run under ``runs/``."""
    from benchmarks.common import machine_info
    from relcast.runfolder import read_json

    runs = {p.parent.name: read_json(p) for p in sorted(RUNS.glob("*/bench.json"))}
    if "main" not in runs:
        raise SystemExit(f"no main run under {RUNS}: run `python -m benchmarks.{NAME}` first")
    runs = {"main": runs.pop("main"), **runs}
    main = runs["main"]
    result = {
        "benchmark": NAME,
        "machine": machine_info(),
        "protocol": PROTOCOL,
        "runs": runs,
        "verdict": verdict(main["metrics"]["pooled"]),
        "cross_run": cross_pairs(main["metrics"]["statistics"]["newey_west_lag"]),
        "published": PUBLISHED,
    }
    write_result(NAME, result, results_dir)
    spans = main["metrics"]["split"]
    print(f"\n## {NAME}: walk-forward, pooled test {spans['test'][0]}..{spans['test'][-1]}")
    print(f"(main run {main['wall_seconds'] / 60:.1f} min)\n")
    print(format_table(list(main["metrics"]["pooled"].values()), COLUMNS))
    for block, rows in main["metrics"]["per_block"].items():
        print(f"\n### block {block}\n")
        print(format_table(list(rows.values()), COLUMNS))
    print()
    for block, got in main["blocks"].items():
        print(format_table([{"block": block, "step": k, **v} for k, v in got["steps"].items()]))
    if result["cross_run"]:
        print("\none seed against one seed, across runs:\n")
        print(format_table(result["cross_run"], ["model", "baseline", "rank_ic",
                                                 "baseline_rank_ic", "diff", "t"]))  # fmt: skip
    print("\n" + "\n".join(result["verdict"]))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two short blocks, one epoch (smoke)")
    parser.add_argument("--tag", default="main", help="run folder and JSON entry of this run")
    parser.add_argument("--set", nargs="*", default=[], help="more overrides (a variant)")
    parser.add_argument("--resume", action="store_true", help="keep finished blocks and steps")
    parser.add_argument(
        "--reuse", nargs="*", default=[], choices=["prepare", "stage1", "stage2", "extract"],
        help="start every block from these finished steps of the --base run (a variant)",
    )  # fmt: skip
    parser.add_argument("--base", default="main", help="the run --reuse starts from")
    parser.add_argument("--collect", action="store_true", help="only assemble the JSON")
    args = parser.parse_args(argv)
    if not args.collect:
        if not DATA.is_dir():
            raise SystemExit(f"{DATA} not found: the NASDAQ files live in ../shared/data/")
        overrides = MAIN + (QUICK if args.quick else []) + args.set
        base = str(RUNS / args.base) if args.reuse else None
        run_isolated(
            measure, args.tag, overrides, not args.resume, base=base, reuse=tuple(args.reuse),
            isolate=not args.quick,
        )  # fmt: skip
    collect()


if __name__ == "__main__":
    main()
