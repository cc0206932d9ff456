"""The relationship store by blocks of dates (:mod:`relcast.relationships.store`, ``data.store:
memmap``): extraction a block of dates at a time into a ``[T, N, K]`` memory map, and
``data_with_relationships`` written to Parquet a block of dates (one row group or a few) at a
time, so neither the ``[T, N, K]`` values nor the long frame is ever whole in memory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relcast.runfolder.base import temp_path

BLOCK_BYTES = 64 << 20
"""Bytes per block: of a block's relationship values, inputs and Stage1 outputs (float32) at
extraction, of the frame's values when writing Parquet."""
STAGE1_FLOATS = 64
"""Floats per stock and date Stage1's forward keeps for the extractor (embeddings, outputs),
counted with the K values and the F inputs when a block of dates is cut."""
FIRST_BLOCK = 8
"""Dates of the first extraction block: it tells the column count K the next blocks are cut by."""


def extract_blocks(
    extractor: Any,
    model: Any,
    features: Any,
    index: np.ndarray,
    block_bytes: int | None = BLOCK_BYTES,
) -> Iterator[tuple[np.ndarray, Any]]:
    """``(dates, RelationshipFeatures)`` of ``index`` a block of dates at a time; one block of
    every date when ``block_bytes`` is None (the in-memory store). The extractors read each date
    on its own (Stage1 in eval mode), so the blocks hold the values of one extraction."""
    from relcast.progress import PassProgress

    index = np.asarray(index, dtype=np.int64)
    N = len(features.symbols)
    step = len(index) if block_bytes is None else FIRST_BLOCK
    progress = PassProgress("relationship extraction", len(index))
    a = 0
    while a < len(index):
        chunk = index[a : a + step]
        rel = extractor.extract(model, features, chunk)  # (t, N, K)
        yield chunk, rel
        a += len(chunk)
        progress.update(a)
        if block_bytes is not None:  # a date: its K values, its F inputs, Stage1's outputs
            per_date = N * 4 * (len(rel.names) + features.values.shape[-1] + STAGE1_FLOATS)
            step = max(1, int(block_bytes) // per_date)
    progress.finish()


def open_values(path: str | Path | None, shape: tuple[int, int, int]) -> np.ndarray:
    """``float32 [T, N, K]``, uninitialised (extraction writes every date): a new ``.npy``
    memory map at ``path``, or an in-memory array when ``path`` is None."""
    if path is None:
        return np.empty(shape, dtype=np.float32)
    from numpy.lib.format import open_memmap

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open_memmap(path, mode="w+", dtype=np.float32, shape=shape)


def release(values: np.ndarray) -> None:
    """Flush a memory map's written pages and drop its pages from this process's RSS (the
    page cache keeps them); nothing for an in-memory array."""
    import mmap

    base = values
    while base is not None and getattr(base, "_mmap", None) is None:
        base = base.base if isinstance(base, np.ndarray) else None
    if base is None or base._mmap.closed:
        return
    if base.mode != "r":
        base.flush()
    if hasattr(base._mmap, "madvise"):
        base._mmap.madvise(mmap.MADV_DONTNEED)


def date_blocks(T: int, row_bytes: int, block_bytes: int | None = None) -> Iterator[slice]:
    """Slices of ``T`` dates each holding about ``block_bytes`` (default :data:`BLOCK_BYTES`)
    of ``row_bytes``-sized dates."""
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    step = max(1, int(block_bytes) // max(1, int(row_bytes)))
    for a in range(0, T, step):
        yield slice(a, min(T, a + step))


def write_frame_parquet(
    store: Any, path: str | Path, feature_groups: Sequence[str] = ("own", "calendar")
) -> Path:
    """Write ``store.to_frame(feature_groups)`` to ``path`` a block of dates at a time
    (``pyarrow.parquet.ParquetWriter``; the same rows, in the same order, as one write), then
    rename it into place (atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"relationship_names": store.names, "symbols": [str(s) for s in store.symbols]}
    T, N = store.mask.shape
    own = 0 if store.features is None else store.features.values.shape[2]
    row_bytes = N * 4 * (3 + own + len(store.names))
    tmp = temp_path(path)  # relcast's own temporary name (recovery knows it), mode 0644
    writer = None
    try:
        for block in date_blocks(T, row_bytes):
            frame = store.to_frame(feature_groups, dates=block)
            if not len(frame) and (writer is not None or block.stop < T):
                continue  # an empty block adds nothing (and has no column types)
            if writer is None:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                table = table.replace_schema_metadata(
                    {**(table.schema.metadata or {}), b"relcast": json.dumps(meta).encode()}
                )
                writer = pq.ParquetWriter(tmp, table.schema)
            else:
                table = pa.Table.from_pandas(frame, schema=writer.schema, preserve_index=False)
            writer.write_table(table)
        writer.close()
        os.replace(tmp, path)
    finally:
        if writer is not None and writer.is_open:
            writer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
