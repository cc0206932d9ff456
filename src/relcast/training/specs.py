"""How each stage is trained, read once from the config into a plain spec.

A spec is built from its config section (``Stage1Spec.from_settings(config.stage1, seed)``),
handed to the training function (``fit_stage1(features, labels, split, model_config, spec,
trainer)``, ``fit_stage3(model, inputs, labels, split, spec, trainer)``) and saved beside the
weights (``RunFolder.save_weights(..., spec=spec.to_dict())``), so that evaluation,
``relcast predict`` and ``relcast update`` read back the settings a model was trained with,
not the config's current ones (``Stage3Spec.chunk_length`` fixes the tiling of the sequence
chunks: training, evaluation and serving must tile alike to give the same forecast).

:class:`TrainerSpec` is the Lightning side, as it must be in this process (under torchrun:
``ddp`` over every process, :func:`relcast.distributed.trainer_settings`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

CHUNK_LENGTH = 128
"""Default chunk length of sequence training and prediction (burn-in included)."""
WARMUP_BARS = 60
"""Bars of history the indicators need before a stock's first complete feature row."""


def chunk_steps(chunk_length: int, lookback: int) -> int:
    """Steps of a sequence chunk: ``chunk_length``, raised to ``2 * lookback`` so that each
    chunk scores at least ``lookback + 1`` window ends after its burn-in."""
    return max(int(chunk_length), 2 * int(lookback))


def _known(cls, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of the dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


@dataclass(frozen=True)
class TrainerSpec:
    """Lightning's device settings for this process, where logs/checkpoints go, and extra
    callbacks."""

    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: int = 1
    progress: bool = True
    out_dir: Path | None = None
    callbacks: tuple[Any, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    """any other ``lightning.Trainer`` argument (e.g. ``limit_train_batches`` in a benchmark)."""
    """extra Lightning callbacks (e.g. :func:`relcast.training.common.release_pages_callback`)."""
    label: str = "training"
    """the training's name in the per-epoch log lines (``"Stage1 fold 2/3"``); the fit
    functions name their own (``"Stage1"``, ``"Stage3 tft"``) while it is the default."""

    @classmethod
    def from_settings(cls, t: Any) -> TrainerSpec:
        """From the ``trainer`` config section as resolved for this process
        (:func:`relcast.distributed.trainer_settings`: under torchrun, ddp)."""
        return cls(
            accelerator=t.accelerator,
            devices=t.devices,
            strategy=t.strategy,
            precision=t.precision,
            num_nodes=t.num_nodes,
            progress=bool(t.progress),
        )

    def logging_to(self, out_dir: str | Path) -> TrainerSpec:
        return replace(self, out_dir=Path(out_dir))

    def named(self, label: str) -> TrainerSpec:
        """This spec with ``label`` (the name in the log lines) unless one was already set."""
        return self if self.label != TrainerSpec.label else replace(self, label=label)

    def lightning_kwargs(self) -> dict[str, Any]:
        """``lightning.Trainer`` arguments (``num_nodes`` only when > 1)."""
        kw: dict[str, Any] = dict(
            accelerator=self.accelerator,
            devices=self.devices,
            strategy=self.strategy,
            precision=self.precision,
        )
        if self.num_nodes > 1:
            kw["num_nodes"] = self.num_nodes
        return kw


@dataclass(frozen=True)
class Stage1Spec:
    """How a Stage1 Transformer is trained (its sizes are :class:`Stage1Config`'s)."""

    loss: str = "ic"
    label_norm: str = "cross_section"
    rank_mse_weight: float = 0.0
    max_epochs: int = 30
    batch_dates: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 0
    validate_every: int = 1
    """epochs between validation passes (fold models with fixed epochs: their count)."""
    max_stocks: int | None = None
    """each training date attends over a random subset of at most this many of its traded
    target stocks, drawn anew every epoch (None: all; validation always reads all)."""
    init: str | None = None
    """weights (a safetensors file) training starts from instead of a random draw: a
    walk-forward block's warm start from the block before; None: from scratch."""

    @classmethod
    def from_settings(
        cls, settings: Any, seed: int, *, batch_dates: int | None = None
    ) -> Stage1Spec:
        """From the ``stage1`` section; ``batch_dates``: this rank's share when given."""
        return cls(
            loss=settings.loss,
            label_norm=settings.label_norm,
            rank_mse_weight=settings.rank_mse_weight,
            max_epochs=settings.max_epochs,
            batch_dates=settings.batch_dates if batch_dates is None else batch_dates,
            lr=settings.lr,
            patience=settings.patience,
            seed=seed,
            max_stocks=settings.max_stocks,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Stage1Spec:
        return cls(**_known(cls, values))


@dataclass(frozen=True)
class Stage3Spec:
    """How one Stage3 model is trained and how it forecasts (the chunk tiling)."""

    lookback: int = 60
    hparams: dict[str, Any] = field(default_factory=dict)
    quantiles: tuple[float, ...] | None = (0.1, 0.5, 0.9)
    max_epochs: int = 20
    batch_size: int = 1024
    chunk_length: int | None = CHUNK_LENGTH
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    label_norm: str = "cross_section"
    seed: int = 0
    regime_gate: bool = False
    init: str | None = None
    """weights (a safetensors file) training starts from (a walk-forward warm start)."""

    @classmethod
    def from_settings(cls, settings: Any, model: str, seed: int, **changes: Any) -> Stage3Spec:
        """From the ``stage3`` section for ``model`` (shared settings + its own section);
        ``changes``: fields set by the run (``batch_size`` per rank, ``regime_gate``)."""
        spec = cls(
            lookback=settings.lookback,
            hparams=settings.hparams(model),
            quantiles=None if settings.quantiles is None else tuple(settings.quantiles),
            max_epochs=settings.max_epochs,
            batch_size=settings.batch_size,
            chunk_length=settings.chunk_length,
            lr=settings.lr,
            patience=settings.patience,
            label_norm=settings.label_norm,
            seed=seed,
        )
        return replace(spec, **changes)

    @property
    def chunk_steps(self) -> int | None:
        """Steps of a forecasting chunk (None: one window per forecast)."""
        return None if self.chunk_length is None else chunk_steps(self.chunk_length, self.lookback)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["quantiles"] = None if self.quantiles is None else list(self.quantiles)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Stage3Spec:
        values = _known(cls, values)
        if values.get("quantiles") is not None:
            values["quantiles"] = tuple(values["quantiles"])
        return cls(**values)


@dataclass(frozen=True)
class ExtractorSpec:
    """Which relationship extractor a run uses and with what settings
    (:func:`relcast.relationships.store.make_extractor`)."""

    kind: str = "v2"
    method: str = "bottleneck"
    n_components: int = 16
    stage1_score: bool = True
    neighbours: bool = False
    orthogonal: bool = False
    lead_lag_lags: int = 3
    label_delay: int = 0
    seed: int = 0
    v3: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Any) -> ExtractorSpec:
        r = config.relationships
        return cls(
            kind=r.extractor,
            method=r.v2.method,
            n_components=config.stage1.relationship_dim,
            stage1_score=r.stage1_score,
            neighbours=r.neighbours,
            orthogonal=r.orthogonal,
            lead_lag_lags=r.lead_lag.lags,
            # V3 recovers realised returns from the labels: it must know how late they start
            label_delay=config.data.label_delay,
            seed=config.trainer.seed,
            v3=r.v3.model_dump(),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExtractorSpec:
        return cls(**_known(cls, values))
