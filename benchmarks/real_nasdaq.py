"""The whole pipeline on the field's real relational-ranking universe: 1,026 NASDAQ stocks.

Data: ``../shared/data/rsr_nasdaq`` (RSR 2019 / StockMixer 2024's raw Google Finance files,
read as they are by :func:`relcast.read_panel`; never copied into the project). Protocol of
the published numbers: train 2013-01-02..2015-12-31 (the files start 2012-11-19: those
dates are warm-up), valid 2016, test 2017, next-day label (``data.label_delay=0``,
``data.horizons=1``), the small preset, top-5 portfolios (StockMixer reports top-5) and
the TopkDropout backtest with 5/15 bp costs.

``python -m benchmarks.real_nasdaq`` (``make bench-real``) runs the main configuration
(Stage3 GRU on hybrid and own inputs, 3 seeds each) in a fresh process, step by
step, and writes ``benchmarks/results/real_nasdaq.json``: every metric row of the run
(with the Newey-West statistics and paired tests the evaluation computes), wall time and
peak RSS of each step. ``--ablations`` adds one-seed variants (extractor, out-of-fold,
Stage1 loss, label normalisation, Alpha158 features, Stage1 score stacking) that each
change one setting, scored with the same statistics; each starts from a copy of the main
run's folder for the steps its change leaves untouched (the same Stage1 weights), so it
costs only what it changes. ``--only TAG ...`` runs some ablations alone (``--wait`` polls
a main run still in progress), ``--collect`` assembles the JSON from the run folders.
Settings are chosen on the validation year (``val_rank_ic`` in the ablation table) only.
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
# stocks, the design's "original approach") has its own run (`--only rawconcat`)
MAIN = [
    "stage3.models=[gru]",
    "stage3.feature_sets=[hybrid,own]",
    "evaluation.seeds=3",
    "stage3.max_epochs=8",
]
# steps that --resume takes from an earlier run of the same tag when they are done
REUSABLE = ("prepare", "stage1", "stage2", "extract")
# one change each against the main configuration's hybrid/own GRU (one seed), with the steps
# it leaves untouched: those are copied from the main run instead of being trained again
# (the same Stage1 weights, so the ablation compares only what it changes)
ABLATIONS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "stage1_score": (["relationships.stage1_score=true"], ("prepare", "stage1", "stage2")),
    "cs_rank_labels": (["stage3.label_norm=cs_rank"], REUSABLE),
    "no_oof": (["relationships.oof_folds=0"], ("prepare", "stage1", "stage2")),
    "v1+v2": (["relationships.extractor=v1+v2"], ("prepare", "stage1", "stage2")),
    "alpha158": (["data.alpha158=true"], ()),
    "stage1_listnet": (["stage1.loss=listnet"], ("prepare",)),
    "v3": (["relationships.extractor=v3"], ("prepare", "stage1", "stage2")),
    "stage1_mse": (["stage1.loss=mse"], ("prepare",)),
    "tft": (["stage3.models=[tft]"], REUSABLE),  # the design's Stage3 model, same inputs
    # the other stocks' own indicators averaged along Stage1's attention (RSR-style edges)
    "neighbours": (["relationships.neighbours=true"], ("prepare", "stage1", "stage2")),
    # the design's "original approach" against own history (each date's block projected once)
    "rawconcat": (["stage3.feature_sets=[own,rawconcat]"], REUSABLE),
    # the two changes that raised validation rank IC, together (Stage3 on stage1_score's store)
    "stage1_score+cs_rank": (
        ["relationships.stage1_score=true", "stage3.label_norm=cs_rank"],
        REUSABLE,
    ),
}
# ablations that start from another ablation's run folder instead of the main run's
BASE_TAG = {"stage1_score+cs_rank": "stage1_score"}
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


def start_from(base: Path, out: Path, steps: tuple[str, ...], wait: float = 0.0) -> None:
    """Start the run folder ``out`` from the finished ``steps`` of the run folder ``base``.

    Copies ``base`` without its Stage3 models and logs and keeps only ``steps`` in the copy's
    run.json, so the pipeline redoes every later step. ``wait`` > 0 polls ``base`` (a run in
    progress in another process) until those steps are done.
    """
    import shutil

    from relcast.runfolder import read_json
    from relcast.runfolder.formats import write_json

    while True:
        done = read_json(base / "run.json")["steps"] if (base / "run.json").exists() else {}
        if all(step in done for step in steps):
            break
        if wait <= 0:
            raise SystemExit(f"{base}: steps {steps} not all done (has {sorted(done)})")
        time.sleep(wait)
    time.sleep(1)  # the step's files are written before run.json marks it done
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("stage3", "logs", "*.tmp*"))
    info = read_json(out / "run.json")
    info["steps"] = {step: info["steps"][step] for step in steps}
    write_json(out / "run.json", info)


def measure(
    tag: str,
    overrides: list[str],
    fresh: bool = True,
    base: str | None = None,
    reuse: tuple[str, ...] = (),
    wait: float = 0.0,
    until: str | None = None,
) -> dict[str, Any] | None:
    """One configuration in this process: every pipeline step timed, its peak RSS sampled.

    ``fresh=False`` keeps the steps of an earlier run of this tag that are done (among
    :data:`REUSABLE`; their times come from its run.json) and the Stage3 models already
    saved (so ``evaluation.seeds`` can be raised), and redoes the others with ``overrides``
    (which may only change those later steps). ``base`` (a run folder) with
    ``reuse`` starts from that run's finished ``reuse`` steps instead (:func:`start_from`).
    ``until`` stops after that step (a base for the ablations; nothing is scored).
    """
    import shutil

    import psutil

    from relcast.config import load_config
    from relcast.run.pipeline import STEP_NAMES
    from relcast.run.runner import Pipeline
    from relcast.runfolder import atomic_write, read_json
    from relcast.runfolder.formats import write_json

    cfg = load_config("small", overrides=[*PROTOCOL, *overrides])
    out = RUNS / tag
    if base is not None and reuse:
        start_from(Path(base), out, reuse, wait)
        fresh = False
    elif fresh and out.exists():
        shutil.rmtree(out)
    pipe = Pipeline(cfg, out)
    steps = {}
    if not fresh and pipe.ctx.done("prepare"):
        done = pipe.ctx.info()["steps"]
        for step in REUSABLE:
            if step not in done:
                break
            steps[step] = {"seconds": done[step]["seconds"], "peak_rss_mb": None, "resumed": True}
        atomic_write(out / "config.yaml", cfg.to_yaml().encode())  # the settings now used
    for step in STEP_NAMES:
        if step in steps:
            continue
        with PeakRSS() as peak:
            start = time.perf_counter()
            if step == "stage3":  # resuming keeps the Stage3 models (seeds) already saved
                pipe.step("stage3", resume=not fresh and base is None)
            else:
                pipe.step(step)
            seconds = time.perf_counter() - start
        steps[step] = {"seconds": round(seconds, 1), "peak_rss_mb": round(peak.peak / MB)}
        if step == "stage3":  # training time of every model, those kept by a resume included
            models = pipe.ctx.info()["steps"]["stage3"]["models"].values()
            total = sum(m["seconds_per_epoch"] * m["epochs"] for m in models)
            steps[step]["training_seconds_all_models"] = round(total, 1)
        print(f"[{tag}] {step}: {seconds:.0f}s, peak RSS {peak.peak / MB:.0f} MB", flush=True)
        if step == until:
            return None
    metrics = read_json(out / "metrics.json")
    health = out / "data_health.json"
    info = pipe.ctx.info()["steps"]
    got = {
        "tag": tag,
        "overrides": overrides,
        "reused_from": str(base) if base is not None else None,
        "steps": steps,
        "wall_seconds": round(sum(s["seconds"] for s in steps.values()), 1),
        "peak_rss_mb": round(psutil.Process().memory_info().rss / MB),
        "validation": validation(info),
        "metrics": metrics,
        "data_health": read_json(health) if health.exists() else None,
        "panel": {"dates": pipe.ctx.panel.num_dates, "symbols": pipe.ctx.panel.num_symbols},
    }
    write_json(out / "bench.json", got)  # --collect assembles the JSON from these
    return got


def validation(steps: dict) -> dict[str, float]:
    """Validation-year rank IC of each trained model (what settings are chosen on)."""
    val = {"stage1": steps.get("stage1", {}).get("best_val_rank_ic")}
    stage2 = steps.get("stage2", {})
    for name in ("stage1", "stage1+stage2"):
        if isinstance(stage2.get(name), dict):
            val[f"{name} (stage2 valid)"] = stage2[name].get("rank_ic")
    for name, model in steps.get("stage3", {}).get("models", {}).items():
        val[name] = model.get("best_val_rank_ic")
    return val


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
    ablations: bool | list[str] = False,
    resume: bool = False,
    extra: list[str] | None = None,
    base: Path | None = None,
    wait: float = 0.0,
    main_run: bool = True,
    until: str | None = None,
) -> dict[str, Any] | None:
    """The main configuration and the ablations, each in a fresh process; write the JSON.

    ``ablations`` is True (all) or a list of tags; they start from the main run's folder
    (``base``, default ``runs/real_nasdaq/main``) for the steps they do not change.
    ``main_run=False`` runs only the ablations; ``until`` runs the main configuration only
    through that step (the base the ablations start from) and scores nothing. Every run
    leaves ``bench.json`` in its folder and the JSON is assembled from all of them
    (:func:`collect`), so runs made by separate commands (for example one per core) end up in
    one result.
    """
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: the NASDAQ files live in ../shared/data/")
    base = Path(base or RUNS / "main")
    if main_run:
        overrides = MAIN + (QUICK if quick else []) + (extra or [])
        run_isolated(measure, "main", overrides, not resume, isolate=not quick, until=until)
        if until:
            return None
    tags = list(ABLATIONS) if ablations is True else list(ablations or [])
    for tag in tags:
        change, reuse = ABLATIONS[tag]
        start = base.parent / BASE_TAG[tag] if tag in BASE_TAG else base
        overrides = ABLATION_BASE + change + (QUICK if quick else [])
        run_isolated(
            measure, tag, overrides, base=str(start), reuse=reuse, wait=wait, isolate=not quick
        )
    return collect(results_dir)


def same_protocol(a: list[str], b: list[str]) -> bool:
    """The same settings, wherever the clone (and so the data path) lay."""
    return [x for x in a if not x.startswith("data.source=")] == [
        x for x in b if not x.startswith("data.source=")
    ]


def collect(results_dir=None) -> dict[str, Any]:
    """Assemble ``real_nasdaq.json`` from the ``bench.json`` of every run under ``runs/``.

    A run whose folder is gone (or was started again only as a base, without scoring) keeps
    the figures the JSON already holds for it, marked ``"from_earlier_json": true``.
    """
    import json

    from benchmarks.common import RESULTS_DIR
    from relcast.runfolder import read_json

    results = {p.parent.name: read_json(p) for p in sorted(RUNS.glob("*/bench.json"))}
    earlier = Path(results_dir or RESULTS_DIR) / f"{NAME}.json"
    if earlier.exists():
        old = json.loads(earlier.read_text())
        if same_protocol(old.get("protocol", []), PROTOCOL):
            for tag, got in old.get("runs", {}).items():
                if tag not in results and tag in old.get("metrics", {}):
                    kept = {**got, "metrics": old["metrics"][tag], "from_earlier_json": True}
                    results[tag] = kept
    if "main" not in results:
        raise SystemExit(f"no main run under {RUNS}: run `python -m benchmarks.{NAME}` first")
    main = results.pop("main")
    results = {"main": main, **{t: results[t] for t in ABLATIONS if t in results}}
    rows = table_rows(main["metrics"])
    ablation_rows = []
    for tag, got in results.items():
        models = got["metrics"]["models"]
        val = got.get("validation", {})
        for name in ("stage1", "hybrid_gru", "stage3_own_gru", "stage3_rawconcat_gru",
                     "hybrid_tft", "stage3_own_tft", "lightgbm"):  # fmt: skip
            if name in models:
                r = table_rows({"models": {name: models[name]}})[0]
                ablation_rows.append({"variant": tag, "val_rank_ic": val.get(name), **r})
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
    if len(results) > 1:
        print("\n## ablations (one change each, one seed; val = validation-year rank IC)\n")
        print(format_table(ablation_rows, ["variant", "val_rank_ic", *COLUMNS]))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short span, one epoch (smoke)")
    parser.add_argument("--ablations", action="store_true", help="also the one-change variants")
    parser.add_argument(
        "--only", nargs="+", choices=list(ABLATIONS), help="only these ablations (no main run)"
    )
    parser.add_argument("--base", type=Path, help="main run folder the ablations start from")
    parser.add_argument(
        "--wait", type=float, default=0.0, help="poll the base run every this many seconds"
    )
    parser.add_argument("--collect", action="store_true", help="only assemble the JSON")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep finished data/Stage1/extract steps and saved Stage3 models",
    )
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for the main run")
    parser.add_argument(
        "--until",
        choices=["prepare", "stage1", "stage2", "extract"],
        help="run the main configuration only through this step (a base for --only)",
    )
    args = parser.parse_args(argv)
    if args.collect:
        collect()
        return
    run(
        quick=args.quick,
        ablations=args.only or args.ablations,
        resume=args.resume,
        extra=args.set,
        base=args.base,
        wait=args.wait,
        main_run=not args.only,
        until=args.until,
    )


if __name__ == "__main__":
    main()
