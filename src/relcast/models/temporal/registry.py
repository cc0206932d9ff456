"""Stage3 model registry: a name picks a temporal model (timm's ``create_model`` idea).

The contract every Stage3 model follows, so that the training module, the sequence loader
and the generic test (``tests/test_temporal_models.py``) never ask which model they hold:

Registration
    Decorate the class with ``@register_model("name")``. The class has a ``Config``
    attribute (a dataclass, best a subclass of :class:`TemporalConfig`) and
    ``__init__(self, config)``. ``create_model("name", **kwargs)`` builds
    ``cls.Config(**kwargs)`` (unknown keys raise a ``TypeError`` naming the allowed keys)
    and returns ``cls(config)``. Adding a model = one file + one import line in
    ``relcast/models/temporal/__init__.py`` + its tiny params in the generic test.
    The registry is the one list of model names: the config accepts ``stage3.models`` from
    :func:`available_models`, the app offers them, and each model's fields beyond the
    common ones (:func:`model_hyperparameters`) are its config section ``stage3.<name>``
    (``--set stage3.tft.num_heads=8``), passed through to its ``Config``.

Config (fields every model has, see :class:`TemporalConfig`)
    ``num_features``, ``horizons``, ``quantiles`` (``None`` = point forecast),
    ``num_stocks``, ``num_sectors``, ``hidden_size``, ``dropout``, ``lookback``,
    ``feature_names``.

Batch (``forward(batch: dict[str, Tensor]) -> dict[str, Tensor]``), two forms
    - Window batch: ``x`` float ``[B, L, F]``, time-varying inputs, oldest first; the last
      step is the forecast origin t.
    - Sequence batch (:func:`is_sequence_batch`, the default in training and prediction):
      ``x`` float ``[B, C, F]``, a chunk of a stock's span, and ``origin`` bool ``[B, C]``,
      the steps whose forecast is used (each has its whole window of ``lookback`` steps
      inside the chunk). The model forecasts at every step from steps <= it: the TCN sees
      its receptive field, the LSTM/GRU state runs from the chunk start, the TFT's
      LSTM runs from the chunk start and its attention reads the last ``lookback`` steps.
    - ``stock_id``: long ``[B]`` in ``[0, num_stocks)``; ``sector_id``: long ``[B]``.

Outputs
    - ``pred``: ``[B, H, Q]`` forecast at the origin of a window batch (Q = len(quantiles),
      or 1 in point mode); ``[B, C, H, Q]``, the forecast at every step, for a sequence batch.
    - ``pred_all``: ``[B, L, H, Q]``, the forecast made at every position l from steps <= l
      only; the causality test perturbs the future and checks that earlier positions do
      not move.
    - TFT adds ``variable_importance`` ``[B, F]``, ``static_importance`` ``[B, S]``,
      ``attention`` ``[B, heads, L]`` and ``attention_all`` ``[B, heads, L, L]`` (window
      batch); per step ``[B, C, F]`` and ``[B, C, heads, lookback]`` for a sequence batch.

Shared pieces in :mod:`relcast.models.temporal.losses`
    - ``QuantileHead(in_dim, horizons, quantiles)``: every model ends with it; it maps
      ``[..., in_dim] -> [..., H, Q]`` with quantiles ordered by construction (median plus
      cumulative softplus offsets), or a plain linear point forecast when quantiles is None.
    - ``pinball_loss(pred, y, quantiles, mask=None)``: the training loss (squared error in
      point mode); NaN labels are ignored.
    - ``point_forecast(pred, quantiles) -> [..., H]``: the median quantile (or the only one).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = [
    "TemporalConfig",
    "available_models",
    "create_model",
    "get_model_class",
    "is_cross_section_model",
    "is_sequence_batch",
    "model_hyperparameters",
    "register_model",
]

_REGISTRY: dict[str, type[nn.Module]] = {}

COMMON_FIELDS = (
    "num_features",
    "horizons",
    "quantiles",
    "num_stocks",
    "num_sectors",
    "hidden_size",
    "dropout",
    "lookback",
    "feature_names",
)


@dataclass
class TemporalConfig:
    """Hyperparameters every Stage3 model shares; model configs subclass it."""

    num_features: int
    """F, the number of time-varying inputs per step (from the feature set, not by hand)."""
    horizons: int = 5
    """H, forecast horizons 1..H days."""
    quantiles: tuple[float, ...] | None = (0.1, 0.5, 0.9)
    """Predicted quantiles, strictly increasing in (0, 1); None = one point forecast."""
    num_stocks: int = 1
    """Size of the stock-id embedding table (static covariate)."""
    num_sectors: int = 1
    """Size of the sector embedding table (static covariate)."""
    hidden_size: int = 64
    """Width of the hidden state."""
    dropout: float = 0.1
    """Dropout rate inside the model."""
    lookback: int = 60
    """L, the sequence length the model is built for (e.g. the TCN receptive field)."""
    feature_names: tuple[str, ...] | None = None
    """Names of the F inputs, for interpretation; None = x0, x1, ..."""

    def __post_init__(self) -> None:
        if self.num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {self.num_features}")
        if self.horizons < 1:
            raise ValueError(f"horizons must be >= 1, got {self.horizons}")
        if self.num_stocks < 1 or self.num_sectors < 1:
            raise ValueError("num_stocks and num_sectors must be >= 1")
        if self.lookback < 1:
            raise ValueError(f"lookback must be >= 1, got {self.lookback}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.quantiles is not None:
            # YAML hands over lists; keep configs hashable and comparable.
            self.quantiles = tuple(float(q) for q in self.quantiles)
            qs = self.quantiles
            if not qs or any(not 0.0 < q < 1.0 for q in qs):
                raise ValueError(f"quantiles must be non-empty and in (0, 1), got {qs}")
            if any(b <= a for a, b in zip(qs, qs[1:], strict=False)):
                raise ValueError(f"quantiles must be strictly increasing, got {qs}")
        if self.feature_names is not None:
            self.feature_names = tuple(str(n) for n in self.feature_names)
            if len(self.feature_names) != self.num_features:
                raise ValueError(
                    f"feature_names has {len(self.feature_names)} names, "
                    f"num_features is {self.num_features}"
                )

    @property
    def num_quantiles(self) -> int:
        """Q, the size of the last output axis (1 in point mode)."""
        return 1 if self.quantiles is None else len(self.quantiles)


def is_sequence_batch(batch) -> bool:
    """True for a sequence (chunk) batch: it carries the ``origin [B, C]`` mask."""
    return "origin" in batch


def origin_output(batch, pred_all):
    """``pred``: ``pred_all [B, L, H, Q]`` for a sequence batch, its last step for a window."""
    return pred_all if is_sequence_batch(batch) else pred_all[:, -1]


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a Stage3 model available as ``create_model(name, ...)``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        config_cls = getattr(cls, "Config", None)
        if config_cls is None or not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"model {name!r}: {cls.__name__}.Config must be a dataclass")
        have = {f.name for f in dataclasses.fields(config_cls)}
        missing = [f for f in COMMON_FIELDS if f not in have]
        if missing:
            raise TypeError(f"model {name!r}: {cls.__name__}.Config lacks fields {missing}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"model name {name!r} is already registered by {_REGISTRY[name].__name__}"
            )
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_models() -> list[str]:
    """Names of the registered Stage3 models, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown Stage3 model {name!r}; available: {available_models()}")
    return _REGISTRY[name]


