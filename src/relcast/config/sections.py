"""The sections of a run's configuration about the data: the base class of every section,
``data`` and ``split``. The stage sections are in :mod:`relcast.config.stages`;
:mod:`relcast.config` puts them together with the evaluation and trainer sections and loads
them from presets, files and ``--set``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    # strict: YAML already gives typed values, so a bool for an int or a number for a list
    # is a mistake to report, not to coerce
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    RENAMED: ClassVar[dict[str, str]] = {}
    """Keys this section no longer has -> what to write instead (an error, never an alias)."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [key for key in data if key in cls.RENAMED]
            if old:
                raise ValueError(
                    "; ".join(f"{key} was renamed: write {cls.RENAMED[key]}" for key in old)
                )
        return data


def _as_text(value: Any) -> Any:
    """Dates and numbers written in YAML (``2004-01-01``, ``2020``) as the text they were."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class DataConfig(Section):
    source: str = Field(
        "demo", description="'demo', 'synthetic', or a path to CSV/Parquet/folder/qlib dir"
    )
    universe: str | None = Field(
        None, description="universe file (CSV/YAML/JSON) with sectors etc."
    )
    start: str | None = Field(None, description="first date to use (inclusive)")
    end: str | None = Field(None, description="last date to use (inclusive)")
    horizons: int = Field(5, ge=1, le=60, description="forecast horizons 1..H (bars)")

    @field_validator("source", "universe", "start", "end", mode="before")
    @classmethod
    def _dates_as_text(cls, value: Any) -> Any:
        # YAML reads 2004-01-01 as a date; keep dates as ISO text like the CLI passes them
        return _as_text(value)

    @field_validator("start", "end")
    @classmethod
    def _is_a_date(cls, value: str | None) -> str | None:
        import pandas as pd

        try:
            if value is not None:
                pd.Timestamp(value)
        except (ValueError, TypeError):
            raise ValueError(f"{value!r} is not a date; write it as YYYY-MM-DD") from None
        return value

    label_delay: int = Field(0, ge=0, le=5, description="0: trade at t's close; 1: qlib's t+1")
    store: Literal["memory", "memmap"] = Field(
        "memory",
        description="where features and labels live: in memory, or a memory-mapped store in "
        "the run folder (feature_store/) that every step reads (docs/scaling.md)",
    )
    synthetic_stocks: int = Field(20, ge=2, description="stocks when source is 'synthetic'")
    synthetic_days: int = Field(
        800, ge=50, description="bars when source is 'synthetic' (days, or minutes: synthetic_freq)"
    )
    synthetic_freq: Literal["D", "1min"] = Field(
        "D", description="bars of the synthetic market: business days, or minutes (240 a day)"
    )
    alpha158: bool = Field(
        False,
        description="add qlib's Alpha158 features (group 'alpha158') to every stage's inputs",
    )
    industry_relative: bool = Field(
        False,
        description="add industry-relative own features (group 'industry': each own column "
        "minus its industry's mean that date, and the industry's mean returns); industries "
        "from the universe file's sector column",
    )
    date_format: str | None = Field(
        None,
        description="null: detect (a column whose day/month order cannot be told is refused); "
        "'dayfirst', 'monthfirst', or a strftime format such as '%d/%m/%Y'",
    )
    symbol_pattern: str | None = Field(
        None,
        description="per-symbol folders: file-name template like 'NASDAQ_{symbol}_30Y' "
        "(null: the name without .csv, minus a <prefix>_ / _<suffix> all files share)",
    )
    max_bad_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="bad rows (non-positive/inf prices, high < low, ...) are masked and "
        "counted in data_health.json; a symbol with more than this share of them (repaired "
        "rows not counted) is excluded from the run and listed there",
    )
    strict: bool = Field(
        False,
        description="true: a symbol over max_bad_fraction (or without a usable row) stops the "
        "run instead of being excluded",
    )

    @field_validator("date_format")
    @classmethod
    def _known_date_format(cls, value: str | None) -> str | None:
        if value is not None and value not in ("dayfirst", "monthfirst") and "%" not in value:
            raise ValueError(
                f"{value!r} is not a date format: use dayfirst, monthfirst or a strftime "
                "format such as '%d/%m/%Y'"
            )
        if value is not None and "%" in value:  # a directive pandas cannot read back
            import datetime

            import pandas as pd

            sample = datetime.datetime(2024, 1, 31, 9, 30).strftime(value)
            try:
                pd.to_datetime(pd.Series([sample]), format=value)
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"{value!r} is not a strftime format relcast can read ({exc}); e.g. "
                    "'%d/%m/%Y' or '%Y-%m-%d %H:%M'"
                ) from None
        return value

    @model_validator(mode="after")
    def _industry_in_memory(self) -> DataConfig:
        if self.industry_relative and self.store == "memmap":
            raise ValueError(
                "data.industry_relative needs every stock of a date at once and is built in "
                "memory only; set data.store=memory or data.industry_relative=false"
            )
        return self


class WalkForwardSettings(Section):
    """Walk-forward evaluation: test blocks of ``block_years`` calendar years from
    ``first_test`` to the data's end; each block trains on every date before the block
    before it (expanding window) and validates on that block (embargoes as for one split);
    every stage is retrained per block and the test blocks are scored pooled
    (:mod:`relcast.run.walk_forward`)."""

    first_test: str | None = Field(
        None, description="first day of the first test block, e.g. 2015-01-01 (null: one split)"
    )
    block_years: int = Field(1, ge=1, description="calendar years per test block")
    warm_start: bool = Field(
        True,
        description="each block's networks start from the block before's weights (fold models "
        "of the out-of-fold store excepted: they would leak)",
    )
    warm_epochs: int | None = Field(
        None,
        ge=1,
        description="a warm-started network trains for at most this many epochs (it starts "
        "from a fitted model; null: the stage's own max_epochs). The out-of-fold fold models "
        "start from scratch and keep the first block's epoch count",
    )

    @field_validator("first_test", mode="before")
    @classmethod
    def _first_as_text(cls, value: Any) -> Any:
        return _as_text(value)

    @field_validator("first_test")
    @classmethod
    def _a_date(cls, value: str | None) -> str | None:
        import pandas as pd

        if value is not None:
            try:
                pd.Timestamp(value)
            except (ValueError, TypeError):
                raise ValueError(
                    f"split.walk_forward.first_test={value!r} is not a date; write YYYY-MM-DD"
                ) from None
        return value


class SplitConfig(Section):
    walk_forward: WalkForwardSettings = Field(default_factory=WalkForwardSettings)
    valid_frac: float = Field(0.15, gt=0, lt=0.5, description="fraction of dates for validation")
    test_frac: float = Field(0.15, gt=0, lt=0.5, description="fraction of dates for test")
    embargo: int | None = Field(None, ge=0, description="dates dropped between spans (>= horizons)")
    train_end: str | None = Field(
        None, description="last training date (inclusive); with valid_end, replaces the fractions"
    )
    valid_end: str | None = Field(None, description="last validation date (inclusive)")
    test_end: str | None = Field(None, description="last test date (null: the data's last date)")

    @field_validator("train_end", "valid_end", "test_end", mode="before")
    @classmethod
    def _ends_as_text(cls, value: Any) -> Any:
        return _as_text(value)

    @model_validator(mode="after")
    def _ends_in_order(self) -> SplitConfig:
        import pandas as pd

        given = {k: getattr(self, k) for k in ("train_end", "valid_end", "test_end")}
        stamps = {}
        for key, value in given.items():
            if value is not None:
                try:
                    stamps[key] = pd.Timestamp(value)
                except (ValueError, TypeError):
                    raise ValueError(
                        f"split.{key}={value!r} is not a date; write it as YYYY-MM-DD"
                    ) from None
        if stamps and ("train_end" not in stamps or "valid_end" not in stamps):
            raise ValueError(
                "date splits need both split.train_end and split.valid_end "
                f"(got {sorted(stamps)}); split.test_end is optional"
            )
        if stamps and self.walk_forward.first_test is not None:
            raise ValueError(
                "split.walk_forward.first_test sets every block's spans: leave out "
                f"{', '.join('split.' + k for k in sorted(stamps))}"
            )
        order = [stamps[k] for k in ("train_end", "valid_end", "test_end") if k in stamps]
        if order != sorted(order) or len(set(order)) != len(order):
            raise ValueError(
                "split.train_end < split.valid_end < split.test_end must hold, got "
                + ", ".join(f"{k}={v}" for k, v in given.items() if v is not None)
            )
        return self
