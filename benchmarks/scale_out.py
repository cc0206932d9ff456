"""The whole `relcast run` in 1 process and under `torchrun --nproc_per_node=2`: wall time and
peak RSS of every rank, on the same small synthetic market (issue 16).

    python -m benchmarks.scale_out            # 40 stocks x 700 days, small preset, few epochs
    python -m benchmarks.scale_out --quick    # 6 stocks x 262 days, tiny models (~1 min)

Each run is a subprocess (``torchrun`` for 2 processes, launched from the repository root);
every rank records its own peak RSS (``ru_maxrss``) at exit through this module's ``--child``
mode, so the figure is per process, not the sum. Results in
``benchmarks/results/scale_out.json``. The memory-mapped run at 1,000 stocks x 100,000
minute bars needs the pipeline's ``data.store: memmap`` to build features chunk by chunk,
which it does not yet: the result says so instead of a number
(``benchmarks/scale_large.py --memmap`` measures Stage3 alone from a store).
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


def run(quick: bool = False) -> dict:
    sets = [*(TINY if quick else SMALL), "trainer.progress=false", "trainer.accelerator=cpu"]
    with tempfile.TemporaryDirectory(prefix="relcast-scale-out-") as tmp:
        rows = [run_once(n, sets, Path(tmp)) for n in (1, 2)]
    one, two = rows
    result = {
        "quick": quick,
        "market": [s for s in sets if s.startswith("data.")],
        "rows": rows,
        "ratios": {"wall_2_over_1": ratio(two["wall_seconds"], one["wall_seconds"])},
        "memmap_1000x100000": {
            "measured": False,
            "why": "data.store: memmap reads every step from the store, but prepare still "
            "builds the features in memory and Stage3 assembles its inputs in memory "
            "(docs/scaling.md): a 1,000 x 100,000 run would not fit, so it is not run",
        },
        "load_average_before": os.getloadavg(),
    }
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
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--quick", action="store_true", help="tiny market and models")
        run(quick=parser.parse_args().quick)
