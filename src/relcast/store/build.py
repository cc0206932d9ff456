"""The run folder's feature store (``data.store: memmap``): :func:`build_run_store` writes
features, labels and panel of a run block by block, with the values of the in-memory path."""

from __future__ import annotations

from relcast.data.panel import Panel
from relcast.features.labels import forward_returns
from relcast.store.memmap import MemmapFeatureStore
from relcast.store.settings import StoreSettings
from relcast.store.sources import save_panel_memmap


def build_run_store(folder, panel: Panel, settings: StoreSettings, scalers: dict):
    """The run's feature store (``data.store: memmap``), written block by block with the values
    of :meth:`relcast.run.context.RunContext.features_for` (:class:`~relcast.features.chunked.
    ChunkedFeatures`: raw indicators by symbol block straight into the store's time-major
    file, then
    normalised by date block), the labels by date block, and the panel as float32 memory maps
    (:func:`~relcast.store.sources.load_panel_memmap`). ``scalers`` (``{}``: fitted
    here) gets the training-span statistics. Returns the finished store, opened read-only."""
    from relcast.features.chunked import BLOCK_BYTES, ChunkedFeatures

    s = settings
    horizons, label_delay = s.horizons, s.label_delay
    chunked = ChunkedFeatures(
        panel, s.train_end, regime_window=s.regime_window, alpha158=s.alpha158, scalers=scalers,
        block_bytes=s.block_bytes or BLOCK_BYTES,
    )  # fmt: skip
    store = MemmapFeatureStore.create(
        folder, panel.dates, panel.symbols, chunked.names, chunked.groups, horizons,
        sector_ids=s.sector_ids,
    )  # fmt: skip
    scratch = store.values_by_date.transpose(1, 0, 2)  # (N, T, F) view of the time-major file
    store.track(panel.values)  # a memory-mapped market's pages go with the store's
    chunked.write_raw(scratch, release=store.release)
    T = panel.num_dates
    for a, values, mask in chunked.blocks(scratch):
        b = a + len(values)
        ahead = min(T, b + label_delay + horizons)  # a label reads close[t + delay + h]
        rows = Panel(
            dates=panel.dates[a:ahead], symbols=panel.symbols, fields=panel.fields,
            values=panel.values[a:ahead], mask=panel.mask[a:ahead], meta=panel.meta,
        )  # fmt: skip
        labels = forward_returns(rows, horizons, delay=label_delay)[: b - a]  # (t, N, H)
        store.write(a, values, mask, labels)
        store.release()
    save_panel_memmap(store.folder, panel)
    return store.finish()
