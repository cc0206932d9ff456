"""What :func:`relcast.training.store.build_feature_store` reads: a source of bars by date range
(:func:`panel_slices` for an in-memory panel) and the index / calendar columns, computed once over
all dates (:func:`index_context`), since they are a few columns per date."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from relcast.data.panel import Panel, RelcastDataError
from relcast.features import build_features


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
