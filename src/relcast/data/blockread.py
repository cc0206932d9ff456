"""Read bars block by block into a memory-mapped :class:`Panel` (``data.store: memmap``).

:func:`read_panel_to_memmap` gives the panel :func:`~relcast.data.readers.read_panel` gives
(the same dates, symbols, fields, meta, mask, values and health account), with ``values`` a
memory map of a ``float32 [T, N, F]`` ``.npy`` file, so that a market larger than memory can be
read. A **long Parquet file** is read in blocks of whole symbols:

1. the date and symbol columns, a batch at a time: rows per symbol and the distinct dates,
   which are parsed once, as one column (one day/month order, one daily-or-intraday choice);
2. every column, a batch at a time: each row is appended to the spill file of its block
   (Arrow IPC, lz4, in a folder beside ``values_path``, deleted at the end); a block holds
   consecutive symbols of the panel's order, at most ``block_rows`` rows and ``T x symbols``
   cells (one symbol at least);
3. each block: the reader's own steps (standardise, ``check_structure``, ``clean_bars``,
   ``count_gaps``, ``frame_to_panel``) on its rows; its ``[T, symbols, F]`` slab is written into
   the memory map (pages released as they are written) and its counts added to the account.

Per-symbol checks (duplicates, stale bars, one-bar spikes, gaps) see every row of a symbol, so
blocks give the same result as the whole table. Errors that look at the whole table are decided
after all blocks: too many bad rows in a symbol (the worst symbol, the count of such symbols),
conflicting duplicates, a column empty in every row, a universe naming absent symbols; their
messages are read_panel's. Date errors name the distinct date values that fail (the first row
of each), not every row; a column with text among numbers names the rows of one block.

Other layouts load whole with :func:`read_panel` and are copied into the memory map: long CSV
files, per-symbol CSV folders, qlib folders, and Parquet files whose symbol or date column is
dictionary-encoded (pandas categoricals) or whose pandas metadata restores an index. Parquet is
the format for large data.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from relcast.data.bars import MIN_ROWS, check_structure, clean_bars, count_gaps, exclude_symbols
from relcast.data.dates import parse_date_column
from relcast.data.health import BAD_REASONS, REPAIRED_REASONS, DataHealth
from relcast.data.panel import OHLCV_FIELDS, Panel, RelcastDataError, release_pages
from relcast.data.readers import (
    PARQUET_SUFFIXES,
    check_universe,
    clean_symbols,
    column_names,
    frame_to_panel,
    has_suffix,
    read_panel,
    require_columns,
    standardise,
)
from relcast.data.universe import read_universe

ROW_WORD = "row"  # Parquet rows are numbered from 1, as read_panel numbers them
BATCH_ROWS = 1 << 20  # rows read from the file at a time (at most block_rows)
DATE_CHUNK = 4096  # dates written to the memory map between releases of its pages


def read_panel_to_memmap(
    path,
    values_path,
    universe=None,
    *,
    date_format: str | None = None,
    symbol_pattern: str | None = None,
    max_bad_fraction: float = 0.05,
    block_rows: int = 4_000_000,
    strict: bool = False,
) -> Panel:
    """:func:`read_panel` (the same arguments and result) with ``values`` a memory map of
    ``values_path`` (a ``.npy`` file, created or overwritten; copy-on-write, so no caller can
    change it) and ``mask`` in memory. Long Parquet files are read in blocks of about
    ``block_rows`` rows of whole symbols, so memory is bounded by the block, not the table;
    other layouts load whole (see the module docstring)."""
    path, values_path = Path(path), Path(values_path)
    options = dict(date_format=date_format, max_bad_fraction=max_bad_fraction, strict=strict)
    values_path.parent.mkdir(parents=True, exist_ok=True)
    # the map and the spill files are written in a folder beside values_path and the map
    # moved into place at the end: a failed read leaves an earlier values_path as it was,
    # and a panel still mapping that file keeps reading it
    # a temporary name of relcast's form (.<name>.<pid>.<8 hex>.tmp): recovery of a run
    # folder removes it if this process is killed
    work = values_path.parent / f".blockread.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    work.mkdir()
    try:
        reader = None
        if path.is_file() and has_suffix(path, PARQUET_SUFFIXES):
            reader = _ParquetBlocks.open(path, max(1, int(block_rows)))
        if reader is not None:
            panel = reader.read(work, universe, **options)
        else:
            panel = read_panel(path, universe, symbol_pattern=symbol_pattern, **options)
            _copy_values(panel, work / "values.npy")
        os.replace(work / "values.npy", values_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    values = np.load(values_path, mmap_mode="c")
    return Panel(
        panel.dates, panel.symbols, panel.fields, values, panel.mask, panel.meta, panel.health
    )


def _copy_values(panel: Panel, values_path: Path) -> None:
    """An in-memory panel's values into a new ``.npy`` file, a block of dates at a time."""
    from numpy.lib.format import open_memmap

    values = open_memmap(values_path, "w+", np.float32, panel.values.shape)
    for a in range(0, panel.num_dates, DATE_CHUNK):
        values[a : a + DATE_CHUNK] = panel.values[a : a + DATE_CHUNK]
        release_pages(values)
    values.flush()


