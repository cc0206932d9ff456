"""Run configuration: validated pydantic models, YAML presets and ``--set key=value`` overrides.

A run is ``defaults <- preset file <- user YAML <- --set overrides`` (CLI flags such as
``--data`` count as overrides, and only when given). Unknown keys are errors, values have
strict types (``max_epochs=true`` is not 1), and each error names the bad key and, for
choices, the allowed values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRESETS = ("small", "medium", "large")
PRESET_DIR = Path(__file__).parent / "configs"


class RelcastConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what is allowed."""


class _Section(BaseModel):
    # strict: YAML already gives typed values, so a bool for an int or a number for a list
    # is a mistake to report, not to coerce
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


def _as_text(value: Any) -> Any:
    """Dates and numbers written in YAML (``2004-01-01``, ``2020``) as the text they were."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class DataConfig(_Section):
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
    synthetic_stocks: int = Field(20, ge=2, description="stocks when source is 'synthetic'")
    synthetic_days: int = Field(800, ge=50, description="days when source is 'synthetic'")
    alpha158: bool = Field(
        False,
        description="add qlib's Alpha158 features (group 'alpha158') to every stage's inputs",
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
        "counted in data_health.json; a symbol with more than this share of them is an error",
    )

    @field_validator("date_format")
    @classmethod
    def _known_date_format(cls, value: str | None) -> str | None:
        if value is not None and value not in ("dayfirst", "monthfirst") and "%" not in value:
            raise ValueError(
                f"{value!r} is not a date format: use dayfirst, monthfirst or a strftime "
                "format such as '%d/%m/%Y'"
            )
        return value


class SplitConfig(_Section):
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
        order = [stamps[k] for k in ("train_end", "valid_end", "test_end") if k in stamps]
        if order != sorted(order) or len(set(order)) != len(order):
            raise ValueError(
                "split.train_end < split.valid_end < split.test_end must hold, got "
                + ", ".join(f"{k}={v}" for k, v in given.items() if v is not None)
            )
        return self


class Stage1Settings(_Section):
    d_model: int = Field(64, ge=8, description="Transformer width")
    n_heads: int = Field(4, ge=1, description="attention heads")
    n_layers: int = Field(2, ge=1, description="encoder layers")
    dropout: float = Field(0.1, ge=0, lt=1)
    relationship_dim: int = Field(16, ge=2, le=256, description="learned bottleneck size (V2)")
    use_sector_embedding: bool = True
    multitask: bool = Field(False, description="add stock-correlation and sector heads")
    loss: Literal["mse", "ic", "listnet", "pairwise", "pairwise_hinge"] = Field(
        "ic",
        description="ic: 1 - daily IC (scale-free, learns fastest); mse: on normalised labels; "
        "listnet: softmax cross-entropy over each date's stocks; pairwise: RankNet logistic "
        "loss over each date's stock pairs (64 sampled partners per stock); pairwise_hinge: RSR's "
        "hinge (use with rank_mse_weight > 0)",
    )
    label_norm: Literal["cross_section", "cs_rank"] = Field(
        "cross_section",
        description="labels Stage1's losses read: cross_section z-score, or cs_rank (qlib's "
        "CSRankNorm); the ic loss uses raw labels under cross_section",
    )
    rank_mse_weight: float = Field(
        0.0, ge=0, description="MSE weight added to listnet/pairwise (RSR adds MSE to its ranking)"
    )
    horizons: int = Field(
        1,
        ge=1,
        description="horizons Stage1 is trained on and predicts (1: the next bar). Longer "
        "horizons overlap from one date to the next, and Stage1 memorised them instead of "
        "learning relationships; Stage3 forecasts all data.horizons",
    )
    max_epochs: int = Field(30, ge=1)
    batch_dates: int = Field(32, ge=1, description="dates per batch (each with all stocks)")
    lr: float = Field(1e-3, gt=0)
    patience: int = Field(5, ge=1, description="early-stopping patience on val rank IC")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Stage1Settings:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"stage1.d_model ({self.d_model}) must be divisible by "
                f"stage1.n_heads ({self.n_heads})"
            )
        return self


class Stage2Settings(_Section):
    enabled: bool = Field(True, description="fit LightGBM on Stage1 residuals")
    num_leaves: int = Field(31, ge=2)
    n_estimators: int = Field(300, ge=1)
    learning_rate: float = Field(0.05, gt=0)


class RelationshipSettings(_Section):
    extractor: Literal["v1", "v2", "v3", "v1+v2"] = Field(
        "v2", description="relationship extractor"
    )
    oof_folds: int = Field(
        3, ge=0, description="out-of-fold folds over the training span (0: leaky)"
    )
    regime: bool = Field(
        False,
        description="regime one-hot features from the index (bull/bear/sideways, past data "
        "only) and a learned gate in every hybrid Stage3 model that scales the index vs "
        "sector relationship columns by regime; needs extractor v1, v3 or v1+v2",
    )
    regime_window: int = Field(60, ge=2, description="trailing bars of the regime detector")

    @model_validator(mode="after")
    def _regime_has_something_to_gate(self) -> RelationshipSettings:
        if self.regime and self.extractor == "v2":
            raise ValueError(
                "relationships.regime=true gates the index and sector relationship columns, "
                "which extractor v2 (embeddings only) does not produce; use "
                "relationships.extractor=v1, v3 or v1+v2"
            )
        return self


class Stage3Settings(_Section):
    models: list[Literal["tft", "lstm", "gru", "tcn"]] = Field(
        ["gru"], min_length=1, description="temporal models (at least one)"
    )
    feature_sets: list[Literal["hybrid", "own", "rawconcat"]] = Field(
        ["hybrid", "own"],
        min_length=1,
        description="hybrid = the design; own/rawconcat = comparisons",
    )
    baseline_models: list[Literal["tft", "lstm", "gru", "tcn"]] | None = Field(
        None,
        description="models that also run the own/rawconcat comparisons (null: every model); "
        "the others run hybrid only",
    )
    hidden_size: int = Field(64, ge=4)
    num_layers: int = Field(2, ge=1, description="RNN layers / TCN levels per kernel")
    heads: int = Field(4, ge=1, description="TFT attention heads")
    lookback: int = Field(60, ge=2, description="bars of history per window")
    quantiles: list[float] | None = Field([0.1, 0.5, 0.9], description="null for point forecasts")
    dropout: float = Field(0.1, ge=0, lt=1)
    max_epochs: int = Field(20, ge=1)
    batch_size: int = Field(1024, ge=1, description="scored samples (window ends) per step")
    chunk_length: int = Field(
        128,
        ge=2,
        description="steps per training chunk of a stock's span, burn-in included (raised to "
        "2 x lookback if shorter): sequence training scores every window end of a chunk in "
        "one pass; short chunks put more stocks in a batch (faster RNNs on CPU)",
    )
    lr: float = Field(1e-3, gt=0)
    patience: int = Field(4, ge=1)
    label_norm: Literal["cross_section", "cs_rank", "none"] = Field(
        "cross_section",
        description="training target: cross_section z-score per date, cs_rank (qlib's "
        "CSRankNorm: ranks per date mapped to z units), none (raw returns)",
    )

    @model_validator(mode="after")
    def _quantiles_valid(self) -> Stage3Settings:
        if self.quantiles is not None:
            q = self.quantiles
            if not q or any(not 0 < x < 1 for x in q) or sorted(q) != q or len(set(q)) != len(q):
                raise ValueError(f"stage3.quantiles must be increasing values in (0, 1), got {q}")
        return self


class EvaluationSettings(_Section):
    topk: int = Field(5, ge=1, description="names held by the top-k dropout portfolio")
    n_drop: int = Field(1, ge=0, description="names replaced per day")
    buy_cost: float = Field(0.0005, ge=0, description="5 bp")
    sell_cost: float = Field(0.0015, ge=0, description="15 bp")
    periods_per_year: int = Field(252, ge=1, description="252 US daily, 238 A-shares (qlib)")
    seeds: int = Field(1, ge=1, description="repeat Stage3 with this many seeds (mean, std)")

    @model_validator(mode="after")
    def _drop_at_most_held(self) -> EvaluationSettings:
        if self.n_drop > self.topk:
            raise ValueError(
                f"evaluation.n_drop ({self.n_drop}) must be <= evaluation.topk ({self.topk})"
            )
        return self


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
STRATEGIES = (
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false",
    "fsdp",
    "deepspeed",
    "single_device",
)


class TrainerSettings(_Section):
    accelerator: Literal[ACCELERATORS] = Field("auto", description="cpu, gpu, auto, ...")
    devices: int | str = Field(
        1, description="devices per node: a count (-1: all), 'auto', or ids like '0,1'"
    )
    num_nodes: int = Field(1, ge=1)
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn, ...")
    seed: int = 0
    progress: bool = True

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; use one of {', '.join(STRATEGIES)}")
        return value

    @field_validator("devices")
    @classmethod
    def _device_count_or_ids(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value == 0 or value < -1:
                raise ValueError(f"devices must be >= 1 or -1 (all), got {value}")
            return value
        ids = [p.strip() for p in value.split(",") if p.strip()]
        if value != "auto" and not (ids and all(p.lstrip("-").isdigit() for p in ids)):
            raise ValueError(
                f"devices must be a count (1, 2, -1 for all), 'auto' or device ids like "
                f"'0,1', got {value!r}"
            )
        return value


class RelcastConfig(_Section):
    """The whole run. Every field has a default; presets override a few."""

    preset: Literal["small", "medium", "large"] = "small"
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    stage1: Stage1Settings = Stage1Settings()
    stage2: Stage2Settings = Stage2Settings()
    relationships: RelationshipSettings = RelationshipSettings()
    stage3: Stage3Settings = Stage3Settings()
    evaluation: EvaluationSettings = EvaluationSettings()
    trainer: TrainerSettings = TrainerSettings()

    @property
    def embargo(self) -> int:
        return self.split.embargo if self.split.embargo is not None else self.data.horizons

    @model_validator(mode="after")
    def _embargo_covers_horizons(self) -> RelcastConfig:
        if self.split.embargo is not None and self.split.embargo < self.data.horizons:
            raise ValueError(
                f"split.embargo ({self.split.embargo}) must be >= data.horizons "
                f"({self.data.horizons}) so no label window crosses spans"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class _YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3`` as a number, as YAML 1.2 does (PyYAML's 1.1
    rules need ``1.0e-3``); config types are strict, so a learning rate must not be text."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    """What ``yaml.safe_load`` does, with :class:`_YamlLoader` (a SafeLoader: no objects)."""
    loader = _YamlLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> dict:
    """``"stage1.d_model=128"`` -> ``{"stage1": {"d_model": 128}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise RelcastConfigError(f"--set expects key=value (e.g. stage1.d_model=128), got {item!r}")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RelcastConfigError(f"--set has an empty key in {item!r}")
    try:
        value: Any = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).strip()
        raise RelcastConfigError(
            f"--set {key.strip()}: the value {raw!r} is not valid YAML ({problem}); quote "
            f"text that holds YAML syntax, e.g. --set '{key.strip()}=\"...\"'"
        ) from None
    return _nest(parts, value)


