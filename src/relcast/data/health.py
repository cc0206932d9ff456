"""The data-health account: every cell the reader masked or repaired, by reason and symbol.

Real files carry a few bad rows. Refusing a whole market for them is as wrong as cleaning
them silently, so :func:`relcast.read_panel` applies the rules in :data:`REASONS` (see
:mod:`relcast.data.bars`), counts what each changed, and attaches the count to the panel
(``panel.health``). ``relcast check`` prints it, ``relcast run`` saves it as
``data_health.json`` and the report shows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# reason -> (what the reader did, the rule in words). Order = order of the checks: a row
# is counted under the first reason that applies to it.
REASONS: dict[str, tuple[str, str]] = {
    "duplicate_bar": ("dropped", "a (date, symbol) row repeated with identical values"),
    "inf": ("masked", "an infinite open/high/low/close/volume"),
    "missing_open": ("masked", "open = 0 or empty (the source's missing value), close > 0"),
    "missing_value": ("masked", "an empty open/high/low/close/volume (a suspension)"),
    "nonpositive_price": ("masked", "open/high/low/close <= 0"),
    "negative_volume": ("masked", "volume < 0"),
    "high_below_low": ("masked", "high < low"),
    "stale_bar": (
        "masked",
        "open/high/low/close/volume all equal to the previous bar's, volume > 0",
    ),
    "extreme_jump": (
        "masked",
        "close more than jump_factor (3x) away from both neighbouring closes, same direction",
    ),
    "high_low_range": (
        "repaired",
        "high below max(open, close) or low above min(open, close): widened to include them",
    ),
    "gap": ("missing", "no row on a date the market traded, inside the symbol's first..last row"),
}
# reasons that count towards max_bad_fraction: not missing values (suspensions, the
# source's Open = 0 no-trade bars of illiquid symbols), gaps or identical duplicates, and not
# rows the reader repairs (high_low_range: the bar is kept, widened)
MISSING_REASONS = ("missing_open", "missing_value", "gap", "duplicate_bar")
REPAIRED_REASONS = ("high_low_range",)
BAD_REASONS = tuple(r for r in REASONS if r not in MISSING_REASONS + REPAIRED_REASONS)


@dataclass
class DataHealth:
    """Counts of masked / repaired / dropped cells by reason and symbol for one data source.

    Attributes:
        source: the path that was read.
        rows: rows read (after dropping identical duplicates).
        counts: ``{reason: {symbol: rows}}``, reasons from :data:`REASONS`, zeros left out.
        date_rule: the one rule the date column was read with (``date: year first ...``).
        excluded: ``{symbol: why}``: symbols left out of the run (too many bad rows, or no
            usable row at all); ``data.strict: true`` refuses the market instead.
    """

    source: str
    rows: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    date_rule: str = ""
    excluded: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, symbols: np.ndarray) -> None:
        """Count one row per entry of ``symbols`` (the symbols of the affected rows)."""
        if reason not in REASONS:
            raise KeyError(f"unknown data-health reason {reason!r}")
        if len(symbols) == 0:
            return
        names, n = np.unique(np.asarray(symbols, dtype=str), return_counts=True)
        per = self.counts.setdefault(reason, {})
        for name, k in zip(names.tolist(), n.tolist(), strict=True):
            per[name] = per.get(name, 0) + int(k)

    def add_counts(self, reason: str, symbols: np.ndarray, rows: np.ndarray) -> None:
        """Count ``rows[i]`` rows for ``symbols[i]`` (zeros skipped)."""
        keep = np.asarray(rows) > 0
        if keep.any():
            self.add(
                reason, np.repeat(np.asarray(symbols, dtype=str)[keep], np.asarray(rows)[keep])
            )

    def totals(self) -> dict[str, int]:
        """``{reason: rows}`` over all symbols, in :data:`REASONS` order."""
        return {r: sum(self.counts[r].values()) for r in REASONS if self.counts.get(r)}

    def changed_rows(self) -> int:
        """Rows the reader masked, repaired or dropped (gaps and suspensions excluded)."""
        return sum(n for r, n in self.totals().items() if r not in ("gap", "missing_value"))

    def to_dict(self) -> dict:
        totals = self.totals()
        return {
            "source": self.source,
            "rows": self.rows,
            "totals": totals,
            "actions": {r: REASONS[r][0] for r in totals},
            "rules": {r: REASONS[r][1] for r in totals},
            "by_symbol": {r: dict(sorted(self.counts[r].items())) for r in totals},
            "date_rule": self.date_rule,
            "excluded": dict(sorted(self.excluded.items())),
        }

    @classmethod
    def from_dict(cls, data: dict) -> DataHealth:
        return cls(
            data["source"],
            int(data.get("rows", 0)),
            dict(data.get("by_symbol", {})),
            str(data.get("date_rule", "")),
            dict(data.get("excluded", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write ``data_health.json`` atomically."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}.{id(self)}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    def table(self, top: int = 3) -> str:
        """The account as a text table: reason, action, rows, symbols, top symbols."""
        totals = self.totals()
        rule = [f"dates read as {self.date_rule}"] if self.date_rule else []
        out = [f"excluded {len(self.excluded)} symbol(s) from the run:"] if self.excluded else []
        out += [f"  {s}: {why}" for s, why in sorted(self.excluded.items())]
        if not totals:
            head = f"{self.source}: {self.rows} rows, nothing masked or repaired"
            return "\n".join([head, *rule, *out])
        lines = [f"{self.source}: {self.rows} rows read", *rule, *out, ""]
        head = f"{'reason':<18} {'action':<9} {'rows':>8} {'symbols':>8}  most affected"
        lines += [head, "-" * len(head)]
        for reason, n in totals.items():
            per = self.counts[reason]
            worst = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            shown = ", ".join(f"{s} {k}" for s, k in worst)
            lines.append(f"{reason:<18} {REASONS[reason][0]:<9} {n:>8} {len(per):>8}  {shown}")
        lines.append("")
        lines += [f"{r}: {REASONS[r][1]}" for r in totals]
        return "\n".join(lines)