def _release_arrow() -> None:
    """Return the memory Arrow's allocator keeps for reuse (a block's worth) to the system."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


class _ParquetBlocks:
    """One read of a long Parquet file in blocks of whole symbols (module docstring)."""

    @classmethod
    def open(cls, path: Path, block_rows: int) -> _ParquetBlocks | None:
        """The reader, or None when the file is read whole (see the module docstring)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError):
            return None  # read_panel names the problem
        schema = file.schema_arrow
        source = str(path)
        if list(schema.empty_table().to_pandas().columns) != schema.names:
            return None  # pandas metadata moves a column into the index
        if not file.metadata.num_rows:
            return None
        names = column_names(schema.names, source)
        date_col, symbol_col = require_columns(
            [c for c in names if not c.startswith("_")], source, with_symbol=True
        )
        keys = [date_col] + (["time"] if date_col == "date" and "time" in names else [])
        original = dict(zip(names, schema.names, strict=True))
        if any(pa.types.is_dictionary(schema.field(original[c]).type) for c in [*keys, symbol_col]):
            return None
        return cls(file, path, block_rows, names, original, keys, symbol_col)

    def __init__(self, file, path, block_rows, names, original, keys, symbol_col) -> None:
        self.file, self.path, self.source = file, path, str(path)
        self.block_rows = block_rows
        self.batch_rows = min(BATCH_ROWS, block_rows)
        self.names, self.original = names, original
        self.lower = {o: n for n, o in original.items()}
        self.keys, self.date_col, self.symbol_col = keys, keys[0], symbol_col
        self.health = DataHealth(self.source)

    # ------------------------------------------------------------------ the passes
    def read(self, work: Path, universe, *, date_format, max_bad_fraction, strict) -> Panel:
        """The panel, its values in memory (shared) until written to ``work/values.npy``."""
        self.strict = strict
        self.counted = BAD_REASONS + (REPAIRED_REASONS if strict else ())
        counts, probe, seen = self._scan()
        self.seen = seen
        days, stamps, late_error = self._parse_dates(probe, date_format)
        meta = read_universe(universe) if universe is not None else None
        self.symbols = _symbol_order(sorted(counts), meta)
        # a block's [T, symbols] slab is bounded too (the distinct dates bound T)
        self.blocks = _blocks([counts[s] for s in self.symbols], len(days), self.block_rows)
        self.spill = [work / f"block{b}.arrow" for b in range(len(self.blocks))]
        self._write_spill()
        _release_arrow()
        final = days
        if stamps is None or not np.array_equal(stamps, days):  # clock times present
            if self._any_intraday_duplicate(days):  # read_panel keeps the times
                if late_error is not None:
                    raise late_error
                final = stamps
                rule = self.health.date_rule.replace(", daily (by trading date)", ", intraday")
                self.health.date_rule = rule
        self.final, self.dates = final, np.unique(final)
        mask = self._fill(work / "values.npy", meta, date_format)
        broken = self._refuse(date_format, max_bad_fraction, strict)
        if broken:  # excluded: every cell masked, as read_panel does
            exclude_symbols(self.source, broken, self.health)
            n = np.flatnonzero(np.isin(self.symbols, list(broken)))
            mask[:, n] = False
            slab = np.load(work / "values.npy", mmap_mode="r+")
            slab[:, n] = np.nan
            slab.flush()
            del slab
        if meta is not None:
            check_universe(meta, self.symbols, universe, self.path)
        values = np.load(work / "values.npy", mmap_mode="r")
        return Panel(self.dates, self.symbols, self.fields, values, mask, meta, self.health)

    def _batches(self, full: bool = False):
        """``(frame, batch, first line)`` per batch: ``frame`` holds the date and symbol columns
        (lower-case names) in pandas; ``batch`` all columns (``full``) or just those."""
        columns = [self.original[c] for c in dict.fromkeys([*self.keys, self.symbol_col])]
        line = 1
        read = None if full else columns
        for batch in self.file.iter_batches(batch_size=self.batch_rows, columns=read):
            frame = batch.select(columns).to_pandas()
            frame.columns = [self.lower[c] for c in columns]
            yield frame, batch, line
            line += batch.num_rows

    def _scan(self) -> tuple[dict[str, int], pd.DataFrame, pd.Index]:
        """Pass 1: rows per symbol; the distinct date values, each with its first row."""
        counts: dict[str, int] = {}
        parts, empty, seen = [], [], None
        for frame, _, line in self._batches():
            lines = line + np.arange(len(frame))
            column = frame[self.symbol_col]
            no_symbol = (column.isna() | column.astype(str).str.strip().eq("")).to_numpy()
            if no_symbol.any():
                empty.append(frame.loc[no_symbol].assign(_line=lines[no_symbol]))
                continue
            symbols = clean_symbols(column)
            n = np.bincount(symbols.codes, minlength=len(symbols.categories))
            for sym, k in zip(symbols.categories.tolist(), n.tolist(), strict=True):
                counts[sym] = counts.get(sym, 0) + k
            codes, distinct = pd.factorize(self._key(frame), use_na_sentinel=False)
            known = np.zeros(len(distinct), dtype=bool)
            if seen is not None:
                known = seen.get_indexer(distinct) >= 0
            new = np.flatnonzero(~known)
            if len(new):
                first = np.unique(codes, return_index=True)[1][new]  # first row of each
                part = frame.iloc[first][self.keys].reset_index(drop=True)
                part["_symbol"] = np.asarray(symbols)[first]
                part["_line"] = lines[first]
                parts.append(part)
                added = pd.Index(distinct[new])
                seen = added if seen is None else seen.append(added)
        if empty:  # read_panel's message, with every such row
            rows = pd.concat(empty, ignore_index=True)
            for name in OHLCV_FIELDS:
                rows[name] = np.nan
            standardise(rows.assign(_file=self.path.name), self.source, ROW_WORD, None)
        probe = pd.concat(parts, ignore_index=True)
        probe["_file"] = self.path.name
        return counts, probe, seen

    def _key(self, frame: pd.DataFrame) -> pd.Series:
        """One hashable key per row for the date column (and a separate ``time`` column)."""
        key = frame[self.keys[0]].reset_index(drop=True)
        if len(self.keys) > 1:
            key = key.astype(str) + "\x1f" + frame[self.keys[1]].astype(str).to_numpy()
        return key

    def _parse_dates(self, probe: pd.DataFrame, date_format):
        """The distinct dates parsed as read_panel parses the column: ``(days, stamps, error)``:
        by trading date, with clock times (None and the error if date-only values are mixed
        in), so the caller can choose once it knows whether a symbol has two rows a day."""
        symbols = probe.pop("_symbol")
        probe.attrs["row_word"] = ROW_WORD
        args = (probe, self.date_col, self.source, date_format, symbols)
        rules: dict[str, str] = {}
        days = parse_date_column(*args, daily=True, rules=rules)
        self.health.date_rule = f"{self.date_col}: {rules.get(self.date_col, '')}"
        try:
            return days, parse_date_column(*args, daily=False), None
        except RelcastDataError as err:
            return days, None, err

    def _write_spill(self) -> None:
        """Pass 2: every row to the spill file of its block, with its line and date code."""
        import pyarrow as pa

        position = {s: i for i, s in enumerate(self.symbols)}
        block_of = np.repeat(np.arange(len(self.blocks)), [b - a for a, b in self.blocks])
        options = pa.ipc.IpcWriteOptions(compression="lz4")
        writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        try:
            for frame, batch, line in self._batches(full=True):
                symbols = clean_symbols(frame[self.symbol_col])
                pos = np.array([position[s] for s in symbols.categories], np.int64)[symbols.codes]
                table = pa.Table.from_batches([batch])
                table = table.append_column("_line", pa.array(line + np.arange(len(frame))))
                codes, distinct = pd.factorize(self._key(frame), use_na_sentinel=False)
                dcode = self.seen.get_indexer(distinct)[codes]  # the row's distinct date
                table = table.append_column("_dcode", pa.array(dcode.astype(np.int32)))
                table = table.append_column("_pos", pa.array(pos.astype(np.int32)))
                block = block_of[pos]
                order = np.argsort(block, kind="stable")
                table = table.take(order)
                bounds = np.searchsorted(block[order], np.arange(len(self.blocks) + 1))
                for b in np.flatnonzero(np.diff(bounds)):
                    if b not in writers:
                        writers[b] = pa.ipc.new_file(self.spill[b], table.schema, options=options)
                    writers[b].write_table(table.slice(bounds[b], bounds[b + 1] - bounds[b]))
        finally:
            for writer in writers.values():
                writer.close()

    def _spilled(self, b: int, columns: list[str] | None = None):
        """Block ``b``'s spill file as an Arrow table (only ``columns`` if given)."""
        import pyarrow as pa

        with pa.OSFile(str(self.spill[b])) as source:
            reader = pa.ipc.open_file(source)
            if columns is not None:
                fields = [reader.schema.get_field_index(c) for c in columns]
                options = pa.ipc.IpcReadOptions(included_fields=fields)
                reader = pa.ipc.open_file(source, options=options)
            return reader.read_all()

    def _any_intraday_duplicate(self, days: np.ndarray) -> bool:
        """True if a symbol has two rows on one trading date (read_panel keeps clock times)."""
        _, day = np.unique(days, return_inverse=True)
        shared, rows = 0, 0
        for b in range(len(self.blocks)):
            table = self._spilled(b, ["_pos", "_dcode"])
            pos = table["_pos"].to_numpy().astype(np.int64)  # int32 on disk
            key = pos * (len(days) + 1) + day[table["_dcode"].to_numpy()]
            shared += int(pd.Series(key).duplicated(keep=False).sum())
            rows += len(key)
        if 0 < shared < 0.5 * rows:  # read_panel's rule: a few rows never make a file intraday
            raise RelcastDataError(
                f"{self.source}: column {self.date_col!r} gives {shared} of {rows} rows a "
                "trading day shared with another row of their symbol (the rest of the file is "
                "daily); read as they are, these rows would turn the whole file into intraday "
                "bars. Remove the extra rows (read_panel names them)."
            )
        return shared > 0

    def _standardised(self, b: int, date_format, *, whole: bool = False) -> pd.DataFrame:
        """Block ``b`` as read_panel's standardised table (``date, symbol, <fields>, _file,
        _line``), its dates those of the whole column."""
        raw = self._spilled(b).to_pandas(self_destruct=True, split_blocks=True)
        _release_arrow()
        raw.columns = [self.lower.get(c, c) for c in raw.columns]
        dates = self.final[raw.pop("_dcode").to_numpy()]
        raw[self.date_col] = dates  # parsed already: the block's own parse would see a part
        raw["_file"] = self.path.name
        out = standardise(raw, self.source, ROW_WORD, date_format, whole=whole)
        out["date"] = dates
        return out

    def _fill(self, values_path: Path, meta, date_format) -> np.ndarray:
        """Pass 3: check, clean and count each block, write its slab; returns the mask."""
        from numpy.lib.format import open_memmap

        T, N = len(self.dates), len(self.symbols)
        mask = np.zeros((T, N), dtype=bool)
        self.fields, values = None, None
        self.failed: list[pd.DataFrame] = []  # rows of conflicting duplicates
        self.stats: dict[str, tuple[int, int, int, int]] = {}  # rows, bad, first line, block
        self.empty = set(OHLCV_FIELDS)  # core columns empty in every row so far
        for b, (a, z) in enumerate(self.blocks):
            out = self._standardised(b, date_format)
            self.empty &= {c for c in OHLCV_FIELDS if out[c].isna().all()}
            fields = tuple(c for c in out.columns if c[0] != "_" and c not in ("date", "symbol"))
            if self.fields is not None and fields != self.fields:
                odd = sorted(set(fields) ^ set(self.fields))
                raise RelcastDataError(
                    f"{self.source}: column(s) {odd} hold numbers in some rows and only text in "
                    "others; write numbers in every row or remove the column(s)"
                )
            self.fields = fields
            health = DataHealth(self.source)
            try:
                frame = check_structure(out, self.source, health)
            except RelcastDataError:
                # raised after every block, with the rows of every doubled (date, symbol)
                self.failed.append(out[out.duplicated(["date", "symbol"], keep=False)])
                if sum(map(len, self.failed)) > self.block_rows:
                    break
                continue
            if self.failed:
                continue
            frame = clean_bars(
                frame, self.source, health, max_bad_fraction=np.inf, strict=self.strict
            )
            self._count(frame, health, b)
            count_gaps(frame, self.dates, health)
            part = frame_to_panel(frame, meta)  # (T_b, z - a, F)
            if list(part.symbols) != list(self.symbols[a:z]):
                raise AssertionError(f"block {b} holds {part.symbols}, not {self.symbols[a:z]}")
            if values is None:
                values = open_memmap(values_path, "w+", np.float32, (T, N, len(fields)))
            slab = np.full((T, z - a, len(fields)), np.nan, dtype=np.float32)
            t = np.searchsorted(self.dates, part.dates)
            slab[t] = part.values
            mask[t, a:z] = part.mask
            for c in range(0, T, DATE_CHUNK):
                values[c : c + DATE_CHUNK, a:z] = slab[c : c + DATE_CHUNK]
                release_pages(values)
            for reason, per in health.counts.items():
                self.health.add_counts(reason, np.array(list(per)), np.array(list(per.values())))
            self.health.excluded.update(health.excluded)
            self.health.rows += len(frame)
        if values is not None:
            values.flush()
        del values
        return mask

    def _count(self, frame: pd.DataFrame, health: DataHealth, b: int) -> None:
        """Per symbol of a cleaned block: rows, bad rows (as clean_bars counts them), the line
        of its first row (read_panel's symbol order in messages) and the block."""
        rows = frame["symbol"].value_counts()
        first = frame.groupby("symbol", observed=True)["_line"].min()
        for sym, n in rows[rows > 0].items():
            bad = sum(health.counts.get(r, {}).get(str(sym), 0) for r in self.counted)
            self.stats[str(sym)] = (int(n), int(bad), int(first[sym]), b)

    def _refuse(self, date_format, max_bad_fraction: float, strict: bool) -> dict[str, str]:
        """Raise what read_panel raises for the whole table, in its order; else the symbols
        over ``max_bad_fraction`` to exclude (``{symbol: why}``; ``strict`` raises)."""
        if self.empty:  # a core column empty in every block: block 0 says it as read_panel
            self._standardised(0, date_format, whole=True)
        if self.failed:
            rows = pd.concat(self.failed, ignore_index=True)
            rows.attrs["row_word"] = ROW_WORD
            check_structure(rows, self.source, DataHealth(self.source))
        syms = sorted(self.stats, key=lambda s: self.stats[s][2])
        rows_per, bad_per = (np.array([self.stats[s][k] for s in syms]) for k in (0, 1))
        broken = np.flatnonzero(bad_per > max_bad_fraction * np.maximum(rows_per, MIN_ROWS))
        if len(broken) == 0:
            return {}
        if not strict:
            return {
                syms[i]: f"{bad_per[i]} of {rows_per[i]} rows bad, more than "
                f"data.max_bad_fraction={max_bad_fraction:g}"
                for i in broken
            }
        worst = syms[broken[np.argmax(bad_per[broken] / rows_per[broken])]]
        b = self.stats[worst][3]
        elsewhere = tuple(syms[i] for i in broken if self.stats[syms[i]][3] != b)
        health = DataHealth(self.source)
        frame = check_structure(self._standardised(b, date_format), self.source, health)
        clean_bars(
            frame,
            self.source,
            health,
            max_bad_fraction=max_bad_fraction,
            also_broken=elsewhere,
            strict=True,
        )
        raise AssertionError(f"{worst} has too many bad rows, but its block passed")


def _symbol_order(present: list[str], meta: pd.DataFrame | None) -> np.ndarray:
    """read_panel's symbol order: the universe's, then the other symbols sorted."""
    if meta is None:
        return np.array(present, dtype=str)
    have = set(present)
    order = [s for s in meta["symbol"] if s in have]
    listed = set(order)
    return np.array(order + [s for s in present if s not in listed], dtype=str)


def _blocks(rows: list[int], T: int, block_rows: int) -> list[tuple[int, int]]:
    """Consecutive symbol ranges ``(a, z)`` with at most ``block_rows`` rows and
    ``max(block_rows, T)`` cells of ``T`` dates each (one symbol at least)."""
    blocks, a, held = [], 0, 0
    for i, n in enumerate(rows):
        if i > a and (held + n > block_rows or (i + 1 - a) * T > max(block_rows, T)):
            blocks.append((a, i))
            a, held = i, 0
        held += n
    return blocks + [(a, len(rows))]
