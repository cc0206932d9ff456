"""The joint mode (``stage3.models=[joint]``): Stage1 and a temporal Stage3 model trained end to
end, so Stage3's loss reaches Stage1's weights.

The staged pipeline freezes Stage1 before Stage3 sees it: Stage3 reads Stage1's bottleneck
columns (``rel_emb_<k>``, extractor V2) from the relationship store. The joint model is a
whole-date model (it reads every stock of a date, :mod:`relcast.training.cross_section_stage3`)
that holds a copy of the run's trained Stage1 and an ``inner`` temporal model (``gru``,
``lstm``, ``tcn`` or ``tft``). For the last ``live`` dates of each window it recomputes the
``rel_emb_<k>`` columns with its Stage1, on that date's own columns of every stock (the
stocks with a complete window), and hands the window to the inner model, stock by stock.
The earlier dates of the window keep the stored (out-of-fold) values: recomputing them all
would cost ``lookback`` Stage1 passes per date (one is about what a Stage1 epoch costs per
date), and the newest date carries the forecast. Gradients of the Stage3 loss flow into
Stage1 through the live dates; Stage1 starts from the run's trained weights (the pipeline
loads them before training; a walk-forward block warm-starts the whole joint model).

Needs the ``hybrid`` feature set with V2 bottleneck columns; other relationship columns of
the store (a stage1 score, neighbours, ...) are read as stored. Stage1 reads the first
``stage1["num_features"]`` input columns: the own columns in the feature set's order (the
pipeline checks they are the columns Stage1 was trained on).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from relcast.models.cross_sectional import CrossSectionalTransformer, Stage1Config
from relcast.models.relational.common import RelationalConfig
from relcast.models.temporal.registry import create_model, register_model

LIVE_PREFIX = "rel_emb_"


@register_model("joint")
class JointModel(nn.Module):
    """Stage1 + an inner temporal model on whole dates (see the module docstring)."""

    cross_section = True

    @dataclasses.dataclass
    class Config(RelationalConfig):
        inner: str = "gru"
        """The temporal model trained with Stage1 (a registered window model)."""
        live: int = 1
        """Dates at the end of each window whose relationship columns Stage1 recomputes."""
        rank_weight: float = 0.0
        """The staged models' loss (no ranking term) unless asked."""
        stage1: dict = dataclasses.field(default_factory=dict, metadata={"internal": True})
        """The run's Stage1 config (:meth:`Stage1Config.to_dict`), filled by the pipeline."""
        inner_hparams: dict = dataclasses.field(default_factory=dict, metadata={"internal": True})
        """The inner model's own settings (its ``stage3.<inner>`` section), from the pipeline."""

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.live < 1:
                raise ValueError(f"live must be >= 1, got {self.live}")
            if self.inner == "joint":
                raise ValueError("the joint model's inner model must be a temporal model")

    def __init__(self, config: Config) -> None:
        super().__init__()
        if not config.stage1:
            raise ValueError(
                "the joint model needs the run's Stage1 config (stage1=...): train it in a "
                "relcast run, which passes it"
            )
        self.config = config
        names = list(config.feature_names or [])
        stage1 = Stage1Config(**config.stage1)
        live = [i for i, n in enumerate(names) if n.startswith(LIVE_PREFIX)]
        if len(live) != stage1.relationship_dim or live != list(
            range(live[0] if live else 0, (live[0] if live else 0) + len(live))
        ):
            raise ValueError(
                f"the joint model recomputes Stage1's {stage1.relationship_dim} bottleneck "
                f"columns ({LIVE_PREFIX}0..): use the hybrid feature set with extractor v2 "
                f"(bottleneck); the inputs have {len(live)} of them"
            )
        self.rel_start, self.rel_width = live[0], len(live)
        self.stage1_width = stage1.num_features
        if self.stage1_width > self.rel_start:
            raise ValueError("Stage1's input columns must come before the relationship columns")
        self.stage1 = CrossSectionalTransformer(stage1)
        common = {f.name: getattr(config, f.name) for f in dataclasses.fields(RelationalConfig)}
        common.pop("rank_weight")
        self.inner = create_model(config.inner, **common, **config.inner_hparams)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, mask = batch["x"], batch["mask"]  # (D, N, L, F), (D, N)
        D, N, L, F = x.shape
        live = min(self.config.live, L)
        a, b = self.rel_start, self.rel_start + self.rel_width
        steps = [x[:, :, : L - live]]
        for step in range(L - live, L):
            now = x[:, :, step]  # (D, N, F)
            rel = self.stage1(now[..., : self.stage1_width], mask, need_weights=False)
            now = torch.cat([now[..., :a], rel["relationship"], now[..., b:]], dim=-1)
            steps.append(now[:, :, None])
        x = torch.cat(steps, dim=2)
        sector = batch.get("sector_code", batch["sector_id"].clamp(min=0))
        flat = {
            "x": x.reshape(D * N, L, F),
            "stock_id": batch["stock_id"].expand(D, N).reshape(-1),
            "sector_id": sector.expand(D, N).reshape(-1),
        }
        pred = self.inner(flat)["pred"]  # (D * N, H, Q)
        return {"pred": pred.reshape(D, N, *pred.shape[1:])}
