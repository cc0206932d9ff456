"""The whole `relcast run` in 1 process and under `torchrun --nproc_per_node=2`: wall time and
peak RSS of every rank, on the same small synthetic market (issue 16).

    python -m benchmarks.scale_out            # 40 stocks x 700 days, small preset, few epochs
    python -m benchmarks.scale_out --quick    # 6 stocks x 262 days, tiny models (~1 min)

Each run is a subprocess (``torchrun`` for 2 processes, launched from the repository root);
every rank records its own peak RSS (``ru_maxrss``) at exit through this module's ``--child``
mode, so the figure is per process, not the sum. Results in
``benchmarks/results/scale_out.json``.

**Memory-mapped run** (``--memmap``): the whole pipeline (prepare, stage1, stage2, extract,
stage3, evaluate, report: ``Pipeline.run``, what ``relcast run`` calls) with
``data.store=memmap`` on a synthetic market of S stocks x T bars, in a fresh process that
samples its own ``/proc/self/status`` (VmRSS, RssAnon, RssFile) every 0.1 s and reports the
peak of each per step, plus the process's ``ru_maxrss``. Training is bounded so the run
measures memory, not days of CPU (``MEMMAP_SETS``): a tiny Stage1 (d_model 16, 1 layer) for
one epoch, no out-of-fold models (``relationships.oof_folds=0``), Stage2 off, one GRU (hidden
8, lookback 16) for one epoch, LightGBM baselines on ``baselines.max_rows`` rows::

    python -m benchmarks.scale_out --memmap --stocks 1000 --bars 10000
    python -m benchmarks.scale_out --memmap --stocks 1000 --bars 100000 \
        --set data.synthetic_freq=1min --set relationships.table=false --out runs/mm100k

The issue's size, 1,000 stocks x 100,000 minute bars, needs ~65 GB of disk (the store keeps
the features twice, 17.6 GB each, Stage3's hybrid inputs another ~19 GB while it runs);
``relationships.table=false`` leaves out data_with_relationships.parquet (21 GB more).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import format_table, ratio, write_result

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "data.synthetic_stocks=6", "data.synthetic_days=262", "data.horizons=2",
    "stage1.d_model=16", "stage1.num_heads=2", "stage1.num_layers=1",
    "stage1.relationship_dim=4", "stage1.max_epochs=1", "stage1.batch_dates=16",
    "stage2.n_estimators=20", "relationships.oof_folds=2", "stage3.models=[gru]",
    "stage3.feature_sets=[hybrid]", "stage3.hidden_size=8", "stage3.lookback=8",
    "stage3.max_epochs=1", "stage3.batch_size=256", "evaluation.topk=2",
]  # fmt: skip
SMALL = [
    "data.synthetic_stocks=40", "data.synthetic_days=700", "stage1.max_epochs=3",
    "stage3.models=[gru]", "stage3.feature_sets=[hybrid]", "stage3.max_epochs=3",
    "evaluation.topk=10",
]  # fmt: skip


MEMMAP_SETS = [
    "data.source=synthetic", "data.store=memmap", "data.horizons=1",
    "stage1.d_model=16", "stage1.num_heads=2", "stage1.num_layers=1", "stage1.dropout=0",
    "stage1.relationship_dim=4", "stage1.max_epochs=1", "stage1.batch_dates=32",
    "stage2.enabled=false", "relationships.oof_folds=0", "stage3.models=[gru]",
    "stage3.feature_sets=[hybrid,own]", "stage3.hidden_size=8", "stage3.lookback=16",
    "stage3.max_epochs=1", "stage3.batch_size=8192", "baselines.n_estimators=50",
    "baselines.max_rows=200000", "evaluation.topk=50", "trainer.progress=false",
    "trainer.accelerator=cpu",
]  # fmt: skip


def _status() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process, KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1])
    return out


def _memmap_child(argv: list[str]) -> None:
    """One memory-mapped run in this process; per-step peaks of RSS to ``argv[0]`` (JSON)."""
    import threading
    from dataclasses import replace

    from relcast.config import load_config
    from relcast.run import pipeline as run_pipeline
    from relcast.run.pipeline import STEP_NAMES
    from relcast.run.runner import Pipeline

    result_path, out, sets = Path(argv[0]), Path(argv[1]), argv[2:]
    resume = bool(sets) and sets[0] == "--resume"  # steps already done in ``out`` are kept
    sets = sets[1:] if resume else sets
    steps: dict[str, dict] = {}
    current = {"step": "start"}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            row = steps.setdefault(current["step"], {})
            for key, kib in _status().items():
                row[key] = max(row.get(key, 0), kib)

    def timed(name: str, method):
        def run(*args, **kwargs):
            current["step"] = name
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                steps.setdefault(name, {})["seconds"] = round(time.perf_counter() - start, 1)
                steps[name]["ru_maxrss_gib_after"] = round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3
                )
                current["step"] = "between"

        return run

    run_pipeline.STEPS = tuple(replace(s, run=timed(s.name, s.run)) for s in run_pipeline.STEPS)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    pipe = Pipeline(load_config(None, None, sets, {}), out)
    pipe.run(force=not resume)
    stop.set()
    thread.join()
    info = json.loads((out / "run.json").read_text())["steps"]
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    store = sum(f.stat().st_size for f in (out / "feature_store").glob("*.npy"))
    gib = 2**20  # KiB per GiB
    rows = {
        step: {
            "seconds": v.get("seconds"),
            "peak_rss_gib": round(v.get("VmRSS", 0) / gib, 3),
            "peak_anon_gib": round(v.get("RssAnon", 0) / gib, 3),
            "peak_file_gib": round(v.get("RssFile", 0) / gib, 3),
            "ru_maxrss_gib_after": v.get("ru_maxrss_gib_after"),
        }
        for step, v in steps.items()
        if step in STEP_NAMES
    }
    T = info["prepare"]["dates"]
    result = {
        "steps": rows,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "ru_maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / gib, 3),
        "dates": T,
        "symbols": info["prepare"]["symbols"],
        "feature_store_gib": round(store / 2**30, 3),
        "extract_dates_per_second": (
            round(T / max(rows["extract"]["seconds"], 1e-9), 1) if "extract" in rows else None
        ),
        "rank_ic": {k: v.get("rank_ic") for k, v in metrics.items()},
    }
    result_path.write_text(json.dumps(result, indent=1))


def memmap_run(
    stocks: int, bars: int, extra: list[str] | None = None, out: Path | None = None,
    resume: bool = False,
) -> dict:  # fmt: skip
    """The whole memory-mapped run in a fresh process: per-step peak RSS (see the docstring).
    ``out``: the run folder (kept; a temporary one otherwise); ``resume``: keep its finished
    steps (their figures are then not in the result)."""
    sets = [*MEMMAP_SETS, f"data.synthetic_stocks={stocks}", f"data.synthetic_days={bars}"]
    sets += list(extra or [])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, capture_output=True
    ).stdout.strip()  # fmt: skip  (at the start)
    with tempfile.TemporaryDirectory(prefix="relcast-memmap-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.scale_out", "--memmap-child", str(result_path),
               str(out or Path(tmp) / "run"), *(["--resume"] if resume else []), *sets]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memmap run failed:\n{proc.stderr[-4000:]}")
        result = json.loads(result_path.read_text())
    result.update(stocks=stocks, bars=bars, settings=sets, load_average_before=os.getloadavg(),
                  commit=commit or None)  # fmt: skip
    result["process_wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


def save_memmap(result: dict) -> Path:
    """Add the run to ``scale_out.json`` under ``memmap_runs`` as ``<stocks>x<bars>@<commit>``
    (the commit it was measured at), keeping every other key of the file (earlier runs)."""
    path = ROOT / "benchmarks" / "results" / "scale_out.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    runs = data.setdefault("memmap_runs", {})
    key = f"{result['stocks']}x{result['bars']}"
    runs[f"{key}@{result['commit']}" if result.get("commit") else key] = result
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _child(argv: list[str]) -> None:
    """One rank: run ``relcast`` and write this process's peak RSS to ``LOG/rank<R>.json``."""
    log = Path(argv[0])
    rank = os.environ.get("RANK", "0")
    start = time.perf_counter()

    def save() -> None:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        log.mkdir(parents=True, exist_ok=True)
        row = {"rank": int(rank), "peak_rss_gib": peak_kib / 2**20,
               "seconds": time.perf_counter() - start}  # fmt: skip
        (log / f"rank{rank}.json").write_text(json.dumps(row))

    atexit.register(save)
    sys.argv = ["relcast", *argv[1:]]
    runpy.run_module("relcast", run_name="__main__", alter_sys=True)


