"""Shared measuring tools: machine info, peak RSS, activation memory, isolation, JSON output.

Every benchmark module has ``run(quick: bool = False) -> dict`` and writes
``benchmarks/results/<name>.json`` with ``machine`` (cpu count, torch threads, versions,
date), ``rows`` (one dict per measured configuration) and ``ratios`` (against the peer
measured in the same run).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: cores, threads, versions, date, load."""
    import numpy
    import pandas
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


class PeakRSS:
    """Peak resident set size above the baseline at entry, sampled in a thread (bytes).

    ``with PeakRSS() as peak: ...; peak.delta`` is the largest ``rss - rss_at_entry`` seen.
    It counts everything the process touched (allocator caches included), so compare
    configurations measured in fresh processes (:func:`run_isolated`).
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.delta = 0
        self.peak = 0

    def __enter__(self) -> PeakRSS:
        import psutil

        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self.delta = self.peak - self.base


@contextmanager
def saved_activation_bytes() -> Iterator[dict[str, int]]:
    """Bytes of the tensors autograd saves for backward inside the block (each storage once).

    This is the activation memory of a training step: what must stay alive between the
    forward and the backward pass. Parameters saved by reference are counted too (small).
    """
    import torch

    seen: set[int] = set()
    out = {"bytes": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen.add(key)
            out["bytes"] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out


def quiet() -> None:
    """Silence Lightning's tips and warnings: the benchmark tables are the output."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _call(fn: Callable[..., dict], args: tuple, kwargs: dict) -> dict:
    import torch

    quiet()
    torch.set_num_threads(kwargs.pop("_threads"))
    return fn(*args, **kwargs)


def run_isolated(fn: Callable[..., dict], *args: Any, isolate: bool = True, **kwargs: Any) -> dict:
    """Run ``fn(*args, **kwargs)`` in a fresh spawned process (clean RSS), return its dict.

    ``isolate=False`` runs it here (quick mode: saves the ~2-5 s start of a process).
    """
    import torch

    if not isolate:
        return fn(*args, **kwargs)
    kwargs["_threads"] = torch.get_num_threads()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_call, fn, args, kwargs).result()


def ratio(a: float, b: float) -> float | None:
    """``a / b`` rounded, or None when undefined."""
    if b is None or a is None or not b:
        return None
    return round(float(a) / float(b), 4)


def write_result(name: str, result: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``result`` (plus machine info) to ``<results_dir>/<name>.json``."""
    results_dir = Path(results_dir or RESULTS_DIR)
    results_dir.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": machine_info(), **result}
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A Markdown table of ``rows`` (numbers rounded to 4 significant digits)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


MB = 1024.0**2
