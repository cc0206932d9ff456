"""stage3: train every Stage3 model of the config (and its seeds) and save each with the spec
it was trained with (``stage3/<name>/model.safetensors`` + ``model.json``), through the run
folder. Training runs on every rank under torchrun; rank 0 writes."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from relcast import distributed
from relcast.run.context import RunContext, log, writes
from relcast.runfolder import RunFolderError


def format_scales(scales: dict[str, dict[str, float]]) -> str:
    """``bull index x1.02 sector x0.97, ...`` for the log."""
    return ", ".join(
        f"{regime} index x{s['index']:.2f} sector x{s['sector']:.2f}"
        for regime, s in scales.items()
    )


def fit_stage3_model(ctx: RunContext, model: str, inputs, spec, name: str):
    """Train one Stage3 model on ``inputs`` with ``spec`` (logs under ``name``); returns the
    :class:`~relcast.training.stage3.Stage3Result`, saves nothing."""
    from relcast.training.stage3 import fit_stage3

    panel = ctx.panel
    return fit_stage3(
        model, inputs, ctx.labels, ctx.split, spec,
        ctx.trainer.logging_to(ctx.dir / "logs" / name),
        stocks=list(panel.symbols[ctx.target]),  # indices are inputs, not targets
        index_symbols=list(panel.symbols[panel.is_index]),
    )  # fmt: skip


def joint_spec(ctx: RunContext, spec, inputs, scratch: Path):
    """The joint model's spec (:mod:`relcast.models.relational.joint`): the run's Stage1
    config and the inner model's settings in its ``hparams``, and, unless a warm start gives
    the whole joint model, the run's trained Stage1 as its starting weights (written to
    ``scratch``)."""
    from safetensors.torch import save_file

    from relcast.training.stage3 import build_model

    stage1 = ctx.stage1_model
    width = stage1.config.num_features
    if list(inputs.names[:width]) != list(ctx.features.names):
        raise ValueError(
            "the joint model feeds Stage1 the first columns of the hybrid inputs, which are "
            "not the columns Stage1 was trained on (a feature group reordered?)"
        )
    hparams = dict(spec.hparams)
    inner = hparams.get("inner", "gru")
    own = {
        k: v for k, v in ctx.config.stage3.hparams(inner).items() if k not in spec.hparams
    }  # the inner model's section (gru.num_layers, ...) beyond the shared sizes
    hparams.update(stage1=stage1.config.to_dict(), inner_hparams=own)
    spec = replace(spec, hparams=hparams)
    if spec.init is not None:  # a walk-forward block's warm start: the whole joint model
        return spec
    horizons = ctx.labels.shape[-1]
    model = build_model("joint", inputs, horizons, spec.quantiles, spec.lookback, hparams)
    model.stage1.load_state_dict(stage1.state_dict())
    path = scratch / "joint_init.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return replace(spec, init=str(path))


@writes("stage3")
def stage3(ctx: RunContext, *, resume: bool = True) -> None:
    """Train every Stage3 model of the config; ``resume`` keeps models already saved."""
    timings = {}
    runs = [
        (folder_name, model, feature_set, k)
        for name, model, feature_set in ctx.stage3_names()
        for k, folder_name in enumerate(ctx.seed_folders(name))
    ]
    for name, model, feature_set, k in runs:
        if resume and ctx.has_stage3(name):
            try:
                ctx.stage3_model(name)
                continue  # resumable per model
            except RunFolderError as exc:  # damaged weights are trained again, not kept
                log(f"Stage3 {name}: the saved model cannot be read ({exc}); training it")
        inputs = ctx.stage3_inputs(feature_set)
        num_inputs = inputs.num_features + inputs.cross_width  # rawconcat: + every stock's
        gated = ctx.config.relationships.regime and feature_set == "hybrid"
        spec = ctx.stage3_spec(model, seed_offset=k, regime_gate=gated, name=name)
        log(
            f"Stage3 {name}: {num_inputs} inputs, lookback {spec.lookback}"
            + (", regime gate" if gated else "")
        )
        with tempfile.TemporaryDirectory(prefix="relcast-joint-") as scratch:
            if model == "joint":  # Stage1 trained on with Stage3's loss, from the run's
                spec = joint_spec(ctx, spec, inputs, Path(scratch))
            result = fit_stage3_model(ctx, model, inputs, spec, name)
        if model == "joint" and spec.init and Path(spec.init).name == "joint_init.safetensors":
            spec = replace(spec, init=str(ctx.folder.file("stage1/model.safetensors")))
        # how to rebuild the wrapper around the registry model when it is loaded
        wrapper = "regime_gate" if gated else "cross_input" if inputs.cross_width else None
        extra = {wrapper: result.model.spec()} if wrapper else {}
        distributed.barrier()  # every rank has read the best checkpoint before it goes
        if not distributed.is_main():
            continue  # rank 0 owns the run folder
        ctx.folder.save_stage3(
            name,
            result.model,
            asdict(result.model.config),
            model,
            spec=spec.to_dict(),
            **extra,
        )
        ctx.forget("stage3")
        ctx.folder.drop_checkpoints()
        timings[name] = {
            "seconds_per_epoch": result.seconds_per_epoch,
            "windows_per_second": result.windows_per_second,
            "epochs": len(result.history),
            "best_val_rank_ic": result.best_val_rank_ic,
            "num_inputs": num_inputs,
        }
        if gated:
            scales = timings[name]["regime_gate_scales"] = result.model.scales()
            log(f"Stage3 {name}: regime gate scales {format_scales(scales)}")
        log(
            f"Stage3 {name}: best val rank IC {result.best_val_rank_ic:.4f}, "
            f"{result.seconds_per_epoch:.1f}s/epoch"
        )
    if not distributed.is_main():
        return
    previous = ctx.info()["steps"].get("stage3", {}).get("models", {})
    ctx.mark(
        "stage3",
        sum(t["seconds_per_epoch"] * t["epochs"] for t in timings.values()),
        models={**previous, **timings},
    )
