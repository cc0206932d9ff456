"""The stage sections of a run's configuration: Stage1, Stage2, the relationship extractors
(``relationships.v2``, ``relationships.v3``) and Stage3.

Stage3's model names and per-model hyperparameters come from the Stage3 registry
(:mod:`relcast.models.temporal.registry`): ``stage3.models`` accepts every registered model,
and ``stage3.<model>`` holds the fields of that model's ``Config`` beyond the shared ones, so
adding a model adds its settings without an edit here.
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from relcast.config.sections import Section

# the relationship extractors; relationships.extractor joins any of them with "+"
BASE_EXTRACTORS = ("v1", "v2", "v3", "leave_self_out", "lead_lag")
# the combinations offered by name (the app's choices)
EXTRACTORS = ("v1", "v2", "v3", "v1+v2", "leave_self_out", "lead_lag", "v2+leave_self_out",
              "v2+lead_lag")  # fmt: skip
FEATURE_SETS = ("hybrid", "own", "rawconcat")


class Stage1Settings(Section):
    """The cross-sectional Transformer (:class:`relcast.models.cross_sectional.Stage1Config`
    takes every model field from here, ``Stage1Config.from_settings``) and its training."""

    RENAMED: ClassVar[dict[str, str]] = {
        "n_heads": "stage1.num_heads",
        "n_layers": "stage1.num_layers",
    }

    d_model: int = Field(64, ge=8, description="Transformer width")
    num_heads: int = Field(4, ge=1, description="attention heads (must divide d_model)")
    num_layers: int = Field(2, ge=1, description="encoder layers")
    dim_feedforward: int | None = Field(
        None, ge=1, description="hidden width of each layer's MLP (null: 4 x d_model)"
    )
    dropout: float = Field(
        0.1, ge=0, lt=1, description="dropout on the residual branches and the input embedding"
    )
    attention_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout on the attention weights; > 0 leaves PyTorch's fused CPU attention "
        "kernel (8x slower training at 1,026 stocks)",
    )
    relationship_dim: int = Field(
        16, ge=2, le=256, description="V2 dims: the learned bottleneck (or PCA components)"
    )
    use_sector_embedding: bool = True
    multitask: bool = Field(False, description="add stock-correlation and sector heads")
    corr_weight: float = Field(0.1, ge=0, description="multitask: weight of the correlation loss")
    sector_weight: float = Field(0.1, ge=0, description="multitask: weight of the sector loss")
    corr_window: int = Field(
        20, ge=2, description="multitask: future dates whose return correlation is the target"
    )
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
    max_stocks: int | None = Field(
        None,
        ge=2,
        description="train each date on a random subset of at most this many of its traded "
        "stocks, a new draw every epoch (e.g. 512: attention costs N^2 per date); validation, "
        "extraction and prediction read every stock; null: all stocks",
    )
    lr: float = Field(1e-3, gt=0)
    patience: int = Field(5, ge=1, description="early-stopping patience on val rank IC")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Stage1Settings:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"stage1.d_model ({self.d_model}) must be divisible by "
                f"stage1.num_heads ({self.num_heads})"
            )
        return self


class Stage2Settings(Section):
    enabled: bool = Field(True, description="fit LightGBM on Stage1 residuals")
    num_leaves: int = Field(31, ge=2)
    n_estimators: int = Field(300, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    max_rows: int = Field(
        2_000_000,
        ge=1,
        description="LightGBM fits Stage2 on at most this many (date, stock) rows of the "
        "training span (and of the validation span): a seeded sample, kept in date order, "
        "above it bounds memory (like baselines.max_rows); below it every row is used",
    )


class V2Settings(Section):
    """V2 embedding extractor (:class:`relcast.models.extractors.EmbeddingExtractor`); its
    size is ``stage1.relationship_dim``."""

    method: Literal["bottleneck", "pca"] = Field(
        "bottleneck",
        description="bottleneck: Stage1's learned relationship layer; pca: components of the "
        "embeddings fitted on the training span",
    )


class V3Settings(Section):
    """V3 contrastive extractor (:class:`relcast.training.contrastive.ContrastiveExtractor`)."""

    proj_dim: int = Field(16, ge=2, description="size of the learned unit projection ctr_*")
    hidden_size: int = Field(64, ge=4, description="width of the encoder's hidden layer")
    inputs: Literal["features", "embeddings"] = Field(
        "features", description="the stock's own features at t, or Stage1's embeddings"
    )
    feature_groups: list[str] = Field(
        ["own"], min_length=1, description="feature groups read when inputs is 'features'"
    )
    positives: Literal["sector", "corr", "both"] = Field(
        "both", description="same-sector stocks, the top_k most correlated, or both"
    )
    corr_window: int = Field(60, ge=5, description="trailing dates of realised returns")
    top_k: int = Field(3, ge=1, description="most correlated stocks taken as positives")
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature")
    identity_dim: int = Field(8, ge=0, description="learned stock-identity input (0: none)")
    steps: int = Field(300, ge=1, description="training steps")
    batch_dates: int = Field(32, ge=1, description="dates per training step")
    lr: float = Field(3e-3, gt=0)


class LeadLagSettings(Section):
    lags: int = Field(3, ge=1, description="peers' ret1 of dates t .. t - lags + 1")


class RelationshipSettings(Section):
    extractor: str = Field(
        "v2",
        description="relationship extractor: v1 (attention rows), v2 (embeddings), v3 "
        "(contrastive), leave_self_out (peers' Stage1 vectors along the attention, the stock "
        "left out), lead_lag (peers' lagged returns along the attention), or several joined "
        "with + (e.g. v2+lead_lag)",
    )
    orthogonal: bool = Field(
        False,
        description="remove from every relationship column its least-squares fit on the "
        "stock's own columns (fitted on training dates, applied date by date): the columns "
        "keep only what own history does not linearly say",
    )
    oof_folds: int = Field(
        3, ge=0, description="out-of-fold folds over the training span (0: leaky)"
    )
    oof_epochs: Literal["best", "early_stopping"] | int = Field(
        "best",
        description="epochs of each fold model: best = the full Stage1's best epoch count "
        "(validated once, at the end), early_stopping = like the full Stage1, or a number",
    )
    stage1_score: bool = Field(
        False,
        description="add Stage1's own forecast (z-scored per date, out-of-fold on the "
        "training span) as a relationship column: Stage3 stacks it on the stock's history",
    )
    neighbours: bool = Field(
        False,
        description="add nbr_<own column>: the other stocks' own indicators averaged with "
        "the weights of Stage1's last-layer attention (where the stock looks; itself and "
        "masked stocks left out), out-of-fold on the training span like every column",
    )
    regime: bool = Field(
        False,
        description="regime one-hot features from the index (bull/bear/sideways, past data "
        "only) and a learned gate in every hybrid Stage3 model that scales the index vs "
        "sector relationship columns by regime; needs extractor v1, v3 or v1+v2",
    )
    regime_window: int = Field(60, ge=2, description="trailing bars of the regime detector")
    table: bool = Field(
        True,
        description="write data_with_relationships.parquet (own + relationship features per "
        "(date, symbol), for other tools); false on very large runs, where it takes ~200 "
        "bytes a cell on disk: every step reads the relationships from relationships.npz "
        "(or relationships_values.npy) and the features from the panel or feature store",
    )
    v2: V2Settings = V2Settings()
    v3: V3Settings = V3Settings()
    lead_lag: LeadLagSettings = LeadLagSettings()

    @field_validator("extractor")
    @classmethod
    def _known_extractors(cls, value: str) -> str:
        parts = extractor_parts(value)
        unknown = [p for p in parts if p not in BASE_EXTRACTORS]
        if unknown or len(set(parts)) != len(parts) or not parts:
            raise ValueError(
                f"{value!r}: choose from {', '.join(BASE_EXTRACTORS)}, or several of them "
                f"joined with + (each once), e.g. v2+lead_lag"
            )
        return "+".join(parts)

    @field_validator("oof_epochs")
    @classmethod
    def _positive_epochs(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1, 'best' or 'early_stopping'")
        return value

    @model_validator(mode="after")
    def _regime_has_something_to_gate(self) -> RelationshipSettings:
        if self.regime and not {"v1", "v3"} & set(extractor_parts(self.extractor)):
            raise ValueError(
                "relationships.regime=true gates the index and sector relationship columns, "
                f"which extractor {self.extractor} does not produce; use "
                "relationships.extractor=v1, v3 or v1+v2"
            )
        return self


def extractor_parts(name: str) -> list[str]:
    """The extractors a ``relationships.extractor`` value joins (``"v2+lead_lag"``)."""
    return [part.strip().lower() for part in str(name).split("+") if part.strip()]


def _registry():
    """The Stage3 registry (imported on first use: it brings torch)."""
    from relcast.models.temporal import registry

    return registry


class Stage3Settings(Section):
    """The temporal models. Shared settings here; each model's own hyperparameters in a
    section named after it (``stage3.gru.num_layers``, ``stage3.tft.num_heads``,
    ``stage3.tcn.kernel_size``): the fields of its ``Config`` in the Stage3 registry beyond
    the common ones, defaults from that ``Config``."""

    # extra keys are the per-model sections, checked against the registry below
    model_config = ConfigDict(extra="allow", validate_assignment=True, strict=True)
    RENAMED: ClassVar[dict[str, str]] = {
        "heads": "stage3.tft.num_heads",
        "num_layers": "stage3.gru.num_layers and/or stage3.lstm.num_layers (each model has "
        "its own section; the TCN sizes its levels from lookback)",
    }

    models: list[str] = Field(
        ["gru"], min_length=1, description="temporal models (at least one; the registry's names)"
    )
    feature_sets: list[Literal[FEATURE_SETS]] = Field(
        ["hybrid", "own"],
        min_length=1,
        description="hybrid = the design; own/rawconcat = comparisons",
    )
    baseline_models: list[str] | None = Field(
        None,
        description="models that also run the own/rawconcat comparisons (null: every model); "
        "the others run hybrid only",
    )
    hidden_size: int = Field(64, ge=4, description="hidden width of every model")
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
        "one pass; short chunks put more stocks in a batch, long ones need less burn-in "
        "(lookback 60, 1 CPU thread: 128 is the GRU's fastest, 192 the LSTM's and TCN's)",
    )
    lr: float = Field(1e-3, gt=0)
    patience: int = Field(4, ge=1)
    label_norm: Literal["cross_section", "cs_rank", "none"] = Field(
        "cross_section",
        description="training target: cross_section z-score per date, cs_rank (qlib's "
        "CSRankNorm: ranks per date mapped to z units), none (raw returns)",
    )

    @field_validator("models", "baseline_models")
    @classmethod
    def _registered(cls, value: list[str] | None) -> list[str] | None:
        names = _registry().available_models()
        unknown = [m for m in value or () if m not in names]
        if unknown:
            raise ValueError(f"unknown Stage3 model(s) {unknown}; registered: {names}")
        return value

    @model_validator(mode="after")
    def _quantiles_valid(self) -> Stage3Settings:
        if self.quantiles is not None:
            q = self.quantiles
            if not q or any(not 0 < x < 1 for x in q) or sorted(q) != q or len(set(q)) != len(q):
                raise ValueError(f"stage3.quantiles must be increasing values in (0, 1), got {q}")
        return self

    @model_validator(mode="after")
    def _model_sections(self) -> Stage3Settings:
        registry = _registry()
        names = registry.available_models()
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for key, section in extra.items():
            if key not in names:
                raise ValueError(
                    f"unknown key {key!r} (allowed here: {', '.join(type(self).model_fields)}; "
                    f"or a model's section: {', '.join(names)})"
                )
            extra[key] = _model_section(key, section, registry.model_hyperparameters(key))
        for name in self.models:  # the resolved config shows every used model's values
            defaults = {k: d for k, (_, d) in registry.model_hyperparameters(name).items()}
            extra[name] = {**defaults, **extra.get(name, {})}
        for name in extra:  # e.g. heads that do not divide hidden_size, a short TCN
            try:
                registry.get_model_class(name).Config(
                    num_features=1,
                    lookback=self.lookback,
                    quantiles=self.quantiles,
                    **self.hparams(name),
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(f"stage3.{name}: {exc}") from None
        return self

    def hparams(self, model: str) -> dict[str, Any]:
        """Keyword arguments of ``model``'s ``Config`` that the config sets (the data gives
        the sizes): the shared ``hidden_size`` and ``dropout``, then its own section."""
        own = (self.__pydantic_extra__ or {}).get(model, {})
        return {"hidden_size": self.hidden_size, "dropout": self.dropout, **own}


def _model_section(model: str, section: Any, fields: dict[str, tuple[Any, Any]]) -> dict:
    """``stage3.<model>`` checked against the model's ``Config`` fields (strict types)."""
    allowed = ", ".join(fields) or "(none)"
    if not isinstance(section, dict):
        raise ValueError(
            f"stage3.{model} is the section of {model}'s hyperparameters, a mapping such as "
            f"stage3.{model}.<key>=<value>; keys: {allowed}"
        )
    out = {}
    for key, value in section.items():
        if key not in fields:
            raise ValueError(f"stage3.{model}.{key}: unknown key (allowed here: {allowed})")
        kind = fields[key][0]
        if typing.get_origin(kind) is tuple and isinstance(value, list):
            value = tuple(value)  # a YAML list
        try:
            out[key] = TypeAdapter(kind).validate_python(value, strict=True)
        except ValidationError:
            raise ValueError(
                f"stage3.{model}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}"
            ) from None
    return out
