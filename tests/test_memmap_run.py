"""`data.store: memmap`: the run folder's memory-mapped feature store is what every step reads,
and the run's predictions equal the in-memory run's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relcast.config import load_config
from relcast.pipeline import FEATURE_STORE, Pipeline

SETS = [
    "data.source=synthetic", "data.synthetic_stocks=6", "data.synthetic_days=262",
    "data.horizons=2", "stage1.d_model=16", "stage1.num_heads=2", "stage1.num_layers=1",
    "stage1.relationship_dim=4", "stage1.max_epochs=1", "stage1.batch_dates=16",
    "stage2.n_estimators=20", "relationships.oof_folds=2", "stage3.models=[gru]",
    "stage3.feature_sets=[hybrid,own]", "stage3.hidden_size=8", "stage3.lookback=8",
    "stage3.max_epochs=1", "stage3.batch_size=256", "evaluation.topk=2",
    "trainer.progress=false", "trainer.accelerator=cpu",
]  # fmt: skip


def _memmapped(array: np.ndarray) -> bool:
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base
    return False


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("memmap_run")
    out = {}
    for store in ("memory", "memmap"):
        config = load_config(None, None, [*SETS, f"data.store={store}"], {})
        Pipeline(config, root / store).run()
        out[store] = root / store
    return out


def test_memmap_store_is_what_the_steps_read(runs):
    assert not (runs["memory"] / FEATURE_STORE).exists()
    assert (runs["memmap"] / FEATURE_STORE / "meta.json").exists()
    pipe = Pipeline.open(runs["memmap"])
    assert _memmapped(pipe.features.values) and _memmapped(pipe.labels)
    memory = Pipeline.open(runs["memory"])
    assert not _memmapped(memory.features.values)
    # the store holds the run's features (NaN where masked) and labels, not an approximation
    ok = memory.features.mask
    np.testing.assert_array_equal(pipe.features.mask, ok)
    np.testing.assert_array_equal(pipe.features.values[ok], memory.features.values[ok])
    np.testing.assert_array_equal(pipe.labels, memory.labels)


def test_memmap_run_predicts_as_the_in_memory_run(runs):
    keys = ["date", "symbol", "model", "horizon"]
    a = pd.read_parquet(runs["memory"] / "predictions.parquet").sort_values(keys)
    b = pd.read_parquet(runs["memmap"] / "predictions.parquet").sort_values(keys)
    assert len(a) == len(b) > 0 and set(a["model"]) >= {"stage1", "hybrid_gru", "stage3_own_gru"}
    assert (a[keys].to_numpy() == b[keys].to_numpy()).all()
    np.testing.assert_allclose(b["pred"].to_numpy(), a["pred"].to_numpy(), rtol=0, atol=1e-6)
