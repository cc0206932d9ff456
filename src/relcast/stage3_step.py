"""The pipeline's Stage3 step: which Stage3 models a config trains (run names, seeds), the
settings each is fitted with, and the loop that trains them and saves each through the run
folder (:class:`relcast.runfolder.RunFolder`). :class:`relcast.pipeline.Pipeline` calls it."""

from __future__ import annotations

from dataclasses import asdict

from relcast import distributed
from relcast.runfolder import RunFolderError

PREFIX = {"hybrid": "hybrid_", "own": "stage3_own_", "rawconcat": "stage3_rawconcat_"}


def _log(msg: str) -> None:
    if distributed.is_main():  # one voice per run, also under torchrun
        print(f"[relcast] {msg}", flush=True)


def _format_scales(scales: dict[str, dict[str, float]]) -> str:
    """``bull index x1.02 sector x0.97, ...`` for the log."""
    return ", ".join(
        f"{regime} index x{s['index']:.2f} sector x{s['sector']:.2f}"
        for regime, s in scales.items()
    )


def stage3_names(settings) -> list[tuple[str, str, str]]:
    """``(run name, model, feature set)`` for every Stage3 model of the ``stage3`` section."""
    s = settings
    compared = s.models if s.baseline_models is None else s.baseline_models
    return [
        (PREFIX[fs] + model, model, fs)
        for model in s.models
        for fs in s.feature_sets
        if fs == "hybrid" or model in compared
    ]


def seed_folders(name: str, seeds: int) -> list[str]:
    """Stage3 folders of one model: ``name`` (seed 0) then ``name@seed<k>``."""
    return [name] + [f"{name}@seed{k}" for k in range(1, seeds)]


def fit_stage3_model(pipe, model: str, inputs, *, seed_offset: int = 0, regime_gate: bool,
                     name: str):  # fmt: skip
    """Train one Stage3 model on ``inputs`` with the run's settings (logs under ``name``);
    returns the :class:`~relcast.training.stage3.Stage3Result`, saves nothing."""
    from relcast.training.stage3 import fit_stage3

    s = pipe.config.stage3
    return fit_stage3(
        model,
        inputs,
        pipe.labels,
        pipe.split,
        lookback=s.lookback,
        hparams=s.hparams(model),  # shared hidden_size/dropout + the stage3.<model> section
        quantiles=s.quantiles,
        max_epochs=s.max_epochs,
        batch_size=distributed.per_rank(s.batch_size),  # global batch / ranks
        chunk_length=s.chunk_length,
        lr=s.lr,
        patience=s.patience,
        label_norm=s.label_norm,
        seed=pipe.config.trainer.seed + seed_offset,
        out_dir=pipe.dir / "logs" / name,
        stocks=list(pipe.panel.symbols[pipe.target]),  # indices are inputs, not targets
        progress=pipe._progress(),
        regime_gate=regime_gate,
        index_symbols=list(pipe.panel.symbols[pipe.panel.is_index]),
        **pipe._trainer_kwargs(),
    )


def train_stage3(pipe, *, resume: bool = True) -> None:
    """Train every Stage3 model of the config; ``resume`` keeps models already saved."""
    s = pipe.config.stage3
    timings = {}
    runs = [
        (folder_name, model, feature_set, k)
        for name, model, feature_set in pipe.stage3_names()
        for k, folder_name in enumerate(pipe.seed_folders(name))
    ]
    for name, model, feature_set, k in runs:
        if resume and pipe.folder.has(f"stage3/{name}/model.safetensors"):
            try:
                pipe.stage3_model(name)
                continue  # resumable per model
            except RunFolderError as exc:  # damaged weights are trained again, not kept
                _log(f"Stage3 {name}: the saved model cannot be read ({exc}); training it")
        inputs = pipe.stage3_inputs(feature_set)
        num_inputs = inputs.num_features + inputs.cross_width  # rawconcat: + every stock's
        gated = pipe.config.relationships.regime and feature_set == "hybrid"
        _log(
            f"Stage3 {name}: {num_inputs} inputs, lookback {s.lookback}"
            + (", regime gate" if gated else "")
        )
        result = pipe.fit_stage3_model(model, inputs, seed_offset=k, regime_gate=gated, name=name)
        # how to rebuild the wrapper around the registry model when it is loaded
        wrapper = "regime_gate" if gated else "cross_input" if inputs.cross_width else None
        extra = {wrapper: result.model.spec()} if wrapper else {}
        distributed.barrier()  # every rank has read the best checkpoint before it goes
        if not distributed.is_main():
            continue  # rank 0 owns the run folder
        pipe.folder.save_weights(
            f"stage3/{name}/model.safetensors",
            result.model,
            asdict(result.model.config),
            model,
            **extra,
        )
        pipe.folder.drop_checkpoints()
        timings[name] = {
            "seconds_per_epoch": result.seconds_per_epoch,
            "windows_per_second": result.windows_per_second,
            "epochs": len(result.history),
            "best_val_rank_ic": result.best_val_rank_ic,
            "num_inputs": num_inputs,
        }
        if gated:
            scales = timings[name]["regime_gate_scales"] = result.model.scales()
            _log(f"Stage3 {name}: regime gate scales {_format_scales(scales)}")
        _log(
            f"Stage3 {name}: best val rank IC {result.best_val_rank_ic:.4f}, "
            f"{result.seconds_per_epoch:.1f}s/epoch"
        )
    if not distributed.is_main():
        return
    previous = pipe._info()["steps"].get("stage3", {}).get("models", {})
    pipe._mark(
        "stage3",
        sum(t["seconds_per_epoch"] * t["epochs"] for t in timings.values()),
        models={**previous, **timings},
    )
