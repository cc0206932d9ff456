"""stage2: the LightGBM residual booster on Stage1's embeddings and residuals (rank 0)."""

from __future__ import annotations

import time

import numpy as np

from relcast.run.context import RunContext, log, writes


@writes("stage2")
def stage2(ctx: RunContext) -> None:
    from relcast.features.labels import normalize_labels_cross_section
    from relcast.models.residual import ResidualBooster

    s = ctx.config.stage2
    if not s.enabled:
        ctx.mark("stage2", 0.0, enabled=False)
        return
    start = time.perf_counter()
    out = ctx.stage1_outputs
    f = ctx.features
    # Stage1 is trained on cross-sectionally normalised labels: residuals in the same units
    y = normalize_labels_cross_section(ctx.labels, f.mask)[..., 0]
    mask = f.mask & ctx.target[None, :]
    booster = ResidualBooster(
        num_leaves=s.num_leaves,
        n_estimators=s.n_estimators,
        learning_rate=s.learning_rate,
        seed=ctx.config.trainer.seed,
        max_rows=s.max_rows,
    ).fit(
        np.nan_to_num(f.values),
        out["embeddings"],
        out["pred"][..., 0],
        y,
        mask,
        ctx.split.train,
        ctx.split.valid,
    )
    ctx.folder.save_booster(booster)
    ctx.stage2_booster = booster
    r = booster.report_
    ctx.mark("stage2", time.perf_counter() - start, helped=booster.helped_, **r)
    log(
        f"Stage2 on validation: rank IC {r['stage1']['rank_ic']:.4f} -> "
        f"{r['stage1+stage2']['rank_ic']:.4f}, MSE {r['stage1']['mse']:.4f} -> "
        f"{r['stage1+stage2']['mse']:.4f} ({'helped' if booster.helped_ else 'not helped'}"
        f" by its criterion: MSE cut {r['mse_rel_gain']:.2%}, needs > 0.5%)"
    )
