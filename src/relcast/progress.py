"""Progress that reads in a log: one plain line per step of a long loop when output is a file.

On a terminal Lightning draws its progress bars. A job whose output goes to a file or a pipe
(``relcast run > log 2>&1``, nohup, CI, SLURM) gets the bars' carriage-return redraws, or
nothing at all for loops without a bar, and cannot tell progress from a hang. There, the
trainings print one line per epoch (:mod:`relcast.training.progress_log`) and long passes
over dates print a line at most every :data:`PASS_LINE_SECONDS` (:class:`PassProgress`).

``RELCAST_PROGRESS=log`` (or ``bar``) forces a style whatever the output is.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

PASS_LINE_SECONDS = 30.0
"""A pass (Stage1/Stage3 predict, V3 training) prints its first line after this many seconds
and then at most one line per interval: short passes stay silent."""

STYLES = ("bar", "log")


def progress_style(stream: TextIO | None = None) -> str:
    """``"bar"`` when ``stream`` (default stdout, where Lightning draws) is a terminal, else
    ``"log"``; the environment variable ``RELCAST_PROGRESS`` overrides it."""
    forced = os.environ.get("RELCAST_PROGRESS", "").strip().lower()
    if forced:
        if forced not in STYLES:
            raise ValueError(f"RELCAST_PROGRESS must be one of {STYLES}, got {forced!r}")
        return forced
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


def is_rank_zero() -> bool:
    """True on global rank 0, the one voice of a run (also without a launcher). Read here, not
    from :mod:`relcast.distributed`, which reaches up to the config."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def format_duration(seconds: float) -> str:
    """``"42s"``, ``"12m05s"``, ``"3h07m"``: short and unambiguous in a log line."""
    if seconds != seconds or seconds < 0:  # NaN or negative: unknown
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def log_line(message: str, stream: TextIO | None = None) -> None:
    """Print ``[relcast] message`` and flush (a log must show it now, not at exit)."""
    print(f"[relcast] {message}", file=sys.stdout if stream is None else stream, flush=True)


class PassProgress:
    """Lines for a long loop of ``total`` items: ``label: 1,200/5,000 dates, 35s, ~1m50s left``.

    Silent on a terminal (no bar is drawn where there was none), silent for passes shorter
    than ``every`` seconds, at most one line per ``every`` seconds after that, and a last
    line when a pass that printed anything ends.

    Args:
        label: what runs, e.g. ``"Stage1 predict"``.
        total: items in the pass.
        unit: what an item is (``"dates"``, ``"batches"``, ``"steps"``).
        every: seconds between lines (default :data:`PASS_LINE_SECONDS`).
        enabled: False prints nothing; only global rank 0 prints in any case.
        stream: where to print (default stdout, read at print time).
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "dates",
        every: float | None = None,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, int(total), unit
        self.every = PASS_LINE_SECONDS if every is None else float(every)
        self.stream = stream
        self.enabled = enabled and is_rank_zero() and progress_style(stream) == "log"
        self.start = time.perf_counter()
        self.last_line = self.start
        self.lines = 0

    def update(self, done: int) -> None:
        """``done`` items of ``total`` are finished."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last_line < self.every:
            return
        self.last_line = now
        self._print(done, now)

    def finish(self) -> None:
        """The pass is over: a closing line if it printed any before."""
        if self.enabled and self.lines:
            self._print(self.total, time.perf_counter())

    def _print(self, done: int, now: float) -> None:
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("nan")
        tail = "done" if done >= self.total else f"~{format_duration(left)} left"
        log_line(
            f"{self.label}: {done:,}/{self.total:,} {self.unit}, {format_duration(elapsed)}, "
            f"{tail}",
            self.stream,
        )
        self.lines += 1
