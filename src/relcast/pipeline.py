"""The whole pipeline, top to bottom like the design: prepare -> Stage1 (+Stage2) -> extract
-> Stage3 -> evaluate -> report. Every step saves its artefacts in the run folder and is
skipped on the next call when they exist, so an interrupted run resumes where it stopped.

Run folder (``DIR``)::

    config.yaml                 resolved configuration
    run.json                    format version, steps done, timings
    panel.parquet               the market the run was trained on (and updates append to)
    split.json                  train / valid / test dates (embargo between spans)
    data_health.json            rows the reader masked / repaired, by reason and symbol
    stage1/model.safetensors    Stage1 weights (+ model.json: its config)
    stage2/booster.json         LightGBM residual booster (its text format inside JSON)
    relationships.npz           relationship features [T, N, K], names, fold of each date
    data_with_relationships.parquet   own + relationship + calendar features per (date, symbol)
    stage3/<name>/model.safetensors   one folder per Stage3 model
    predictions.parquet         date, symbol, model, horizon, pred, label, q* columns
    backtest.parquet, metrics.json, attention.npz, importance.json, logs/, plots/, report.html
    .relcast.lock               held by the one writing command (relcast.runfolder)

Files are written through :class:`~relcast.runfolder.RunFolder` (atomic, one writer at a
time, recovery after a crash: docs/reliability.md).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from relcast import distributed, stage3_step
from relcast.run_data import (  # noqa: F401  (importable from here too)
    FEATURE_STORE,
    NORMALIZATION,
    RunData,
    _log,
    _writes,
    return_freed_memory,
)
from relcast.source import (  # noqa: F401  (check_universe_file: importable from here too)
    check_universe,
    check_universe_file,
    load_source,
)

RELATIONSHIP_TABLE = "data_with_relationships.parquet"  # relationships.table: the export
STEPS = ("prepare", "stage1", "stage2", "extract", "stage3", "evaluate", "report")
TRAINING_STEPS = ("stage1", "extract", "stage3")  # run on every rank under torchrun


class Pipeline(RunData):
    """One run of relcast in one folder. ``run()`` does every step; each step is callable.
    The data half (``prepare``, ``panel``, ``split``, ``features``, ``labels``, ...) is
    :class:`~relcast.run_data.RunData`'s."""

    # ------------------------------------------------------------------ trainer
    def _progress(self) -> bool:
        return bool(self.config.trainer.progress)

    def _trainer_kwargs(self) -> dict:
        t = distributed.trainer_settings(self.config.trainer)  # ddp over torchrun's processes
        kw = dict(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy)
        kw["precision"] = t.precision
        if t.num_nodes > 1:
            kw["num_nodes"] = t.num_nodes
        return kw

    # ------------------------------------------------------------------ Stage1
    def _stage1_fit_kwargs(self) -> dict:
        """How every Stage1 of the run is trained (the full model and the fold models)."""
        s = self.config.stage1
        return dict(
            sector_ids=self.panel.sectors,
            loss=s.loss,
            label_norm=s.label_norm,
            rank_mse_weight=s.rank_mse_weight,
            max_epochs=s.max_epochs,
            batch_dates=distributed.per_rank(s.batch_dates),  # global batch / ranks
            lr=s.lr,
            patience=s.patience,
            seed=self.config.trainer.seed,
            target=self.target,
            progress=self._progress(),
            **self._trainer_kwargs(),
        )

    @_writes("stage1")
    def stage1(self) -> None:
        from relcast.models.cross_sectional import Stage1Config
        from relcast.relationships.folds import best_epoch_count
        from relcast.training.stage1 import encode_sectors, fit_stage1

        f = self.features
        _, num_sectors = encode_sectors(self.panel.sectors, self.panel.num_symbols)
        cfg = Stage1Config.from_settings(  # the stage1 section + the sizes of the data
            self.config.stage1,
            num_features=len(f.names),
            num_stocks=self.panel.num_symbols,
            num_sectors=num_sectors,
            horizons=self.stage1_labels.shape[2],
        )
        _log(f"Stage1: {cfg.d_model}d x {cfg.num_layers} layers on {cfg.num_stocks} symbols")
        result = fit_stage1(
            f, self.stage1_labels, self.split, cfg, out_dir=self.dir / "logs" / "stage1",
            **self._stage1_fit_kwargs(),
        )  # fmt: skip
        self._cache["stage1"] = result.model
        self._cache["stage1_best_epoch"] = best_epoch_count(result.history)  # on every rank
        distributed.barrier()  # every rank has read the best checkpoint before it goes
        if not distributed.is_main():
            return  # rank 0 owns the run folder
        self.folder.save_weights("stage1/model.safetensors", result.model, asdict(cfg), "stage1")
        self.folder.drop_checkpoints()  # the weights are safetensors now; no pickles kept
        self._mark(
            "stage1",
            result.train_seconds,
            best_val_rank_ic=result.best_val_rank_ic,
            epochs=len(result.history),
            best_epoch=self._cache["stage1_best_epoch"],
        )
        _log(
            f"Stage1 done in {result.train_seconds:.0f}s, "
            f"best val rank IC {result.best_val_rank_ic:.4f}"
        )

    @property
    def stage1_model(self):
        if "stage1" not in self._cache:
            self._cache["stage1"] = self.folder.load_stage1()
        return self._cache["stage1"]

    def stage1_outputs(self, features=None) -> dict[str, np.ndarray]:
        """Stage1 predictions and embeddings for every date (cached for the run's features)."""
        from relcast.models.cross_sectional import predict_stage1

        if features is not None:
            return predict_stage1(self.stage1_model, features)
        if "stage1_out" not in self._cache:
            self._cache["stage1_out"] = predict_stage1(self.stage1_model, self.features)
        return self._cache["stage1_out"]

    # ------------------------------------------------------------------ Stage2
    @_writes("stage2")
    def stage2(self) -> None:
        from relcast.features.labels import normalize_labels_cross_section
        from relcast.models.residual import ResidualBooster

        s = self.config.stage2
        if not s.enabled:
            self._mark("stage2", 0.0, enabled=False)
            return
        start = time.perf_counter()
        out = self.stage1_outputs()
        f = self.features
        # Stage1 is trained on cross-sectionally normalised labels: residuals in the same units
        y = normalize_labels_cross_section(self.labels, f.mask)[..., 0]
        mask = f.mask & self.target[None, :]
        booster = ResidualBooster(
            num_leaves=s.num_leaves,
            n_estimators=s.n_estimators,
            learning_rate=s.learning_rate,
            seed=self.config.trainer.seed,
            max_rows=s.max_rows,
        ).fit(
            np.nan_to_num(f.values),
            out["embeddings"],
            out["pred"][..., 0],
            y,
            mask,
            self.split.train,
            self.split.valid,
        )
        self.folder.save_booster(booster)
        self._cache["stage2"] = booster
        r = booster.report_
        self._mark("stage2", time.perf_counter() - start, helped=booster.helped_, **r)
        _log(
            f"Stage2 on validation: rank IC {r['stage1']['rank_ic']:.4f} -> "
            f"{r['stage1+stage2']['rank_ic']:.4f}, MSE {r['stage1']['mse']:.4f} -> "
            f"{r['stage1+stage2']['mse']:.4f} ({'helped' if booster.helped_ else 'not helped'}"
            f" by its criterion: MSE cut {r['mse_rel_gain']:.2%}, needs > 0.5%)"
        )

    @property
    def stage2_booster(self):
        if "stage2" not in self._cache:
            booster = self.folder.load_booster()
            if booster is None:
                return None
            self._cache["stage2"] = booster
        return self._cache["stage2"]

    # ------------------------------------------------------------------ extraction
    def make_extractor(self):
        from relcast.relationships.store import make_extractor
        from relcast.training.stage1 import encode_sectors

        r = self.config.relationships
        sector_ids, _ = encode_sectors(self.panel.sectors, self.panel.num_symbols)
        return make_extractor(
            r.extractor,
            is_index=self.panel.is_index,
            sector_ids=sector_ids,
            method=r.v2.method,
            n_components=self.config.stage1.relationship_dim,
            stage1_score=r.stage1_score,
            neighbours=r.neighbours,
            # V3 recovers realised returns from the labels: it must know how late they start
            label_delay=self.config.data.label_delay,
            seed=self.config.trainer.seed,
            **r.v3.model_dump(),  # V3's settings (the other extractors take none)
        )

    def _fold_epochs(self) -> int | None:
        """Epochs of each out-of-fold Stage1 (``relationships.oof_epochs``); None: early
        stopping, also when the full model's best epoch is unknown (a run from before it was
        recorded)."""
        epochs = self.config.relationships.oof_epochs
        if epochs == "early_stopping":
            return None
        if epochs == "best":
            if "stage1_best_epoch" not in self._cache:
                step = self._info()["steps"].get("stage1", {})
                self._cache["stage1_best_epoch"] = step.get("best_epoch", 0)
            return self._cache["stage1_best_epoch"] or None
        return int(epochs)

    @_writes("extract")
    def extract(self) -> None:
        """Relationship features for every date, out-of-fold on the training span."""
        from relcast.relationships.store import build_relationship_store

        folds, table = self.config.relationships.oof_folds, self.config.relationships.table
        _log(
            f"extracting {self.config.relationships.extractor} relationship features "
            f"({'out-of-fold, ' + str(folds) + ' folds' if folds else 'leaky: no folds'})"
        )
        mine = distributed.is_main()  # rank 0 extracts and writes the store
        values_path = None
        if mine and self.config.data.store == "memmap":  # by date blocks into a run-folder map
            from relcast.runfolder.base import temp_path
            from relcast.runfolder.formats import RELATIONSHIP_VALUES

            values_path = temp_path(self.folder.file(RELATIONSHIP_VALUES))
        store = build_relationship_store(
            self.features,
            self.stage1_labels,
            self.split,
            self.stage1_model.config,
            self.make_extractor(),
            n_folds=folds,
            oof=folds > 0,
            embargo=self.config.embargo + self.config.data.label_delay,
            out_dir=self.dir / "logs" / "stage1_folds",
            out_path=self.dir / RELATIONSHIP_TABLE if mine and table else None,
            full_model=self.stage1_model,
            fold_epochs=self._fold_epochs(),
            values_path=values_path,
            extract=mine,  # the other ranks join the fold models' fits, then wait
            **self._stage1_fit_kwargs(),
        )
        self._cache["extractor"] = store.full_extractor
        distributed.barrier()  # every rank has read its fold checkpoints before they go
        if not mine:
            return
        self._save_relationships(store.names, store.values, store.mask, store.fold_of)
        self.folder.drop_checkpoints()  # fold models were only needed to extract
        self._mark("extract", store.build_seconds, columns=len(store.names), folds=folds)
        _log(f"{len(store.names)} relationship columns in {store.build_seconds:.0f}s")

    def _save_relationships(self, names, values, mask, fold_of) -> None:
        dates = self.panel.dates[: len(values)]
        self.folder.save_relationships(names, values, mask, fold_of, dates)
        self._cache.pop("relationships", None)

    @property
    def relationships(self) -> tuple[np.ndarray, list[str]]:
        """``(values [T, N, K], names)`` from the store."""
        if "relationships" not in self._cache:
            stored = self.folder.load_relationships()
            values = stored["values"]
            if isinstance(values, np.memmap):  # its pages go with the store's
                self.feature_store.track(values)
                values = np.asarray(values)  # one ndarray view of the map: Stage3's cache key
            self._cache["relationships"] = (values, stored["names"])
        return self._cache["relationships"]

    @property
    def extractor(self):
        """The extractor fitted on the full Stage1 model (refitted deterministically)."""
        if "extractor" not in self._cache:
            from relcast.training.common import seed_everything

            seed_everything(self.config.trainer.seed)
            ext = self.make_extractor()
            ext.fit(self.stage1_model, self.features, self.labels, self.split)
            self._cache["extractor"] = ext
        return self._cache["extractor"]

    # ------------------------------------------------------------------ Stage3
    def stage3_names(self) -> list[tuple[str, str, str]]:
        """``(run name, model, feature set)`` for every Stage3 model of the config."""
        return stage3_step.stage3_names(self.config.stage3)

    def stage3_inputs(self, feature_set: str, features=None, relationships=None):
        from relcast.training.stage3_inputs import assemble_inputs

        features = self.features if features is None else features
        rel = None
        if feature_set == "hybrid":
            rel = self.relationships if relationships is None else relationships
        return assemble_inputs(features, rel, feature_set, sectors=self.panel.sectors)

    def seed_folders(self, name: str) -> list[str]:
        """Stage3 folders of one model: ``name`` (seed 0) then ``name@seed<k>``."""
        return stage3_step.seed_folders(name, self.config.evaluation.seeds)

    def fit_stage3_model(self, model: str, inputs, **kwargs):
        """One Stage3 model trained with the run's settings (:mod:`relcast.stage3_step`)."""
        return stage3_step.fit_stage3_model(self, model, inputs, **kwargs)

    @_writes("stage3")
    def stage3(self, *, resume: bool = True) -> None:
        """Train every Stage3 model of the config; ``resume`` keeps models already saved."""
        stage3_step.train_stage3(self, resume=resume)

    def stage3_model(self, name: str):
        key = f"stage3:{name}"
        if key not in self._cache:
            self._cache[key] = self.folder.load_stage3(name)
        return self._cache[key]

    # ------------------------------------------------------------------ evaluate / report
    @_writes("evaluate")
    def evaluate(self) -> dict:
        from relcast.run_evaluation import evaluate_run

        start = time.perf_counter()
        metrics = evaluate_run(self)
        self._mark("evaluate", time.perf_counter() - start)
        return metrics

    @_writes("report")
    def report(self) -> Path:
        from relcast.evaluation.report import build_report

        start = time.perf_counter()
        path = build_report(self.dir)
        self._mark("report", time.perf_counter() - start)
        return path

    # ------------------------------------------------------------------ the whole thing
    @_writes("run")
    def run(self, *, force: bool = False) -> dict:
        """Every step in order; steps already done are skipped unless ``force``."""
        # under torchrun/srun: rank 0 writes, every rank trains
        distributed.init(self.config.trainer.accelerator)
        total = time.perf_counter()
        if not force:
            distributed.on_main("resume", lambda: self.done("prepare") and self.check_resumable())
        for step in STEPS:
            # rank 0 reads the run folder and decides; every rank follows the same plan
            skip = distributed.broadcast(not force and distributed.is_main() and self.done(step))
            if skip:
                if step != "prepare":
                    _log(f"{step}: done already, skipped")
                continue
            if step in TRAINING_STEPS:  # data-parallel on every rank, rank 0 writes
                if step == "stage3":
                    self.stage3(resume=not force)
                else:
                    getattr(self, step)()
                distributed.barrier()  # the step's files are written before anyone reads them
            else:  # rank 0 alone; the others wait, and stop if it fails
                distributed.on_main(step, getattr(self, step))
            return_freed_memory()  # one step's temporaries do not raise the next step's RSS
        _log(f"run finished in {time.perf_counter() - total:.0f}s -> {self.dir}")
        return self.folder.load_metrics()