def run_once(processes: int, sets: list[str], work: Path) -> dict:
    """Wall time of the whole command and each rank's peak RSS."""
    out, log = work / f"run_{processes}", work / f"rss_{processes}"
    args = ["-m", "benchmarks.scale_out", "--child", str(log), "run", "--data", "synthetic",
            "--out", str(out), *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", *args]  # fmt: skip
    else:
        cmd = [sys.executable, *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{proc.stderr[-4000:]}")
    ranks = sorted((json.loads(p.read_text()) for p in log.glob("rank*.json")),
                   key=lambda r: r["rank"])  # fmt: skip
    steps = json.loads((out / "run.json").read_text())["steps"]
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    return {
        "processes": processes,
        "wall_seconds": round(wall, 1),
        "peak_rss_gib_per_rank": [round(r["peak_rss_gib"], 3) for r in ranks],
        "step_seconds": {k: v.get("seconds") for k, v in steps.items()},
        "hybrid_gru_rank_ic": metrics.get("hybrid_gru", {}).get("rank_ic"),
    }


def run(quick: bool = False, extra: list[str] | None = None) -> dict:
    """1 vs 2 processes; ``extra`` overrides (e.g. a larger market) are measured apart and
    kept in the JSON under ``market_runs``, next to the default market's rows."""
    sets = [*(TINY if quick else SMALL), "trainer.progress=false", "trainer.accelerator=cpu"]
    sets += list(extra or [])
    with tempfile.TemporaryDirectory(prefix="relcast-scale-out-") as tmp:
        rows = [run_once(n, sets, Path(tmp)) for n in (1, 2)]
    one, two = rows
    result = {
        "quick": quick,
        "market": [s for s in sets if s.startswith("data.")],
        "rows": rows,
        "ratios": {"wall_2_over_1": ratio(two["wall_seconds"], one["wall_seconds"])},
        "load_average_before": os.getloadavg(),
    }
    previous = ROOT / "benchmarks" / "results" / "scale_out.json"
    old = json.loads(previous.read_text()) if previous.exists() else {}
    # the size, measured apart (`--memmap --stocks 1000 --bars 100000`): its newest run
    big = sorted(k for k in old.get("memmap_runs", {}) if k.startswith("1000x100000"))
    result["memmap_1000x100000"] = (
        {"measured": True, "run": big[-1]} if big else {
            "measured": False,
            "how": "python -m benchmarks.scale_out --memmap --stocks 1000 --bars 100000 "
            "--set data.synthetic_freq=1min --set relationships.table=false",
        }
    )  # fmt: skip
    if extra:  # another market: kept apart, the default market's rows stay as they were
        runs = old.get("market_runs", {})
        runs[" ".join(extra)] = {k: result[k] for k in ("market", "rows", "ratios")}
        result = {**{k: v for k, v in old.items() if k not in ("benchmark", "machine")},
                  "market_runs": runs}  # fmt: skip
    for key in ("memmap_runs", "market_runs"):  # measured apart (--memmap, --set): keep them
        if old.get(key) and key not in result:
            result[key] = old[key]
    path = write_result("scale_out", result)
    print(format_table([{k: v for k, v in r.items() if k != "step_seconds"} for r in rows]))
    print(f"-> {path}")
    return result


def main(quick: bool = False) -> dict:
    """Entry point for ``benchmarks.run_all``."""
    return run(quick=quick)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--memmap-child":
        _memmap_child(sys.argv[2:])
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--quick", action="store_true", help="tiny market and models")
        parser.add_argument("--memmap", action="store_true", help="the memory-mapped run only")
        parser.add_argument("--stocks", type=int, default=1000)
        parser.add_argument("--bars", type=int, default=10_000)
        parser.add_argument("--set", action="append", default=[], help="extra config override")
        parser.add_argument("--out", type=Path, help="--memmap: keep the run folder here")
        parser.add_argument("--resume", action="store_true", help="--memmap: resume --out")
        args = parser.parse_args()
        if args.memmap:
            found = memmap_run(args.stocks, args.bars, args.set, args.out, args.resume)
            keys = ("steps", "ru_maxrss_gib", "wall_seconds", "extract_dates_per_second")
            print(json.dumps({k: found[k] for k in keys}, indent=1))
            print(f"-> {save_memmap(found)}")
        else:
            run(quick=args.quick, extra=args.set)