def _nest(parts: list[str], value: Any) -> dict:
    """``["stage1", "d_model"], 128`` -> ``{"stage1": {"d_model": 128}}``."""
    for part in reversed(parts):
        value = {part: value}
    return value


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise RelcastConfigError(f"config file not found: {path}")
    try:
        loaded = _load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RelcastConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise RelcastConfigError(f"{path}: top level must be a mapping of sections")
    return loaded


def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> RelcastConfig:
    """Resolve defaults <- preset <- file <- overrides into a validated :class:`RelcastConfig`.

    ``overrides`` are ``key=value`` texts (the value parsed as YAML, like ``--set``);
    ``values`` maps dotted keys to values taken literally (a CLI flag such as ``--data``:
    a path like ``prices #2.csv`` stays a path). Both win over the file; ``values`` last.
    """
    merged: dict = {}
    user = _read_yaml(Path(file)) if file is not None else {}
    for item in overrides:
        user = _deep_merge(user, parse_override(item))
    for key, value in (values or {}).items():
        user = _deep_merge(user, _nest([p for p in key.split(".") if p], value))
    preset = preset or user.get("preset") or "small"
    if preset not in PRESETS:
        raise RelcastConfigError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    merged = _deep_merge(_read_yaml(PRESET_DIR / f"{preset}.yaml"), user)
    merged["preset"] = preset
    try:
        return RelcastConfig.model_validate(merged)
    except ValidationError as exc:
        raise RelcastConfigError(_explain(exc, file)) from None


def _explain(exc: ValidationError, file: str | Path | None) -> str:
    where = f" in {file}" if file else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            section = _section_of(err["loc"][:-1])
            allowed = ", ".join(section.model_fields) if section else "?"
            lines.append(f"  {key}: unknown key (allowed here: {allowed})")
        elif isinstance(err.get("input"), dict) or err["type"] == "value_error":
            # a check of ours: its message names the values and says what to do
            lines.append(f"  {key}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _section_of(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RelcastConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return None
        if not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model


def check_trainer(settings: TrainerSettings) -> None:
    """Ask Lightning whether this machine can run ``trainer.*`` (e.g. ``accelerator=gpu``
    without a GPU, ``strategy=deepspeed`` without deepspeed), before anything is trained."""
    import lightning
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from relcast.training.common import _quiet_lightning

    _quiet_lightning()
    try:
        lightning.Trainer(
            accelerator=settings.accelerator,
            devices=settings.devices,
            strategy=settings.strategy,
            num_nodes=settings.num_nodes,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as exc:
        raise RelcastConfigError(
            f"trainer settings accelerator={settings.accelerator!r}, devices="
            f"{settings.devices!r}, strategy={settings.strategy!r} cannot run here: {exc}"
        ) from None
