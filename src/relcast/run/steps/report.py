"""report: ``report.html`` and ``plots/`` from the files evaluate wrote (rank 0)."""

from __future__ import annotations

import time
from pathlib import Path

from relcast.run.context import RunContext, writes


@writes("report")
def report(ctx: RunContext) -> Path:
    from relcast.evaluation.report import build_report

    start = time.perf_counter()
    path = build_report(ctx.dir)
    ctx.mark("report", time.perf_counter() - start)
    return path
