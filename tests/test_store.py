"""The memory-mapped feature store: chunked building, zero-copy loaders, same training results.

The large-scale memory measurement (1,000 stocks x 100,000 minute bars x 30 features) runs
in ``benchmarks/scale_large.py --memmap``; the slow test here runs the same code at a size
that takes a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import relcast
from relcast.features.build import build_features
from relcast.features.labels import forward_returns, normalize_labels_cross_section
from relcast.features.splits import chronological_split
from relcast.models.cross_sectional import Stage1Config
from relcast.store.memmap import MemmapFeatureStore, build_feature_store
from relcast.store.settings import StoreSettings
from relcast.store.sources import panel_slices
from relcast.training.common import release_pages_callback
from relcast.training.cross_section_data import CrossSectionDataset
from relcast.training.loader import Batching, WindowLoader, WindowSource
from relcast.training.specs import Stage1Spec, Stage3Spec, TrainerSpec
from relcast.training.stage1 import fit_stage1
from relcast.training.stage3 import fit_stage3
from relcast.training.stage3_inputs import assemble_inputs, store_inputs

H = 3
TRAIN_END = 400
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def market():
    panel, _ = relcast.synthetic_market(
        num_stocks=10, num_days=700, seed=2, missing_prob=0.02, late_listing=2
    )
    return panel, build_features(panel, train_end=TRAIN_END), forward_returns(panel, H)


@pytest.fixture(scope="module")
def store(market, tmp_path_factory):
    panel, _, _ = market
    requests = []

    def source(start, stop):  # the builder never asks for more than a chunk + history
        requests.append((start, stop))
        return panel_slices(panel)(start, stop)

    folder = tmp_path_factory.mktemp("store") / "features"
    built = build_feature_store(
        folder, source, panel.dates, StoreSettings(horizons=H, train_end=TRAIN_END),
        chunk_dates=97, overlap=300,
    )  # fmt: skip
    built.requests = requests
    return built


def test_chunked_build_equals_in_memory_features(market, store):
    panel, features, labels = market
    assert max(stop - start for start, stop in store.requests) <= 97 + 300 + H
    assert store.names == features.names and store.groups == features.groups
    np.testing.assert_array_equal(store.mask, features.mask)
    # float32 rounding of the indicators, nothing more (EMAs forgot their seed in 300 bars)
    np.testing.assert_allclose(
        store.values[features.mask], features.values[features.mask], rtol=0, atol=1e-5
    )
    assert np.isnan(store.values[~features.mask]).all()
    np.testing.assert_array_equal(np.asarray(store.labels), labels)
    np.testing.assert_allclose(
        store.targets, normalize_labels_cross_section(labels, features.mask), equal_nan=True
    )
    labelled = features.mask & np.isfinite(labels).all(axis=-1)
    np.testing.assert_array_equal(store.labelled, labelled)
    reopened = MemmapFeatureStore(store.folder)
    assert isinstance(reopened.values_by_stock, np.memmap)
    assert reopened.values_by_stock.shape == (len(panel.symbols), panel.num_dates, len(store.names))


def test_short_overlap_shows_in_the_mask(market, tmp_path):
    panel, features, _ = market
    short = build_feature_store(
        tmp_path / "s", panel_slices(panel), panel.dates,
        StoreSettings(horizons=H, train_end=TRAIN_END), chunk_dates=97, overlap=0,
    )  # fmt: skip
    # without history every chunk restarts the indicators' warm-up: rows go missing
    assert short.mask.sum() < features.mask.sum()
    assert not (short.mask & ~features.mask).any()  # it never invents a valid row


def test_chunked_labels_follow_label_delay(market, tmp_path):
    """data.label_delay=1: the store's labels are forward_returns(delay=1), also at the ends
    of the chunks (each needs delay + H dates after it)."""
    panel, _, _ = market
    delayed = build_feature_store(
        tmp_path / "d", panel_slices(panel), panel.dates,
        StoreSettings(horizons=H, train_end=TRAIN_END, label_delay=1), chunk_dates=97,
        overlap=300,
    )  # fmt: skip
    want = forward_returns(panel, H, delay=1)
    np.testing.assert_array_equal(np.asarray(delayed.labels), want)
    assert not np.array_equal(want, forward_returns(panel, H), equal_nan=True)


def test_store_refuses_to_clobber_and_to_open_unfinished(tmp_path, store):
    MemmapFeatureStore.create(tmp_path / "x", store.dates, store.symbols, ["a"], {}, 1)
    with pytest.raises(FileExistsError):  # a second build must not overwrite silently
        MemmapFeatureStore.create(tmp_path / "x", store.dates, store.symbols, ["a"], {}, 1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        MemmapFeatureStore.create(
            tmp_path / "mine", store.dates, store.symbols, ["a"], {}, 1, overwrite=True
        )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(relcast.RelcastDataError, match="not finished"):
        MemmapFeatureStore(tmp_path / "x")


def test_window_loader_reads_the_memmap_without_copying(market, store):
    _, features, labels = market
    inputs = store_inputs(store)
    loader = inputs.loader(20, store.targets, batch_size=64, shuffle=True, seed=1)
    # zero-copy: the loader's tensor is the mapped file's memory
    assert loader.inputs.data_ptr() == store.values_by_stock.ctypes.data
    assert loader.labels.data_ptr() == store.targets.ctypes.data
    reference = WindowLoader(
        WindowSource(
            np.nan_to_num(features.values),
            features.mask,
            normalize_labels_cross_section(labels, features.mask),
        ),
        20,
        batching=Batching(batch_size=64, shuffle=True, seed=1),
    )
    assert loader.num_windows == reference.num_windows > 1000
    for ours, theirs in zip(loader, reference, strict=True):
        assert torch.equal(ours["t"], theirs["t"]) and torch.equal(ours["n"], theirs["n"])
        torch.testing.assert_close(ours["x"], theirs["x"], atol=1e-5, rtol=0)
        torch.testing.assert_close(ours["y"], theirs["y"])


def test_stage1_dataset_reads_one_date_at_a_time(market, store):
    _, features, labels = market
    fs = store.feature_set()
    ours = CrossSectionDataset(fs.values, fs.mask, store.labels, np.arange(100, 300))
    theirs = CrossSectionDataset(features.values, features.mask, labels, np.arange(100, 300))
    assert np.shares_memory(ours.values, store.values_by_date)  # a reference, not a copy
    np.testing.assert_array_equal(ours.index, theirs.index)
    for i in (0, 57, len(ours) - 1):
        a, b = ours[i], theirs[i]
        torch.testing.assert_close(a["x"], b["x"], atol=1e-5, rtol=0)
        torch.testing.assert_close(a["y"], b["y"], equal_nan=True)
        assert torch.equal(a["mask"], b["mask"])


def test_stage3_trained_from_the_store_equals_in_memory(market, store, tmp_path):
    panel, features, labels = market
    split = chronological_split(panel.dates, 0.2, 0.2, embargo=H)
    spec = Stage3Spec(
        lookback=20, hparams={"hidden_size": 8, "dropout": 0.0}, max_epochs=1, batch_size=256,
        seed=0,
    )  # fmt: skip
    in_memory = fit_stage3(
        "tcn", assemble_inputs(features), labels, split, spec,
        TrainerSpec(out_dir=tmp_path / "a", progress=False),
    )  # fmt: skip
    from_store = fit_stage3(
        "tcn", store_inputs(store), store.targets, split, replace(spec, label_norm="none"),
        TrainerSpec(
            out_dir=tmp_path / "b", progress=False, callbacks=(release_pages_callback(store),)
        ),
    )  # fmt: skip
    assert from_store.num_train_windows == in_memory.num_train_windows
    for (name, a), b in zip(
        in_memory.model.state_dict().items(), from_store.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=name)


def test_stage1_trained_from_the_store_equals_in_memory(market, store, tmp_path):
    panel, features, labels = market
    split = chronological_split(panel.dates, 0.2, 0.2, embargo=H)
    config = Stage1Config(
        num_features=len(store.names), num_stocks=len(panel.symbols), horizons=H, d_model=16,
        num_heads=2, num_layers=1, relationship_dim=4, dropout=0.0,
    )  # fmt: skip
    # "mse": the "ic" loss amplifies the features' 2e-6 float differences (see ddp_script.py)
    spec = Stage1Spec(max_epochs=1, batch_dates=32, seed=0, loss="mse")
    in_memory = fit_stage1(
        features, labels, split, config, spec, TrainerSpec(out_dir=tmp_path / "a", progress=False)
    )
    from_store = fit_stage1(
        store.feature_set(), store.labels, split, config, spec,
        TrainerSpec(out_dir=tmp_path / "b", progress=False),
    )  # fmt: skip
    for (name, a), b in zip(
        in_memory.model.state_dict().items(), from_store.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=name)
    assert from_store.history[0]["val_rank_ic"] == pytest.approx(
        in_memory.history[0]["val_rank_ic"], abs=1e-5
    )


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_release_drops_mapped_pages(tmp_path):
    dates = np.arange(2000).astype("datetime64[m]").astype("datetime64[ns]")
    names = [f"f{k}" for k in range(8)]
    store = MemmapFeatureStore.create(
        tmp_path / "big", dates, [f"S{i}" for i in range(1000)], names, {"own": names}, 1
    )
    ones = np.ones((2000, 1000, 8), np.float32)
    store.write(0, ones, np.ones((2000, 1000), bool), np.zeros((2000, 1000, 1), np.float32))
    store = store.finish()  # 64 MB of features, read-only
    store.release()
    before = _rss_file_kib()
    assert float(store.values_by_stock.sum()) == 2000 * 1000 * 8  # touches every page
    touched = _rss_file_kib()
    store.release()
    after = _rss_file_kib()
    assert touched - before > 50_000  # KiB: reading mapped the file's pages
    assert touched - after > 50_000  # and release() dropped them again


@pytest.mark.slow
def test_large_memmap_training_keeps_rss_bounded(tmp_path):
    # 200 stocks x 20,000 bars x 30 features = 480 MB of features, trained with the large
    # preset's TCN for a bounded number of steps in a fresh process
    out = tmp_path / "result.json"
    cmd = [
        sys.executable, "-m", "benchmarks.scale_large", "--memmap", "--stocks", "200",
        "--bars", "20000", "--steps", "20", "--folder", str(tmp_path / "store"),
        "--json", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=1200)
    result = json.loads(out.read_text())["memmap_stage3"]
    assert result["steps"] == 20 and np.isfinite(result["train_loss"])
    # bounded by the index arrays and a few batches, not by the file
    assert result["train_peak_rss_gib"] < 0.5 * result["store_gib"] + 1.5
