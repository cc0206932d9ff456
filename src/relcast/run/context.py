"""The typed context of one run: its config, run folder, store, specs and the data and models
the steps share, each read once and cached (:class:`RunContext`).

Every step (:mod:`relcast.run.steps`) is a function of a ``RunContext``; nothing is reached
by name. What a step changes it says with :meth:`RunContext.forget` (the cached values that
its files replace) or by setting the value it made (``ctx.stage1_model = model``).

Files read here, all through :class:`~relcast.runfolder.RunFolder`: ``config.yaml``,
``run.json``, ``panel.parquet``, ``split.json``, ``normalization.json``, the weights of each
stage with their specs, ``relationships.npz`` and (``data.store: memmap``) ``feature_store/``.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, Self

import numpy as np

from relcast import distributed
from relcast.config import RelcastConfig
from relcast.data.panel import Panel
from relcast.features.featureset import FeatureSet
from relcast.runfolder import RUN_FORMAT, RunFolder, RunFolderError, read_json
from relcast.store.run_store import RunStore, open_run_store
from relcast.training.specs import ExtractorSpec, Stage1Spec, Stage3Spec, TrainerSpec

NORMALIZATION = "normalization.json"  # training-span feature statistics (features.normalize)

PREFIX = {"hybrid": "hybrid_", "own": "stage3_own_", "rawconcat": "stage3_rawconcat_"}
"""Run-name prefix of a Stage3 model per feature set."""


def log(msg: str) -> None:
    """One voice per run, also under torchrun (rank 0 prints)."""
    if distributed.is_main():
        print(f"[relcast] {msg}", flush=True)


HYBRID_ONLY = ("joint",)  # models that exist for the relationship columns only


def stage3_names(settings: Any) -> list[tuple[str, str, str]]:
    """``(run name, model, feature set)`` for every Stage3 model of the ``stage3`` section."""
    s = settings
    compared = s.models if s.baseline_models is None else s.baseline_models
    return [
        (PREFIX[fs] + model, model, fs)
        for model in s.models
        for fs in s.feature_sets
        if fs == "hybrid" or (model in compared and model not in HYBRID_ONLY)
    ]


def seed_folders(name: str, seeds: int) -> list[str]:
    """Stage3 folders of one model: ``name`` (seed 0) then ``name@seed<k>``."""
    return [name] + [f"{name}@seed{k}" for k in range(1, seeds)]


class RunContext:
    """One run folder and what its steps share. Build it with ``RunContext(config, dir)``
    for a new run, or :meth:`open` for a finished one (the config it was run with)."""

    def __init__(
        self, config: RelcastConfig, run_dir: str | Path, *, warm_from: Path | None = None
    ) -> None:
        self.config = config
        self.dir = Path(run_dir)
        self.folder = RunFolder(self.dir)
        self.store: RunStore = open_run_store(config.data.store, self.dir)
        self.warm_from = None if warm_from is None else RunFolder(warm_from)
        """A run folder whose networks this run's start from (a walk-forward block's warm
        start from the block before); None: from scratch."""
        self._stage3: dict[str, tuple[Any, Stage3Spec]] = {}

    @classmethod
    def open(cls, run_dir: str | Path) -> Self:
        """An existing run folder, with the configuration it was run with."""
        from relcast.config import load_config

        run_dir = Path(run_dir)
        folder = RunFolder(run_dir)
        info = folder.read_json("run.json")
        if folder.format_of() != RUN_FORMAT:  # checked before recovery touches anything
            found = info.get("format") if isinstance(info, dict) else None
            raise RunFolderError(
                f"{run_dir} is not a run folder of this relcast (its run.json has no relcast "
                f"format marker, or run format {found}; this version reads {RUN_FORMAT})"
            )
        folder.recover_if_free()  # finish an interrupted update, drop leftovers
        return cls(load_config(file=run_dir / "config.yaml"), run_dir)

    def forget(self, *names: str) -> None:
        """Drop cached values (``"panel"``, ``"features"``, ..., ``"stage3"``: the Stage3
        models); all of them if none named."""
        cached = [k for k, v in type(self).__dict__.items() if isinstance(v, cached_property)]
        for name in names or [*cached, "stage3"]:
            if name == "stage3":  # the Stage3 models and their specs
                self._stage3.clear()
            elif name in cached:
                self.__dict__.pop(name, None)
            else:
                raise AttributeError(f"RunContext has no cached value {name!r}")

    # ------------------------------------------------------------------ run.json
    def info(self) -> dict:
        return self.folder.run_info()

    def mark(self, step: str, seconds: float, **extra: Any) -> None:
        """Record ``step`` as done in ``run.json`` (with its seconds and ``extra``)."""
        info = self.info()
        info["steps"][step] = {"seconds": round(seconds, 2), **extra}
        self.folder.write_json("run.json", info)

    def done(self, step: str) -> bool:
        return step in self.info()["steps"]

    # ------------------------------------------------------------------ specs
    @cached_property
    def trainer(self) -> TrainerSpec:
        """Lightning's settings in this process (ddp over torchrun's processes)."""
        return TrainerSpec.from_settings(distributed.trainer_settings(self.config.trainer))

    @cached_property
    def stage1_spec(self) -> Stage1Spec:
        """How the full Stage1 is trained (fold models start from scratch: see extract)."""
        batch = distributed.per_rank(self.config.stage1.batch_dates)  # global batch / ranks
        spec = Stage1Spec.from_settings(
            self.config.stage1, self.config.trainer.seed, batch_dates=batch
        )
        return self._warm_budget(replace(spec, init=self._warm("stage1/model.safetensors")))

    def _warm(self, name: str) -> str | None:
        """The warm-start weights ``name`` of :attr:`warm_from`, if it has them."""
        if self.warm_from is None or not self.warm_from.has(name):
            return None
        return str(self.warm_from.file(name))

    def _warm_budget(self, spec):
        """``spec`` with at most ``split.walk_forward.warm_epochs`` epochs if it starts warm."""
        budget = self.config.split.walk_forward.warm_epochs
        if spec.init is None or budget is None or spec.max_epochs <= budget:
            return spec
        return replace(spec, max_epochs=budget)

    @property
    def warm_fold_epochs(self) -> int | None:
        """The fold models' epoch count of the run this one starts warm from (fold models
        always start from scratch, so a warm block keeps the scratch block's count; None:
        not warm, or not recorded)."""
        if self.warm_from is None or not self.warm_from.has("run.json"):
            return None
        epochs = self.warm_from.run_info()["steps"].get("extract", {}).get("fold_epochs")
        return None if epochs is None else int(epochs)

    @cached_property
    def extractor_spec(self) -> ExtractorSpec:
        return ExtractorSpec.from_config(self.config)

    def stage3_spec(
        self, model: str, *, seed_offset: int = 0, regime_gate: bool, name: str | None = None
    ) -> Stage3Spec:
        """How the Stage3 ``model`` of this run is trained (a seed of the run's seeds); with
        its run ``name``, warm-started from that model of :attr:`warm_from` if it has one."""
        s = self.config.stage3
        spec = Stage3Spec.from_settings(
            s,
            model,
            self.config.trainer.seed + seed_offset,
            batch_size=distributed.per_rank(s.batch_size),  # global batch / ranks
            regime_gate=regime_gate,
            init=None if name is None else self._warm(RunFolder.stage3_weights(name)),
        )
        return self._warm_budget(spec)

    def stage3_names(self) -> list[tuple[str, str, str]]:
        """``(run name, model, feature set)`` for every Stage3 model of the config."""
        return stage3_names(self.config.stage3)

    def seed_folders(self, name: str) -> list[str]:
        return seed_folders(name, self.config.evaluation.seeds)

    # ------------------------------------------------------------------ data
    @cached_property
    def panel(self) -> Panel:
        return self.store.panel(self.folder.load_panel)

    @cached_property
    def split(self):
        return self.folder.load_split(self.panel.dates)

    @property
    def train_end(self) -> np.datetime64:
        return self.panel.dates[self.split.train[-1]]

    @property
    def embargo(self) -> int:
        """Dates between spans and around folds: a label at t reads close[t + delay + H]."""
        return self.config.span_embargo

    def features_for(self, panel: Panel, scalers: dict | None = None) -> FeatureSet:
        """Features of any panel on the run's symbols, scaled with the statistics of the
        training span (:attr:`feature_scalers`); ``scalers={}`` fits them (and fills it)."""
        from relcast.features.build import build_features

        r = self.config.relationships
        features = build_features(
            panel,
            train_end=self.train_end,
            regime_window=r.regime_window if r.regime else None,
            alpha158=self.config.data.alpha158,
            scalers=dict(self.feature_scalers) if scalers is None else scalers,
        )
        if self.config.data.industry_relative:  # group "industry" (features/industry.py)
            from relcast.features.industry import add_industry_features

            features = add_industry_features(features, panel.sectors)
        return features

    @cached_property
    def feature_scalers(self) -> dict:
        """Normalisation statistics of the training span, ``{group: (names, scaler)}``:
        fitted once at ``prepare`` and saved in ``normalization.json``."""
        from relcast.features.normalize import scalers_from_dict

        path = self.dir / NORMALIZATION
        if not path.exists():  # fitted on the run's own panel, whose training span is the run's
            scalers: dict = {}
            self.__dict__["features"] = self.features_for(self.panel, scalers=scalers)
            return scalers
        try:
            return scalers_from_dict(read_json(path))
        except (KeyError, TypeError, ValueError) as exc:
            raise RunFolderError(
                f"{path} is damaged ({exc}); rerun `relcast run --force` to rebuild it"
            ) from None

    @cached_property
    def features(self) -> FeatureSet:
        return self.store.features(self.panel, self.features_for, self.feature_scalers)

    @cached_property
    def labels(self) -> np.ndarray:
        """``[T, N, H]`` raw forward returns (a memory map with ``data.store: memmap``)."""
        d = self.config.data
        return self.store.labels(self.panel, d.horizons, d.label_delay)

    @property
    def stage1_labels(self) -> np.ndarray:
        """The first ``stage1.horizons`` horizons of :attr:`labels`: what Stage1 learns."""
        return self.labels[..., : min(self.config.stage1.horizons, self.labels.shape[2])]

    @cached_property
    def target(self) -> np.ndarray:
        """``bool [N]``: stocks that count in losses and metrics (indices do not)."""
        return ~self.panel.is_index

    # ------------------------------------------------------------------ models
    @cached_property
    def stage1_model(self):
        return self.folder.load_stage1()

    @cached_property
    def stage1_best_epoch(self) -> int:
        """The full Stage1's best epoch count (0: unknown, a run from before it was kept)."""
        return int(self.info()["steps"].get("stage1", {}).get("best_epoch", 0) or 0)

    @cached_property
    def stage1_outputs(self) -> dict[str, np.ndarray]:
        """Stage1 predictions and embeddings for every date of the run's features."""
        from relcast.models.cross_sectional import predict_stage1

        return predict_stage1(self.stage1_model, self.features)

    @cached_property
    def stage2_booster(self):
        """The Stage2 booster, None when the run has none."""
        return self.folder.load_booster()

    @cached_property
    def relationships(self) -> tuple[np.ndarray, list[str]]:
        """``(values [T, N, K], names)`` from ``relationships.npz``, on the features' dates
        (a memory-mapped store ends where ``prepare`` ended; ``update`` appends after it)."""
        stored = self.folder.load_relationships()
        values = self.store.track(stored["values"])
        return values[: len(self.features.dates)], stored["names"]

    def make_extractor(self, spec: ExtractorSpec | None = None):
        """An unfitted extractor of the run's kind (default: the config's spec)."""
        from relcast.relationships.store import extractor_from_spec
        from relcast.training.stage1 import encode_sectors

        sector_ids, _ = encode_sectors(self.panel.sectors, self.panel.num_symbols)
        spec = self.extractor_spec if spec is None else spec
        return extractor_from_spec(spec, self.panel.is_index, sector_ids)

    @cached_property
    def extractor(self):
        """The extractor fitted on the full Stage1 model, as ``extract`` saved it (a run from
        before it was saved: fitted again, deterministically)."""
        saved = self.folder.load_extractor()
        if saved is not None:
            arrays, spec = saved
            return self.make_extractor(ExtractorSpec.from_dict(spec)).load_fitted_state(arrays)
        from relcast.training.common import seed_everything

        seed_everything(self.config.trainer.seed)
        ext = self.make_extractor()
        ext.fit(self.stage1_model, self.features, self.labels, self.split)
        return ext

    def stage3_inputs(self, feature_set: str, features=None, relationships=None):
        """Stage3's inputs of ``feature_set`` (default: the run's features/relationships)."""
        from relcast.training.stage3_inputs import assemble_inputs

        features = self.features if features is None else features
        rel = None
        if feature_set == "hybrid":
            rel = self.relationships if relationships is None else relationships
        return assemble_inputs(features, rel, feature_set, sectors=self.panel.sectors)

    def stage3_model(self, name: str) -> tuple[Any, Stage3Spec]:
        """A saved Stage3 model (eval mode) and the spec it was trained with; a model saved
        before specs were kept gets the run config's settings."""
        if name not in self._stage3:
            model = self.folder.load_stage3(name)
            saved = self.folder.stage3_spec(name)
            if saved is None:  # the run config's settings, as such a run was evaluated
                run = name.split("@")[0]
                kind, fs = next((m, f) for n, m, f in self.stage3_names() if n == run)
                gated = fs == "hybrid" and self.config.relationships.regime
                spec = self.stage3_spec(kind, regime_gate=gated)
                saved = replace(spec, lookback=model.config.lookback)
            else:
                saved = Stage3Spec.from_dict(saved)
            self._stage3[name] = (model, saved)
        return self._stage3[name]

    def has_stage3(self, name: str) -> bool:
        return self.folder.has_stage3(name)


def writes(step: str):
    """Run the step holding the run folder's lock (one writer per folder; re-entrant)."""

    def decorate(function):
        @functools.wraps(function)
        def locked(ctx: RunContext, *args, **kwargs):
            with ctx.folder.lock(step):
                return function(ctx, *args, **kwargs)

        return locked

    return decorate
