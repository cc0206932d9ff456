"""Stage3 temporal models, picked by name: ``create_model("tft" | "lstm" | "gru" | "tcn", ...)``.

The contract every model follows (config fields, batch keys, outputs) is written in
:mod:`relcast.models.temporal.registry`.
"""

from relcast.models.relational import master, rsr, stockmixer  # noqa: F401  (whole-date models)
from relcast.models.temporal import lstm, tcn, tft  # noqa: F401  (imports register the models)
from relcast.models.temporal.losses import QuantileHead, pinball_loss, point_forecast
from relcast.models.temporal.registry import (
    TemporalConfig,
    available_models,
    create_model,
    get_model_class,
    register_model,
)
from relcast.models.temporal.tft import TemporalFusionTransformer, TFTConfig

__all__ = [
    "QuantileHead",
    "TFTConfig",
    "TemporalConfig",
    "TemporalFusionTransformer",
    "available_models",
    "create_model",
    "get_model_class",
    "pinball_loss",
    "point_forecast",
    "register_model",
]
