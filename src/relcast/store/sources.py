"""What :func:`relcast.store.memmap.build_feature_store` reads: a source of bars by date range
(:func:`panel_slices` for an in-memory panel) and the index / calendar columns, computed once over
all dates (:func:`index_context`), since they are a few columns per date."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from relcast.data.panel import Panel, RelcastDataError, memory_map_of, release_pages
from relcast.features.build import build_features


def panel_slices(panel: Panel) -> Callable[[int, int], Panel]:
    """A source for :func:`build_feature_store` that slices an in-memory panel."""

    def source(start: int, stop: int) -> Panel:
        return Panel(
            dates=panel.dates[start:stop],
            symbols=panel.symbols,
            fields=panel.fields,
            values=panel.values[start:stop],
            mask=panel.mask[start:stop],
            meta=panel.meta,
        )

    return source


def index_context(
    source: Callable[[int, int], Panel],
    dates: np.ndarray,
    *,
    chunk_dates: int,
    train_end: int,
    windows: Sequence[int],
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """``(ctx float32 [T, F_ctx], groups)``: the index + calendar features of every date, read
    from ``source`` in chunks of ``chunk_dates`` (its market index rows only), scaled with the
    statistics of dates up to ``train_end``; NaN where a date has none."""
    T = len(dates)
    parts = []
    for a in range(0, T, chunk_dates):
        part = source(a, min(T, a + chunk_dates))
        which = np.flatnonzero(part.is_index)
        if not len(which):
            raise RelcastDataError(
                "build_feature_store needs a market index in the source (is_index=True): the "
                "chunked build cannot form the equal-weight index of all stocks"
            )
        parts.append(part.select(symbols=list(part.symbols[which])))
    index_panel = Panel(
        dates=np.concatenate([p.dates for p in parts]),
        symbols=parts[0].symbols,
        fields=parts[0].fields,
        values=np.concatenate([p.values for p in parts]),
        mask=np.concatenate([p.mask for p in parts]),
        meta=parts[0].meta,
    )
    if not np.array_equal(index_panel.dates, dates):
        raise RelcastDataError("the source's dates differ from `dates`")
    context = build_features(index_panel, train_end=train_end, windows=windows)
    context_groups = {g: context.groups[g] for g in ("index", "calendar")}
    ctx_cols = context.columns([n for g in context_groups.values() for n in g])
    ctx = np.full((T, len(ctx_cols)), np.nan, np.float32)  # (T, F_ctx)
    # a date's index/calendar values are the same for every row; take them where defined
    raw_ctx = context.values[:, :, ctx_cols]  # (T, K, F_ctx)
    defined = np.isfinite(raw_ctx).all(axis=-1)  # (T, K)
    first = defined.argmax(axis=1)  # (T,)
    rows = np.flatnonzero(defined.any(axis=1))
    ctx[rows] = raw_ctx[rows, first[rows]]
    return ctx, context_groups


# ----------------------------------------------------------------------------- the run's store
PANEL_FILES = ("panel_values.npy", "panel_mask.npy", "panel.json")


def save_panel_memmap(folder, panel: Panel, block_dates: int = 4096) -> None:
    """The panel's values ``float32 [T, N, F]`` and mask as ``.npy`` files in ``folder`` (the
    values as they are: a Panel is float32 already), plus its fields and metadata."""
    import json
    from pathlib import Path

    from numpy.lib.format import open_memmap

    folder = Path(folder)
    target = folder / PANEL_FILES[0]
    mapped = memory_map_of(panel.values)
    whole = mapped is not None and mapped.shape == panel.values.shape
    if whole and mapped.ctypes.data == panel.values.ctypes.data and mapped.filename:
        # already a .npy file of these values (a market written to disk at prepare): move it
        mapped.flush()
        os.replace(mapped.filename, target)
    else:
        values = open_memmap(target, "w+", np.float32, panel.values.shape)
        for a in range(0, panel.num_dates, block_dates):
            values[a : a + block_dates] = panel.values[a : a + block_dates]
            release_pages(values)
        values.flush()
        del values
    np.save(folder / PANEL_FILES[1], panel.mask)
    info = {"fields": list(panel.fields), "meta": json.loads(panel.meta.to_json(orient="records"))}
    (folder / PANEL_FILES[2]).write_text(json.dumps(info))


def load_panel_memmap(folder) -> Panel:
    """The panel :func:`save_panel_memmap` wrote: values memory-mapped (copy-on-write, so no
    caller can change the file), mask in memory (``T * N`` bytes)."""
    import json
    from pathlib import Path

    import pandas as pd

    folder = Path(folder)
    info = json.loads((folder / PANEL_FILES[2]).read_text())
    meta = json.loads((folder / "meta.json").read_text())
    return Panel(
        dates=np.load(folder / "dates.npy"),
        symbols=np.asarray(meta["symbols"]),
        fields=tuple(info["fields"]),
        values=np.load(folder / PANEL_FILES[0], mmap_mode="c"),
        mask=np.load(folder / PANEL_FILES[1]),
        meta=pd.DataFrame(info["meta"]),
    )


def panel_is_current(folder, parquet) -> bool:
    """True if the panel memory map in ``folder`` holds the dates of ``parquet`` (the run's
    ``panel.parquet``; ``relcast update`` appends dates to it, not to the map)."""
    import json
    from pathlib import Path

    import pyarrow.parquet as pq

    folder = Path(folder)
    if not (folder / PANEL_FILES[2]).exists() or not Path(parquet).exists():
        return False
    md = pq.read_schema(parquet).metadata or {}
    if b"relcast.dates" not in md:
        return False
    dates = np.array(json.loads(md[b"relcast.dates"]), dtype="datetime64[ns]")
    return np.array_equal(dates, np.load(folder / "dates.npy"))


def write_panel_parquet(panel: Panel, path, rows_per_group: int = 1 << 20) -> None:
    """``panel.parquet`` as :meth:`Panel.to_parquet` writes it (the same table, schema and
    metadata), built and written a block of dates at a time so the long table of a large
    panel never sits in memory whole."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    step = max(1, rows_per_group // max(1, panel.num_symbols))
    extra = {
        b"relcast.meta": panel.meta.to_json(orient="records").encode(),
        b"relcast.symbols": json.dumps(list(panel.symbols)).encode(),
        b"relcast.dates": json.dumps([str(d) for d in panel.dates]).encode(),
    }
    writer = None
    try:
        for a in range(0, max(1, panel.num_dates), step):
            rows = Panel(
                dates=panel.dates[a : a + step], symbols=panel.symbols, fields=panel.fields,
                values=panel.values[a : a + step], mask=panel.mask[a : a + step],
                meta=panel.meta,
            )  # fmt: skip
            table = pa.Table.from_pandas(rows.to_frame(), preserve_index=False)
            release_pages(panel.values)  # a memory-mapped panel's pages, read for this block
            if writer is None:
                schema = table.schema.with_metadata({**(table.schema.metadata or {}), **extra})
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()
