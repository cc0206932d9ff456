"""The order of a run's steps, resume and the DDP policy: prepare -> Stage1 -> Stage2 ->
extract -> Stage3 -> evaluate -> report. Every step saves its artefacts in the run folder and
is skipped on the next call when they exist, so an interrupted run resumes where it stopped.

Run folder (``DIR``)::

    config.yaml                 resolved configuration
    run.json                    format version, steps done, timings
    panel.parquet               the market the run was trained on (and updates append to)
    split.json                  train / valid / test dates (embargo between spans)
    data_health.json            rows the reader masked / repaired, by reason and symbol
    stage1/model.safetensors    Stage1 weights (+ model.json: its config and spec)
    stage2/booster.json         LightGBM residual booster (its text format inside JSON)
    relationships.npz           relationship features [T, N, K], names, fold of each date
    data_with_relationships.parquet   own + relationship + calendar features per (date, symbol)
    stage3/<name>/model.safetensors   one folder per Stage3 model (+ model.json with its spec)
    predictions.parquet         date, symbol, model, horizon, pred, label, q* columns
    backtest.parquet, metrics.json, attention.npz, importance.json, logs/, plots/, report.html
    .relcast.lock               held by the one writing command (relcast.runfolder)

Files are written through :class:`~relcast.runfolder.RunFolder` (atomic, one writer at a
time, recovery after a crash: docs/reliability.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from relcast import distributed
from relcast.run.context import RunContext, log, writes
from relcast.run.steps.evaluate import evaluate
from relcast.run.steps.extract import extract
from relcast.run.steps.prepare import check_resumable, prepare
from relcast.run.steps.report import report
from relcast.run.steps.stage1 import stage1
from relcast.run.steps.stage2 import stage2
from relcast.run.steps.stage3 import stage3


def return_freed_memory() -> None:
    """Give the heap that freed arrays left behind back to the OS (glibc's ``malloc_trim``;
    a no-op elsewhere): without it, a step's freed temporaries stay in the process's RSS and
    the next step's peak stands on them (measured at 1,000 x 100,000: report's peak RSS was
    4.4 GiB after evaluate in the same process, 3.1 GiB in a fresh one)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (AttributeError, OSError, TypeError):
        pass  # not glibc


@dataclass(frozen=True)
class Step:
    """A step of the run: its name (the CLI command and the key in ``run.json``), its
    function, and whether it runs on every rank under torchrun (training steps: data-parallel,
    rank 0 writes) or on rank 0 alone (the others wait, and stop if it fails)."""

    name: str
    run: Callable[..., Any]
    every_rank: bool = False
    help: str = ""


STEPS: tuple[Step, ...] = (
    Step("prepare", prepare, help="load, check and split the data; fit the scalers"),
    Step("stage1", stage1, every_rank=True, help="train the cross-sectional Transformer"),
    Step("stage2", stage2, help="fit the residual booster on Stage1's errors"),
    Step("extract", extract, every_rank=True, help="relationship features, out-of-fold"),
    Step("stage3", stage3, every_rank=True, help="train the temporal models"),
    Step("evaluate", evaluate, help="score every model and the baselines on the test span"),
    Step("report", report, help="report.html and plots"),
)
"""The steps in order: the CLI's commands and the app read this list."""
STEP_NAMES = tuple(s.name for s in STEPS)


def step(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise KeyError(f"no step {name!r}; steps: {', '.join(STEP_NAMES)}")


@writes("run")
def run_steps(ctx: RunContext, *, force: bool = False, steps: Sequence[Step] = STEPS) -> dict:
    """``steps`` (default: every step of :data:`STEPS`) in order on ``ctx``; steps done are
    skipped unless ``force``. Under torchrun/srun: rank 0 reads the run folder, decides and
    writes; every rank trains."""
    distributed.init(ctx.config.trainer.accelerator)
    total = time.perf_counter()
    if not force:
        distributed.on_main("resume", lambda: ctx.done("prepare") and check_resumable(ctx))
    for s in steps:
        # rank 0 reads the run folder and decides; every rank follows the same plan
        skip = distributed.broadcast(not force and distributed.is_main() and ctx.done(s.name))
        if skip:
            if s.name != "prepare":
                log(f"{s.name}: done already, skipped")
            continue
        kwargs = {"resume": not force} if s.name == "stage3" else {}
        if s.every_rank:  # data-parallel on every rank, rank 0 writes
            s.run(ctx, **kwargs)
            distributed.barrier()  # the step's files are written before anyone reads them
        else:
            distributed.on_main(s.name, lambda s=s, kw=kwargs: s.run(ctx, **kw))
        return_freed_memory()  # one step's temporaries do not raise the next step's RSS
    log(f"run finished in {time.perf_counter() - total:.0f}s -> {ctx.dir}")
    return ctx.folder.load_metrics() if ctx.folder.has("metrics.json") else {}
