"""Shared test settings and fixtures.

Tests run two workers on two cores, so one thread each. :func:`make_market` is the one
recipe for "a tiny synthetic market ready for the stages" that several test files used to
write out by hand.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass


@dataclass(frozen=True)
class TinyMarket:
    """A synthetic market and what every stage reads from it (treat as read-only: shared)."""

    panel: object  # relcast.data.panel.Panel
    truth: object  # the planted structure (relcast.data.synthetic)
    split: object  # chronological, embargo = horizons
    features: object  # FeatureSet, index statistics fitted on the training span
    labels: np.ndarray  # forward returns [T, N, horizons]
    horizons: int


@functools.lru_cache(maxsize=8)
def _tiny_market(
    num_stocks: int, num_days: int, seed: int, horizons: int, **synthetic: float
) -> TinyMarket:
    from relcast.data.synthetic import synthetic_market
    from relcast.features.build import build_features
    from relcast.features.labels import forward_returns
    from relcast.features.splits import chronological_split

    panel, truth = synthetic_market(
        num_stocks=num_stocks, num_days=num_days, seed=seed, **synthetic
    )
    split = chronological_split(panel.dates, embargo=horizons)
    features = build_features(panel, train_end=int(split.train[-1]))
    labels = forward_returns(panel, horizons)
    return TinyMarket(panel, truth, split, features, labels, horizons)


@pytest.fixture(scope="session")
def make_market():
    """``make_market(num_stocks, num_days, seed, horizons, **synthetic_market_kwargs)``:
    a :class:`TinyMarket`, built once per arguments in a test process."""
    return _tiny_market


# The tiny end-to-end run shared by the CLI, run-folder and user-error tests: every stage,
# models small enough that a whole `relcast run` takes seconds. Later --set items win.
TINY_RUN = [
    "data.horizons=2",
    "stage1.d_model=16",
    "stage1.num_heads=2",
    "stage1.num_layers=1",
    "stage1.relationship_dim=4",
    "stage1.max_epochs=2",
    "stage1.batch_dates=16",
    "stage2.n_estimators=20",
    "relationships.oof_folds=2",
    "stage3.models=[gru]",
    "stage3.feature_sets=[hybrid,own]",
    "stage3.hidden_size=8",
    "stage3.gru.num_layers=1",
    "stage3.lookback=8",
    "stage3.max_epochs=1",
    "stage3.batch_size=256",
    "evaluation.topk=2",
    "trainer.progress=false",
    "trainer.accelerator=cpu",
]


def hold_lock(folder, command: str, env: dict | None = None):
    """A process that takes ``folder``'s lock for ``command`` and sleeps (a long-running
    writer); returns once it holds the lock. Kill it when done."""
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from relcast.runfolder import RunFolder\n"
        f"held = RunFolder(sys.argv[1]).lock({command!r})\n"
        "held.__enter__()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env={**base, **(env or {})},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def cli_sets(extra=()) -> list[str]:
    """``--set`` arguments for :data:`TINY_RUN` followed by ``extra`` overrides."""
    return [arg for item in [*TINY_RUN, *extra] for arg in ("--set", item)]


def interrupt_update(work, data, monkeypatch) -> None:
    """An update that dies after its journal, during the renames."""
    import os

    from relcast.run.inference import update_run
    from relcast.runfolder import JOURNAL

    real = os.replace
    calls = {"n": 0}

    def crash_on_second_rename(src, dst):
        if str(src).endswith(".update"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError("killed during the renames")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second_rename)
    with pytest.raises(OSError, match="killed"):
        update_run(work, str(data))
    monkeypatch.undo()
    assert (work / JOURNAL).exists()
