"""The in-memory market: a dense ``[T, N, F]`` array of bars plus a trading mask.

Everything downstream (features, labels, Stage1, Stage3) reads a :class:`Panel`. Tables
appear only at the edges: :meth:`Panel.to_frame` / :meth:`Panel.from_frame` and Parquet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from relcast.data.health import DataHealth

META_COLUMNS = ("symbol", "name", "sector", "market", "is_index")
PRICE_FIELDS = ("open", "high", "low", "close")
OHLCV_FIELDS = ("open", "high", "low", "close", "volume")


class RelcastDataError(ValueError):
    """Bad input data: the message names the file, the column and example rows."""


def memory_map_of(array: np.ndarray) -> np.memmap | None:
    """The ``np.memmap`` a (view of a) memory-mapped array reads, or None (in memory)."""
    while array is not None and getattr(array, "_mmap", None) is None:
        array = array.base if isinstance(array, np.ndarray) else None
    return array


def release_pages(array: np.ndarray) -> None:
    """Drop the resident pages of a memory-mapped ``array`` (or a view of one) from this
    process's RSS; the next read maps them again. No-op otherwise. Nothing is lost: written
    pages of a shared map stay in the page cache (the file), and copy-on-write maps are
    never written here."""
    import mmap

    mapped = memory_map_of(array)
    if mapped is not None and not mapped._mmap.closed:
        mapped._mmap.madvise(mmap.MADV_DONTNEED)


def format_names(values, limit: int = 10) -> str:
    """``['A', 'B'] (+3 more)``: names for a message as plain text, never ``np.str_('A')``."""
    items = [v.item() if isinstance(v, np.generic) else v for v in list(values)]
    text = repr(items[:limit])
    return text if len(items) <= limit else f"{text} (+{len(items) - limit} more)"


def default_meta(symbols: np.ndarray) -> pd.DataFrame:
    """Metadata for symbols nobody described: name = symbol, sector unknown, not an index."""
    return pd.DataFrame(
        {
            "symbol": list(symbols),
            "name": list(symbols),
            "sector": ["unknown"] * len(symbols),
            "market": ["unknown"] * len(symbols),
            "is_index": [False] * len(symbols),
        }
    )


@dataclass(frozen=True, eq=False)
class Panel:
    """A market of N symbols over T dates with F fields.

    Attributes:
        dates: ``datetime64[ns]`` of shape ``[T]``, strictly increasing.
        symbols: ``str`` array of shape ``[N]``, unique.
        fields: names of the F fields (``open, high, low, close, volume`` and optional extras).
        values: ``float32 [T, N, F]``; NaN wherever ``mask`` is False.
        mask: ``bool [T, N]``, True where the symbol traded at that date. Suspensions and
            late listings are ``False``, never zero prices.
        meta: one row per symbol, in ``symbols`` order, columns ``symbol, name, sector,
            market, is_index``.
        health: what the reader masked or repaired, by reason and symbol
            (:class:`~relcast.data.health.DataHealth`); None for panels not read from files.
            Sub-panels (``select``, ``reindex``) keep the account of their source.
    """

    dates: np.ndarray
    symbols: np.ndarray
    fields: tuple[str, ...]
    values: np.ndarray
    mask: np.ndarray
    meta: pd.DataFrame = field(default=None)  # type: ignore[assignment]
    health: DataHealth | None = None

    def __post_init__(self) -> None:
        dates = np.asarray(self.dates, dtype="datetime64[ns]")
        symbols = np.asarray(self.symbols).astype(str)
        values = np.ascontiguousarray(self.values, dtype=np.float32)
        mask = np.asarray(self.mask, dtype=bool)
        fields = tuple(self.fields)
        T, N = len(dates), len(symbols)
        if values.shape != (T, N, len(fields)):
            raise ValueError(f"values has shape {values.shape}, expected {(T, N, len(fields))}")
        if mask.shape != (T, N):
            raise ValueError(f"mask has shape {mask.shape}, expected {(T, N)}")
        if T > 1 and not (np.diff(dates) > np.timedelta64(0)).all():
            raise ValueError("dates must be strictly increasing")
        if len(set(symbols)) != N:
            raise ValueError("symbols must be unique")
        meta = default_meta(symbols) if self.meta is None else _align_meta(self.meta, symbols)
        object.__setattr__(self, "dates", dates)
        object.__setattr__(self, "symbols", symbols)
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "meta", meta)

    # ------------------------------------------------------------------ views
    @property
    def num_dates(self) -> int:
        return len(self.dates)

    @property
    def num_symbols(self) -> int:
        return len(self.symbols)

    @property
    def is_index(self) -> np.ndarray:
        """``bool [N]``: True for market indices."""
        return self.meta["is_index"].to_numpy(dtype=bool)

    @property
    def sectors(self) -> np.ndarray:
        """``str [N]``: sector of each symbol (``"index"`` is not special-cased)."""
        return self.meta["sector"].to_numpy(dtype=str)

    def field(self, name: str) -> np.ndarray:
        """One field as ``float32 [T, N]`` (a view, NaN where not traded)."""
        try:
            return self.values[:, :, self.fields.index(name)]
        except ValueError:
            raise KeyError(f"field {name!r} not in panel; fields are {list(self.fields)}") from None

    def select(
        self,
        symbols: list[str] | None = None,
        start: str | np.datetime64 | None = None,
        end: str | np.datetime64 | None = None,
    ) -> Panel:
        """A sub-panel: some symbols (in the given order) and/or dates in ``[start, end]``."""
        t = np.ones(self.num_dates, dtype=bool)
        if start is not None:
            t &= self.dates >= np.datetime64(pd.Timestamp(start), "ns")
        if end is not None:
            t &= self.dates <= np.datetime64(pd.Timestamp(end), "ns")
        if symbols is None:
            n = np.arange(self.num_symbols)
        else:
            lookup = {s: i for i, s in enumerate(self.symbols)}
            missing = [s for s in symbols if s not in lookup]
            if missing:
                raise KeyError(f"symbols not in panel: {format_names(missing)}")
            n = np.array([lookup[s] for s in symbols], dtype=int)
        return Panel(
            dates=self.dates[t],
            symbols=self.symbols[n],
            fields=self.fields,
            values=self.values[t][:, n],
            mask=self.mask[t][:, n],
            meta=self.meta.iloc[n].reset_index(drop=True),
            health=self.health,
        )

    def __repr__(self) -> str:
        if self.num_dates:
            span = f"{pd.Timestamp(self.dates[0]).date()}..{pd.Timestamp(self.dates[-1]).date()}"
        else:
            span = "empty"
        return (
            f"Panel(dates={self.num_dates} [{span}], symbols={self.num_symbols} "
            f"({int(self.is_index.sum())} index), fields={list(self.fields)}, "
            f"traded={self.mask.mean():.1%})"
        )

    # ------------------------------------------------------------------ tables
    def to_frame(self) -> pd.DataFrame:
        """Long table ``date, symbol, <fields>``: one row per traded (date, symbol)."""
        t, n = np.nonzero(self.mask)
        frame = pd.DataFrame({"date": self.dates[t], "symbol": self.symbols[n]})
        for k, name in enumerate(self.fields):
            frame[name] = self.values[t, n, k]
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: pd.DataFrame | None = None) -> Panel:
        """Build from a long table ``date, symbol, <numeric fields>`` (already validated).

        Dates are the union over symbols; a (date, symbol) without a row is ``mask=False``.
        """
        fields = tuple(c for c in frame.columns if c not in ("date", "symbol"))
        dates, t = np.unique(frame["date"].to_numpy(dtype="datetime64[ns]"), return_inverse=True)
        symbols, n = np.unique(frame["symbol"].to_numpy(dtype=str), return_inverse=True)
        if meta is not None:
            # keep the caller's symbol order where metadata gives one
            order = [s for s in meta["symbol"].astype(str) if s in set(symbols)]
            order += [s for s in symbols if s not in set(order)]
            remap = {s: i for i, s in enumerate(order)}
            n = np.array([remap[s] for s in symbols])[n]
            symbols = np.array(order)
        values = np.full((len(dates), len(symbols), len(fields)), np.nan, dtype=np.float32)
        mask = np.zeros((len(dates), len(symbols)), dtype=bool)
        values[t, n] = frame[list(fields)].to_numpy(dtype=np.float32)
        mask[t, n] = True
        return cls(dates=dates, symbols=symbols, fields=fields, values=values, mask=mask, meta=meta)

    # ------------------------------------------------------------------ parquet
    def to_parquet(self, path: str | Path) -> Path:
        """Write the long table to Parquet with the metadata in the file's key-value metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        table = pa.Table.from_pandas(self.to_frame(), preserve_index=False)
        extra = {
            b"relcast.meta": self.meta.to_json(orient="records").encode(),
            b"relcast.symbols": json.dumps(list(self.symbols)).encode(),
            b"relcast.dates": json.dumps([str(d) for d in self.dates]).encode(),
        }
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)  # atomic: a crash never leaves a half-written file under the real name
        return path

    @classmethod
    def read_parquet(cls, path: str | Path) -> Panel:
        """Read a file written by :meth:`to_parquet` (exact round trip, masked rows included)."""
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        md = table.schema.metadata or {}
        frame = table.to_pandas()
        meta = pd.DataFrame(json.loads(md[b"relcast.meta"])) if b"relcast.meta" in md else None
        panel = cls.from_frame(frame, meta=meta)
        if b"relcast.dates" in md:
            # dates / symbols with no traded row at all survive the round trip too
            dates = np.array(json.loads(md[b"relcast.dates"]), dtype="datetime64[ns]")
            symbols = np.array(json.loads(md[b"relcast.symbols"]))
            panel = panel.reindex(dates, symbols)
        return panel

    def reindex(self, dates: np.ndarray, symbols: np.ndarray) -> Panel:
        """The same market on a superset of dates and symbols (new cells are masked)."""
        dates = np.asarray(dates, dtype="datetime64[ns]")
        symbols = np.asarray(symbols).astype(str)
        t_pos = np.searchsorted(dates, self.dates)
        if (t_pos >= len(dates)).any() or (
            dates[np.minimum(t_pos, len(dates) - 1)] != self.dates
        ).any():
            raise ValueError("reindex dates must contain every existing date")
        lookup = {s: i for i, s in enumerate(symbols)}
        n_pos = np.array([lookup[s] for s in self.symbols], dtype=int)
        values = np.full((len(dates), len(symbols), len(self.fields)), np.nan, dtype=np.float32)
        mask = np.zeros((len(dates), len(symbols)), dtype=bool)
        values[np.ix_(t_pos, n_pos)] = self.values
        mask[np.ix_(t_pos, n_pos)] = self.mask
        return Panel(dates, symbols, self.fields, values, mask, self.meta, self.health)


def _align_meta(meta: pd.DataFrame, symbols: np.ndarray) -> pd.DataFrame:
    """Metadata rows in ``symbols`` order; symbols without a row (or a column) get defaults."""
    rows = {str(r["symbol"]): r for r in meta.to_dict("records")}
    out = default_meta(symbols).to_dict("list")
    for i, sym in enumerate(out["symbol"]):
        row = rows.get(sym, {})
        for col in META_COLUMNS[1:]:
            value = row.get(col)
            if value is not None and not (isinstance(value, float) and np.isnan(value)):
                out[col][i] = value
    frame = pd.DataFrame(out)
    for col in ("name", "sector", "market"):
        frame[col] = frame[col].astype(str)
    frame["is_index"] = frame["is_index"].astype(bool)
    return frame
