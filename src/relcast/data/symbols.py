"""The symbol of each file of a per-symbol folder, from the file names."""

from __future__ import annotations

import os
import re
from pathlib import Path

from relcast.data.panel import RelcastDataError

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".txt")


def symbols_from_files(files: list[Path], symbol_pattern: str | None = None) -> list[str]:
    """The symbol of each per-symbol file, from its name without the CSV suffix.

    Only the suffix (``.csv``, ``.csv.gz``, ...) is removed, so ``BRK.B.csv`` is ``BRK.B`` and
    ``600000.SH.csv`` / ``600000.SZ.csv`` stay distinct. When every file name of the folder
    (two or more files) starts with the same ``<prefix>_`` or ends with the same
    ``_<suffix>``, those are removed: ``NASDAQ_AAPL_30Y.csv`` -> ``AAPL``. A
    ``symbol_pattern`` such as ``"NASDAQ_{symbol}_30Y"`` or ``"*_{symbol}"`` says it
    explicitly (``*`` matches anything; a file that does not match is an error).
    """
    stems = [_strip_suffix(f.name) for f in files]
    if symbol_pattern is not None:
        if "{symbol}" not in symbol_pattern:
            raise RelcastDataError(
                f"data.symbol_pattern={symbol_pattern!r} has no '{{symbol}}' placeholder; "
                "write it like 'NASDAQ_{symbol}_30Y'"
            )
        before, after = symbol_pattern.split("{symbol}", 1)

        def part(text: str) -> str:
            return ".*?".join(re.escape(p) for p in text.split("*"))

        regex = re.compile(f"{part(before)}(?P<symbol>.+?){part(after)}")
        matches = [regex.fullmatch(s) for s in stems]
        bad = [f.name for f, m in zip(files, matches, strict=True) if m is None]
        if bad:
            raise RelcastDataError(
                f"{files[0].parent}: {len(bad)} file name(s) do not match "
                f"data.symbol_pattern={symbol_pattern!r}, e.g. {bad[:5]}; fix the pattern or "
                "move those files out of the folder"
            )
        symbols = [m.group("symbol") for m in matches if m is not None]
    else:
        symbols = stems
        if len(stems) >= 2:
            prefix = os.path.commonprefix(stems)
            prefix = prefix[: prefix.rfind("_") + 1]
            suffix = os.path.commonprefix([s[::-1] for s in stems])[::-1]
            suffix = suffix[suffix.find("_") :] if "_" in suffix else ""
            cut = [s[len(prefix) : len(s) - len(suffix)] for s in stems]
            if all(cut) and len(set(cut)) == len(cut):
                symbols = cut
    seen: dict[str, str] = {}
    for file, sym in zip(files, symbols, strict=True):
        if sym in seen:
            raise RelcastDataError(
                f"{file.parent}: files {seen[sym]!r} and {file.name!r} both give symbol "
                f"{sym!r}; keep one file per symbol (or set data.symbol_pattern)"
            )
        seen[sym] = file.name
    return symbols


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(CSV_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name
