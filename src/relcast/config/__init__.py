"""Run configuration: validated pydantic models, YAML presets and ``--set key=value`` overrides.

The data and split sections are in :mod:`relcast.config.sections`, the stage sections in
:mod:`relcast.config.stages`; presets live only in ``relcast/config/presets/*.yaml``.

A run is ``defaults <- preset file <- user YAML <- --set overrides`` (CLI flags such as
``--data`` count as overrides, and only when given). Unknown keys are errors, values have
strict types (``max_epochs=true`` is not 1), and each error names the bad key and, for
choices, the allowed values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from relcast.config.sections import DataConfig, Section, SplitConfig
from relcast.config.stages import (
    RelationshipSettings,
    Stage1Settings,
    Stage2Settings,
    Stage3Settings,
)

PRESETS = ("small", "medium", "large")
PRESET_DIR = Path(__file__).parent / "presets"


class RelcastConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what is allowed."""


class EvaluationSettings(Section):
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


class FactorSettings(Section):
    """One factor baseline (relcast.features.factors), scored like every model."""

    enabled: bool = Field(True, description="score this factor as a model")
    window: int | None = Field(
        None, ge=1, description="bars it looks back (default: the one in its name)"
    )


class BaselineSettings(Section):
    """The reference models scored beside relcast's (relcast.training.baselines): the factor
    baselines, LightGBM on the raw features, and the same LightGBM on labels shuffled within
    each date."""

    RENAMED: ClassVar[dict[str, str]] = {"momentum_window": "baselines.momentum_20d.window"}

    reversal_1d: FactorSettings = Field(FactorSettings(), description="minus the last bar's return")
    reversal_5d: FactorSettings = Field(
        FactorSettings(), description="minus the return over the last 5 bars"
    )
    momentum_20d: FactorSettings = Field(
        FactorSettings(), description="the return over the last 20 bars"
    )
    low_volatility_20d: FactorSettings = Field(
        FactorSettings(), description="minus the std of the last 20 bars' returns"
    )
    liquidity_20d: FactorSettings = Field(
        FactorSettings(), description="minus log of the 20-bar mean dollar volume"
    )
    lightgbm: bool = Field(True, description="fit lightgbm and control_shuffled_lightgbm")
    num_leaves: int = Field(31, ge=2, description="LightGBM leaves per tree")
    n_estimators: int = Field(500, ge=1, description="LightGBM rounds (early stopping on valid)")
    learning_rate: float = Field(0.05, gt=0, description="LightGBM shrinkage")
    min_data_in_leaf: int = Field(50, ge=1, description="LightGBM minimum rows per leaf")
    feature_fraction: float = Field(0.8, gt=0, le=1, description="features sampled per tree")
    bagging_fraction: float = Field(0.8, gt=0, le=1, description="rows sampled per tree")
    early_stopping: int = Field(30, ge=1, description="rounds without valid improvement")
    max_rows: int = Field(
        2_000_000,
        ge=1,
        description="LightGBM fits on at most this many (date, stock) rows of the training "
        "span (and of the validation span): a seeded sample above it bounds memory",
    )


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
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


class TrainerSettings(Section):
    accelerator: Literal[ACCELERATORS] = Field("auto", description="cpu, gpu, auto, ...")
    devices: int | str = Field(
        1, description="devices per node: a count (-1: all), 'auto', or ids like '0,1'"
    )
    num_nodes: int = Field(1, ge=1)
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn, ...")
    precision: Literal[PRECISIONS] = Field(
        "32-true",
        description="Lightning precision: 32-true, bf16-mixed (CPU and recent GPUs), "
        "16-mixed (GPU only), bf16-true, 64-true (docs/scaling.md)",
    )
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


class RelcastConfig(Section):
    """The whole run. Every field has a default; presets override a few."""

    preset: Literal[PRESETS] = "small"
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    stage1: Stage1Settings = Stage1Settings()
    stage2: Stage2Settings = Stage2Settings()
    relationships: RelationshipSettings = RelationshipSettings()
    stage3: Stage3Settings = Stage3Settings()
    evaluation: EvaluationSettings = EvaluationSettings()
    baselines: BaselineSettings = BaselineSettings()
    trainer: TrainerSettings = TrainerSettings()

    @property
    def embargo(self) -> int:
        return self.split.embargo if self.split.embargo is not None else self.data.horizons

    @property
    def span_embargo(self) -> int:
        """Dates cut between spans and around folds: the embargo plus the label delay (a
        label at t reads close[t + delay + H])."""
        return self.embargo + self.data.label_delay

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
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date like 2024-02-30
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
        loaded = _load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise RelcastConfigError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date like 2024-02-30
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

    from relcast.training.common import quiet_lightning

    quiet_lightning()
    try:
        lightning.Trainer(
            accelerator=settings.accelerator,
            devices=settings.devices,
            strategy=settings.strategy,
            num_nodes=settings.num_nodes,
            precision=settings.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as exc:
        raise RelcastConfigError(
            f"trainer settings accelerator={settings.accelerator!r}, devices="
            f"{settings.devices!r}, strategy={settings.strategy!r}, precision="
            f"{settings.precision!r} cannot run here: {exc}"
        ) from None
