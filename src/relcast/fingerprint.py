"""The fingerprint of the data a run was prepared from: each input file's size and mtime and
hashes of the market (``prepare`` records it; a rerun on changed data stops and asks for
``--force``). Re-exported by :mod:`relcast.runfolder`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def data_paths(source: str, universe: str | None = None) -> list[Path]:
    """The input files a data source reads (none for the bundled ``demo`` and ``synthetic``)."""
    paths: list[Path] = []
    if source not in ("demo", "synthetic"):
        root = Path(source)
        if root.is_dir():
            paths += sorted(p for p in root.rglob("*") if p.is_file())
        else:
            paths.append(root)
    if universe:
        paths.append(Path(universe))
    return paths


def _file_stats(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        except OSError:
            out.append({"path": str(p.resolve()), "size": None, "mtime_ns": None})
    return out


def panel_hashes(panel) -> dict[str, str]:
    """SHA-256 of the market's dates and symbols, and of its values and mask."""
    import numpy as np

    keys = hashlib.sha256()
    keys.update(np.asarray(panel.dates, dtype="datetime64[ns]").astype("int64").tobytes())
    keys.update("\n".join(str(s) for s in panel.symbols).encode())
    from relcast.data.panel import release_pages

    values = hashlib.sha256()  # the float64 bytes of the values, fed a block of dates at a time
    step = max(1, (64 << 20) // max(1, 8 * panel.values[0].size))  # ~64 MB
    for a in range(0, len(panel.dates), step):
        values.update(np.ascontiguousarray(panel.values[a : a + step], dtype=np.float64).data)
        release_pages(panel.values)  # a memory-mapped panel's pages
    values.update(np.ascontiguousarray(panel.mask).tobytes())
    values.update("\n".join(panel.fields).encode())
    return {"dates_symbols": keys.hexdigest(), "values": values.hexdigest()}


def data_fingerprint(paths: list[Path], panel) -> dict:
    """What ``prepare`` records: each input file's size and mtime, and the panel's hashes."""
    return {"files": _file_stats(paths), **panel_hashes(panel)}


def data_changes(recorded: dict | None, paths: list[Path], load: Callable[[], Any]) -> str | None:
    """How the data differs from ``recorded`` (None: unchanged, or no fingerprint recorded).

    Files with the same size and mtime are taken as unchanged without reading them; when a
    file differs, ``load()`` reads the market and its hashes decide (a file that was only
    touched or copied is not a change).
    """
    if not recorded:
        return None  # a run from before fingerprints: nothing to compare with
    now = _file_stats(paths)
    if now == recorded.get("files"):
        return None
    before = {f["path"]: f for f in recorded.get("files", [])}
    after = {f["path"]: f for f in now}
    changed = sorted(p for p in after.keys() & before.keys() if after[p] != before[p])
    added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    try:
        hashes = panel_hashes(load())
    except Exception as exc:  # the data no longer reads: a change, say why
        hashes = {"error": str(exc)}
    if all(hashes.get(k) == recorded.get(k) for k in ("dates_symbols", "values")):
        return None
    parts = []
    for label, names in (("changed", changed), ("new", added), ("gone", removed)):
        if names:
            shown = ", ".join(Path(n).name for n in names[:3])
            parts.append(
                f"{label}: {shown}" + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
            )
    if "error" in hashes:
        what = f"it no longer reads ({hashes['error']})"
    elif hashes["dates_symbols"] != recorded.get("dates_symbols"):
        what = "its dates or symbols differ"
    else:
        what = "its prices or volumes differ"
    return f"{'; '.join(parts) or 'input files differ'}; {what}"
