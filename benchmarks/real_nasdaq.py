"""The whole pipeline on the field's real relational-ranking universe: 1,026 NASDAQ stocks.

Data: ``../shared/data/rsr_nasdaq`` (RSR 2019 / StockMixer 2024's raw Google Finance files,
read as they are by :func:`relcast.read_panel`; never copied into the project). Protocol of
the published numbers: train 2013-01-02..2015-12-31 (the files start 2012-11-19: those
dates are warm-up), valid 2016, test 2017, next-day label (``data.label_delay=0``,
``data.horizons=1``), the small preset, top-5 portfolios (StockMixer reports top-5) and
the TopkDropout backtest with 5/15 bp costs.

``python -m benchmarks.real_nasdaq`` (``make bench-real``) runs the main configuration
(Stage3 GRU on hybrid / own / rawconcat inputs, 3 seeds each) in a fresh process, step by
step, and writes ``benchmarks/results/real_nasdaq.json``: every metric row of the run
(with the Newey-West statistics and paired tests the evaluation computes), wall time and
peak RSS of each step. ``--ablations`` adds one-seed variants (extractor, out-of-fold,
Stage1 loss, label normalisation, Alpha158 features) that each change one setting,
scored with the same statistics. Settings were chosen on the validation year only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MB, PeakRSS, format_table, run_isolated, write_result

NAME = "real_nasdaq"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsr_nasdaq"
RUNS = Path(__file__).resolve().parents[1] / "runs" / NAME

PROTOCOL = [
    f"data.source={DATA}",
    "data.horizons=1",
    "data.label_delay=0",
    "split.train_end=2015-12-31",
    "split.valid_end=2016-12-31",
    "evaluation.topk=5",
    "trainer.progress=false",
]
# rawconcat (every stock's 44 own columns side by side: 45,000 inputs per step at 1,026
# stocks, the design's "original approach") is left out of the default run: it alone would
# take longer than the rest of the benchmark (`--set stage3.feature_sets=[hybrid,own,rawconcat]`)
MAIN = [
    "stage3.models=[gru]",
    "stage3.feature_sets=[hybrid,own]",
    "evaluation.seeds=2",
    "stage3.max_epochs=8",
]
# steps that --resume takes from an earlier run of the same tag when they are done
REUSABLE = ("prepare", "stage1", "stage2", "extract")
# one change each against the main configuration's hybrid/own GRU (one seed)
ABLATIONS: dict[str, list[str]] = {
    "v1+v2": ["relationships.extractor=v1+v2"],
    "v3": ["relationships.extractor=v3"],
    "no_oof": ["relationships.oof_folds=0"],
    "stage1_mse": ["stage1.loss=mse"],
    "stage1_listnet": ["stage1.loss=listnet"],
    "cs_rank_labels": ["stage3.label_norm=cs_rank"],
    "alpha158": ["data.alpha158=true"],
    "stage1_score": ["relationships.stage1_score=true"],
}
ABLATION_BASE = ["stage3.models=[gru]", "stage3.feature_sets=[hybrid,own]", "evaluation.seeds=1"]
QUICK = [
    "data.start=2015-01-01",
    "split.train_end=2016-06-30",
    "split.valid_end=2016-12-31",
    "stage1.max_epochs=1",
    "stage3.max_epochs=1",
    "stage3.lookback=20",
    "stage3.feature_sets=[hybrid,own]",
    "evaluation.seeds=1",
]
# The published numbers on this universe and split (their conventions: IC with masked
# stocks zero-filled, no costs, no out-of-fold stacking). StockMixer (AAAI 2024) Table 2.
PUBLISHED = [
    {"model": "LSTM (StockMixer Table 2)", "ic": 0.032, "icir": 0.354},
    {"model": "RSR-I (StockMixer Table 2)", "ic": 0.038, "icir": 0.398},
    {"model": "STHAN-SR (StockMixer Table 2)", "ic": 0.039, "icir": 0.451},
    {"model": "StockMixer (StockMixer Table 2)", "ic": 0.043, "icir": 0.501},
]
COLUMNS = ["model", "ic", "ic_t", "rank_ic", "rank_ic_t", "rank_ic_p", "icir", "rank_icir"]


def measure(tag: str, overrides: list[str], fresh: bool = True) -> dict[str, Any]:
    """One configuration in this process: every pipeline step timed, its peak RSS sampled.

    ``fresh=False`` keeps the data, Stage1, Stage2 and extraction steps of an earlier run of
    this tag (their times come from its run.json) and redoes Stage3, evaluation and report
    with ``overrides`` (which may only change those later steps).
    """
    import shutil

    import psutil

    from relcast.config import load_config
    from relcast.persist import read_json
    from relcast.pipeline import STEPS, Pipeline
    from relcast.runfolder import atomic_write

    cfg = load_config("small", overrides=[*PROTOCOL, *overrides])
    out = RUNS / tag
    if fresh and out.exists():
        shutil.rmtree(out)
    pipe = Pipeline(cfg, out)
    steps = {}
    if not fresh and pipe.done("extract"):
        done = pipe._info()["steps"]
        for step in REUSABLE:
            steps[step] = {"seconds": done[step]["seconds"], "peak_rss_mb": None, "resumed": True}
        atomic_write(out / "config.yaml", cfg.to_yaml().encode())  # the settings now used
    for step in STEPS:
        if step in steps:
            continue
        with PeakRSS() as peak:
            start = time.perf_counter()
            if step == "stage3":
                pipe.stage3(resume=False)
            else:
                getattr(pipe, step)()
            seconds = time.perf_counter() - start
        steps[step] = {"seconds": round(seconds, 1), "peak_rss_mb": round(peak.peak / MB)}
        print(f"[{tag}] {step}: {seconds:.0f}s, peak RSS {peak.peak / MB:.0f} MB", flush=True)
    metrics = read_json(out / "metrics.json")
    health = out / "data_health.json"
    return {
        "tag": tag,
        "overrides": overrides,
        "steps": steps,
        "wall_seconds": round(sum(s["seconds"] for s in steps.values()), 1),
        "peak_rss_mb": round(psutil.Process().memory_info().rss / MB),
        "metrics": metrics,
        "data_health": read_json(health) if health.exists() else None,
        "panel": {"dates": pipe.panel.num_dates, "symbols": pipe.panel.num_symbols},
    }


def table_rows(metrics: dict) -> list[dict]:
    """One flat row per model: the headline signal metrics and their statistics."""
    rows = []
    for name, m in metrics["models"].items():
        row = {"model": name}
        for key in ("ic", "rank_ic", "icir", "rank_icir"):
            row[key] = m.get(key)
        stats = m.get("stats", {})
        for key in ("ic_t", "rank_ic_t", "rank_ic_p"):
            row[key] = stats.get(key, m.get(key))
        for peer in ("lightgbm", "own"):
            paired = stats.get(f"vs_{peer}") or m.get(f"vs_{peer}")
            if paired:
                row[f"vs_{peer}_diff"] = paired.get("mean_diff")
                row[f"vs_{peer}_t"] = paired.get("t")
        top = (m.get("backtest") or {}).get("topk", {})
        if top:
            row["topk_excess_ann"] = top.get("annual_excess_return")
            row["topk_ir"] = top.get("information_ratio")
        rows.append(row)
    return rows


def run(
    quick: bool = False,
    results_dir=None,
    ablations: bool = False,
    resume: bool = False,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """The main configuration (and the ablations), each in a fresh process; write the JSON."""
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: the NASDAQ files live in ../shared/data/")
    runs = {"main": MAIN + (QUICK if quick else []) + (extra or [])}
    if ablations:
        for tag, extra in ABLATIONS.items():
            runs[tag] = ABLATION_BASE + extra + (QUICK if quick else [])
    results = {}
    for tag, overrides in runs.items():
        results[tag] = run_isolated(measure, tag, overrides, not resume, isolate=not quick)
    main = results["main"]
    rows = table_rows(main["metrics"])
    ablation_rows = []
    for tag, got in results.items():
        models = got["metrics"]["models"]
        for name in ("stage1", "hybrid_gru", "stage3_own_gru", "lightgbm"):
            if name in models:
                r = table_rows({"models": {name: models[name]}})[0]
                ablation_rows.append({"variant": tag, **r})
    result = {
        "protocol": PROTOCOL,
        "runs": {
            tag: {k: v for k, v in got.items() if k != "metrics"} for tag, got in results.items()
        },
        "metrics": {tag: got["metrics"] for tag, got in results.items()},
        "rows": rows,
        "ablations": ablation_rows,
        "published": PUBLISHED,
    }
    write_result(NAME, result, results_dir)
    print(f"\n## {NAME}: test 2017, horizon 1 (main run, {main['wall_seconds']:.0f}s)\n")
    print(format_table(rows))
    print()
    print(format_table([{"step": k, **v} for k, v in main["steps"].items()]))
    if ablations:
        print("\n## ablations (one change each, one seed)\n")
        print(format_table(ablation_rows, ["variant", *COLUMNS]))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short span, one epoch (smoke)")
    parser.add_argument("--ablations", action="store_true", help="also the one-change variants")
    parser.add_argument(
        "--resume", action="store_true", help="keep finished data/Stage1/extract steps"
    )
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for the main run")
    args = parser.parse_args(argv)
    run(quick=args.quick, ablations=args.ablations, resume=args.resume, extra=args.set)


if __name__ == "__main__":
    main()
