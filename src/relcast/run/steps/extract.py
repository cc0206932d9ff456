"""extract: relationship features for every date, out-of-fold on the training span
(:func:`relcast.relationships.store.build_relationship_store`); the fold models train on every
rank, rank 0 extracts and writes ``relationships.npz`` (and the optional table)."""

from __future__ import annotations

from dataclasses import replace

from relcast import distributed
from relcast.run.context import RunContext, log, writes
from relcast.run.steps.stage1 import stage1_fit

RELATIONSHIP_TABLE = "data_with_relationships.parquet"  # relationships.table: the export


def fold_epochs(ctx: RunContext) -> int | None:
    """Epochs of each out-of-fold Stage1 (``relationships.oof_epochs``); None: early
    stopping, also when the full model's best epoch is unknown (a run from before it was
    recorded)."""
    epochs = ctx.config.relationships.oof_epochs
    if epochs == "early_stopping":
        return None
    if epochs == "best":
        if ctx.stage1_spec.init is not None:  # a warm full model's best count is a fine-tune's
            return ctx.warm_fold_epochs
        return ctx.stage1_best_epoch or None
    return int(epochs)


@writes("extract")
def extract(ctx: RunContext) -> None:
    """Relationship features for every date, out-of-fold on the training span."""
    from relcast.relationships.store import StorePlan, build_relationship_store
    from relcast.runfolder.base import temp_path
    from relcast.runfolder.formats import RELATIONSHIP_VALUES

    r = ctx.config.relationships
    folds = r.oof_folds
    log(
        f"extracting {r.extractor} relationship features "
        f"({'out-of-fold, ' + str(folds) + ' folds' if folds else 'leaky: no folds'})"
    )
    mine = distributed.is_main()  # rank 0 extracts and writes the store
    by_blocks = mine and ctx.store.by_blocks  # into a run-folder map, a block of dates at a time
    plan = StorePlan(
        n_folds=folds,
        oof=folds > 0,
        embargo=ctx.embargo,
        fold_epochs=fold_epochs(ctx),
        values_path=temp_path(ctx.folder.file(RELATIONSHIP_VALUES)) if by_blocks else None,
        table_path=ctx.dir / RELATIONSHIP_TABLE if mine and r.table else None,
        extract=mine,  # the other ranks join the fold models' fits, then wait
    )
    fit = stage1_fit(ctx, ctx.stage1_model.config)
    # fold models start from scratch: a warm start from the block before would carry its
    # full model, which trained on labels of the dates a fold extracts (the stacking leak)
    fit = replace(
        fit,
        spec=replace(fit.spec, init=None),
        trainer=fit.trainer.logging_to(ctx.dir / "logs" / "stage1_folds"),
    )
    epochs = plan.fold_epochs
    store = build_relationship_store(
        ctx.features, ctx.stage1_labels, ctx.split, ctx.make_extractor(), fit, plan,
        full_model=ctx.stage1_model,
    )  # fmt: skip
    ctx.extractor = store.full_extractor
    distributed.barrier()  # every rank has read its fold checkpoints before it goes
    if not mine:
        return
    dates = ctx.panel.dates[: len(store.values)]
    ctx.folder.save_relationships(store.names, store.values, store.mask, store.fold_of, dates)
    ctx.folder.save_extractor(store.full_extractor, ctx.extractor_spec.to_dict())
    ctx.forget("relationships")
    ctx.folder.drop_checkpoints()  # fold models were only needed to extract
    ctx.mark(
        "extract", store.build_seconds, columns=len(store.names), folds=folds, fold_epochs=epochs
    )
    log(f"{len(store.names)} relationship columns in {store.build_seconds:.0f}s")
