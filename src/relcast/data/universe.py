"""Per-symbol metadata (``symbol, name, sector, market, is_index``) from a file or DataFrame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from relcast.data.panel import META_COLUMNS, RelcastDataError

SYMBOL_ALIASES = ("symbol", "ticker", "instrument")


def read_universe(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Per-symbol metadata from a CSV/YAML/JSON file or DataFrame.

    Only ``symbol`` is required; ``name, sector, market, is_index`` default to the symbol,
    ``"unknown"``, ``"unknown"`` and False. YAML/JSON may be a list of records, a mapping
    ``{symbol: {sector: ..., ...}}`` or ``{"symbols": [records]}``.
    """
    where = "universe" if isinstance(source, pd.DataFrame) else str(source)
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
    else:
        path = Path(source)
        if not path.is_file():
            raise RelcastDataError(f"{path}: universe file not found")
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml", ".json"):
            text = path.read_text()
            if suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
            frame = _records_to_frame(data, where)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if "symbol" not in frame.columns:
        for alias in SYMBOL_ALIASES[1:]:
            if alias in frame.columns:
                frame = frame.rename(columns={alias: "symbol"})
                break
        else:
            raise RelcastDataError(
                f"{where}: missing column 'symbol'; found columns {list(frame.columns)}; "
                f"a universe needs 'symbol' and optionally {list(META_COLUMNS[1:])}"
            )
    frame["symbol"] = frame["symbol"].astype(str).str.strip()
    duplicated = frame["symbol"].duplicated(keep=False)
    if duplicated.any():
        raise RelcastDataError(
            f"{where}: column 'symbol' lists {sorted(set(frame.loc[duplicated, 'symbol']))[:5]} "
            "more than once; keep one row per symbol"
        )
    out = pd.DataFrame({"symbol": frame["symbol"].to_numpy()})
    for col, default in (("name", None), ("sector", "unknown"), ("market", "unknown")):
        if col in frame.columns:
            values = frame[col].astype(object).where(frame[col].notna(), None)
            values = [None if v in (None, "") else str(v) for v in values]
        else:
            values = [None] * len(frame)
        fill = out["symbol"] if default is None else [default] * len(frame)
        out[col] = [v if v is not None else f for v, f in zip(values, fill, strict=True)]
    out["is_index"] = (
        [_to_bool(v, where) for v in frame["is_index"]] if "is_index" in frame.columns else False
    )
    return out[list(META_COLUMNS)]


def _to_bool(value: object, where: str) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "t"):
        return True
    if text in ("0", "false", "no", "n", "f", ""):
        return False
    raise RelcastDataError(f"{where}: column 'is_index' has {value!r}; use true/false")


def _records_to_frame(data: object, where: str) -> pd.DataFrame:
    """YAML/JSON universe shapes -> DataFrame."""
    if isinstance(data, dict) and "symbols" in data and isinstance(data["symbols"], list):
        data = data["symbols"]
    if isinstance(data, dict):
        data = [{"symbol": k, **(v or {})} for k, v in data.items()]
    if isinstance(data, list):
        rows = [r if isinstance(r, dict) else {"symbol": r} for r in data]
        return pd.DataFrame(rows)
    raise RelcastDataError(
        f"{where}: expected a list of {{symbol, name, sector, market, is_index}} records"
    )