def is_cross_section_model(name: str) -> bool:
    """True for a model that reads every stock of a date in one pass (class attribute
    ``cross_section = True``, :mod:`relcast.models.relational`): it takes cross-section
    batches, not the window/sequence batches above, and is trained by
    :mod:`relcast.training.cross_section_stage3`."""
    return bool(getattr(get_model_class(name), "cross_section", False))


def model_hyperparameters(name: str) -> dict[str, tuple[Any, Any]]:
    """``{field: (type, default)}``: the fields of model ``name``'s ``Config`` beyond
    :data:`COMMON_FIELDS`, i.e. the keys of its config section ``stage3.<name>``."""
    config_cls = get_model_class(name).Config
    hints = typing.get_type_hints(config_cls)
    return {
        f.name: (hints[f.name], f.default)
        for f in dataclasses.fields(config_cls)
        if f.name not in COMMON_FIELDS and f.init and not f.metadata.get("internal")
    }


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` from config keyword arguments."""
    cls = get_model_class(name)
    fields = dataclasses.fields(cls.Config)
    allowed = [f.name for f in fields]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown config keys for model {name!r}: {unknown}; allowed keys: {allowed}"
        )
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    absent = [k for k in required if k not in kwargs]
    if absent:
        raise TypeError(f"model {name!r} needs config keys {absent}")
    return cls(cls.Config(**kwargs))
