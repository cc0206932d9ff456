"""stage1: train the cross-sectional Transformer on the training span (every rank under
torchrun), save its weights and spec (rank 0)."""

from __future__ import annotations

from dataclasses import asdict

from relcast import distributed
from relcast.run.context import RunContext, log, writes


def stage1_config(ctx: RunContext):
    """The Stage1 model's sizes: the ``stage1`` section + the sizes of the data."""
    from relcast.models.cross_sectional import Stage1Config
    from relcast.training.stage1 import encode_sectors

    _, num_sectors = encode_sectors(ctx.panel.sectors, ctx.panel.num_symbols)
    return Stage1Config.from_settings(
        ctx.config.stage1,
        num_features=len(ctx.features.names),
        num_stocks=ctx.panel.num_symbols,
        num_sectors=num_sectors,
        horizons=ctx.stage1_labels.shape[2],
    )


def stage1_fit(ctx: RunContext, config):
    """How every Stage1 of the run is trained (the full model and the fold models)."""
    from relcast.relationships.store import Stage1Fit

    return Stage1Fit(
        config=config,
        spec=ctx.stage1_spec,
        trainer=ctx.trainer,
        sector_ids=ctx.panel.sectors,
        target=ctx.target,
    )


@writes("stage1")
def stage1(ctx: RunContext) -> None:
    from relcast.relationships.folds import best_epoch_count
    from relcast.training.stage1 import fit_stage1

    cfg = stage1_config(ctx)
    fit = stage1_fit(ctx, cfg)
    log(f"Stage1: {cfg.d_model}d x {cfg.num_layers} layers on {cfg.num_stocks} symbols")
    result = fit_stage1(
        ctx.features, ctx.stage1_labels, ctx.split, cfg, fit.spec,
        fit.trainer.logging_to(ctx.dir / "logs" / "stage1"),
        sector_ids=fit.sector_ids, target=fit.target,
    )  # fmt: skip
    ctx.stage1_model = result.model
    ctx.stage1_best_epoch = best_epoch_count(result.history)  # on every rank
    ctx.forget("stage1_outputs")
    distributed.barrier()  # every rank has read the best checkpoint before it goes
    if not distributed.is_main():
        return  # rank 0 owns the run folder
    ctx.folder.save_weights(
        "stage1/model.safetensors", result.model, asdict(cfg), "stage1",
        spec=fit.spec.to_dict(),
    )  # fmt: skip
    ctx.folder.drop_checkpoints()  # the weights are safetensors now; no pickles kept
    ctx.mark(
        "stage1",
        result.train_seconds,
        best_val_rank_ic=result.best_val_rank_ic,
        epochs=len(result.history),
        best_epoch=ctx.stage1_best_epoch,
    )
    log(
        f"Stage1 done in {result.train_seconds:.0f}s, "
        f"best val rank IC {result.best_val_rank_ic:.4f}"
    )
