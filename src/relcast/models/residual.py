"""Stage2: a LightGBM booster fitted on Stage1's residuals.

Stage1 gives a baseline prediction per (date, stock). Stage2 learns what it missed,
``residual = label - stage1_pred``, from the raw features plus (optionally) Stage1's
embeddings, and adds its correction back: ``stage1_pred + booster(x)``. Whether it helped is
measured on the validation span, never assumed: see :attr:`ResidualBooster.report_`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_PARAMS = (
    "num_leaves",
    "n_estimators",
    "learning_rate",
    "early_stopping_rounds",
    "seed",
    "use_embeddings",
    "calibrate",
    "n_jobs",
    "max_rows",
)
# A correction that lowers validation MSE by less than this (relative) is noise, not help.
_HELP_MIN_REL_GAIN = 0.005


def _rows(mask: np.ndarray, dates_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, n) indices of the masked cells at ``dates_index``, date-major."""
    sub = np.zeros_like(mask)
    sub[dates_index] = mask[dates_index]
    t, n = np.nonzero(sub)
    return t, n


def _cap_rows(t: np.ndarray, n: np.ndarray, cap: int | None, seed: int):
    """At most ``cap`` of the cells ``(t, n)``: a seeded uniform sample without replacement,
    kept in date order (as the LightGBM baselines' ``baselines.max_rows``); all of them when
    there are no more than ``cap``."""
    if cap is None or len(t) <= cap:
        return t, n
    pick = np.sort(np.random.default_rng(seed).choice(len(t), int(cap), replace=False))
    return t[pick], n[pick]


@dataclass(eq=False)
class ResidualBooster:
    """Gradient boosting on Stage1's residuals (sklearn style: ``fit`` then ``predict``).

    Args:
        num_leaves, n_estimators, learning_rate: LightGBM tree parameters.
        early_stopping_rounds: stop when validation MSE has not improved for this many trees.
        seed: LightGBM seed (bagging/feature sampling and ties).
        use_embeddings: also feed Stage1's embeddings ``[T, N, d]`` next to the raw features.
        calibrate: first map ``stage1_pred`` to the labels' units with a least-squares
            ``scale_ * pred + offset_`` on the training cells (``scale_ >= 0``, so the ranking
            and IC are Stage1's own). Stage1 trained with the ``"mse"`` loss predicts
            cross-sectional z-scores, not returns; without calibration the "residual" would be
            mostly a unit mismatch. The report's Stage1 line uses the calibrated prediction.
        n_jobs: LightGBM threads; ``None`` leaves LightGBM's default (OpenMP's).
        max_rows: fit (and calibrate, and early-stop) on at most this many (date, stock)
            cells of the training span and as many of the validation span: a seeded sample
            in date order above it (``stage2.max_rows``); ``None``: every cell.

    Learned attributes: ``booster_`` (``lightgbm.Booster``), ``best_iteration_``,
    ``report_`` (validation metrics of Stage1 alone vs Stage1+Stage2) and ``helped_``.
    """

    num_leaves: int = 31
    n_estimators: int = 300
    learning_rate: float = 0.05
    early_stopping_rounds: int = 30
    seed: int = 0
    use_embeddings: bool = True
    calibrate: bool = True
    n_jobs: int | None = None
    max_rows: int | None = None

    # ------------------------------------------------------------------ helpers
    def _design_rows(
        self, raw_features: np.ndarray, embeddings: np.ndarray | None, t: np.ndarray, n: np.ndarray
    ) -> np.ndarray:
        """``[rows, F (+ d)]``: :meth:`_design`'s rows at cells ``(t, n)``, gathered without
        the whole ``[T, N, F (+ d)]`` design."""
        if self.use_embeddings and embeddings is not None:
            if embeddings.shape[:2] != raw_features.shape[:2]:
                raise ValueError(
                    f"embeddings {embeddings.shape} do not match raw_features "
                    f"{raw_features.shape} on [T, N]"
                )
            raw = np.asarray(raw_features[t, n])
            return np.concatenate([raw, np.asarray(embeddings[t, n]).astype(raw.dtype)], axis=-1)
        return np.asarray(raw_features[t, n])

    def _design(self, raw_features: np.ndarray, embeddings: np.ndarray | None) -> np.ndarray:
        """``[T, N, F (+ d)]`` model input."""
        if self.use_embeddings and embeddings is not None:
            if embeddings.shape[:2] != raw_features.shape[:2]:
                raise ValueError(
                    f"embeddings {embeddings.shape} do not match raw_features "
                    f"{raw_features.shape} on [T, N]"
                )
            return np.concatenate([raw_features, embeddings.astype(raw_features.dtype)], axis=-1)
        return raw_features

    @staticmethod
    def _check(raw_features: np.ndarray, stage1_pred: np.ndarray, mask: np.ndarray) -> None:
        if raw_features.ndim != 3:
            raise ValueError(f"raw_features must be [T, N, F], got shape {raw_features.shape}")
        if stage1_pred.shape != raw_features.shape[:2] or mask.shape != raw_features.shape[:2]:
            raise ValueError(
                f"stage1_pred {stage1_pred.shape} and mask {mask.shape} must be [T, N] = "
                f"{raw_features.shape[:2]}; pass one horizon of Stage1's prediction"
            )

    # ------------------------------------------------------------------ fit / predict
    def fit(
        self,
        raw_features: np.ndarray,
        embeddings: np.ndarray | None,
        stage1_pred: np.ndarray,
        labels: np.ndarray,
        mask: np.ndarray,
        train_index: np.ndarray,
        valid_index: np.ndarray,
    ) -> ResidualBooster:
        """Fit on the residual ``labels - stage1_pred`` of the masked training cells.

        Args:
            raw_features: ``[T, N, F]`` (finite where ``mask``).
            embeddings: Stage1 embeddings ``[T, N, d]`` or ``None``.
            stage1_pred: ``[T, N]`` Stage1's prediction for the same horizon as ``labels``.
            labels: ``[T, N]`` forward returns (NaN where undefined; those cells are dropped).
            mask: ``bool [T, N]`` cells to use.
            train_index, valid_index: date indices (from the chronological split); the
                validation span drives early stopping and the report.
        """
        import lightgbm as lgb

        self._check(raw_features, stage1_pred, mask)
        if labels.shape != mask.shape:
            raise ValueError(f"labels must be [T, N] = {mask.shape}, got {labels.shape}")
        usable = mask & np.isfinite(labels) & np.isfinite(stage1_pred)
        tr_t, tr_n = _cap_rows(*_rows(usable, np.asarray(train_index)), self.max_rows, self.seed)
        va_t, va_n = _cap_rows(*_rows(usable, np.asarray(valid_index)), self.max_rows, self.seed)
        if len(tr_t) == 0 or len(va_t) == 0:
            raise ValueError("no usable (date, stock) cells in the training or validation span")
        self.scale_, self.offset_ = 1.0, 0.0
        if self.calibrate:
            p, y = stage1_pred[tr_t, tr_n].astype(np.float64), labels[tr_t, tr_n]
            var, cov = p.var(), np.mean((p - p.mean()) * (y - y.mean()))
            self.scale_ = max(float(cov / var), 0.0) if var > 0 else 0.0
            self.offset_ = float(y.mean() - self.scale_ * p.mean())
        base = self.baseline(stage1_pred)  # (T, N) Stage1 in label units
        residual = labels - base  # (T, N)

        params: dict[str, Any] = {
            "objective": "regression",
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": 20,
            "feature_fraction": 0.9,
            "seed": self.seed,
            "deterministic": True,
            "verbosity": -1,
        }
        if self.n_jobs is not None:
            params["num_threads"] = self.n_jobs
        x_tr = self._design_rows(raw_features, embeddings, tr_t, tr_n)  # (rows, F')
        x_va = self._design_rows(raw_features, embeddings, va_t, va_n)
        dtrain = lgb.Dataset(x_tr, residual[tr_t, tr_n], free_raw_data=True)
        dvalid = lgb.Dataset(x_va, residual[va_t, va_n], reference=dtrain)
        self.booster_ = lgb.train(
            params,
            dtrain,
            num_boost_round=self.n_estimators,
            valid_sets=[dvalid],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        self.best_iteration_ = int(self.booster_.best_iteration or self.n_estimators)
        self.n_features_in_ = x_tr.shape[-1]

        # Report: Stage1 alone vs Stage1+Stage2 on the validation span.
        from relcast.metrics import signal_metrics

        valid = np.asarray(valid_index)
        vmask = usable[valid]
        combined = self.predict(raw_features, embeddings, stage1_pred, mask)
        stage1_m = signal_metrics(base[valid], labels[valid], vmask)
        both_m = signal_metrics(combined[valid], labels[valid], vmask)
        self.report_ = {
            "stage1": stage1_m,
            "stage1+stage2": both_m,
            "best_iteration": self.best_iteration_,
            "valid_cells": int(vmask.sum()),
            "calibration": {"scale": self.scale_, "offset": self.offset_},
        }
        gain = (stage1_m["mse"] - both_m["mse"]) / max(stage1_m["mse"], 1e-12)
        self.report_["mse_rel_gain"] = float(gain)
        self.helped_ = bool(gain > _HELP_MIN_REL_GAIN)
        return self

    def save(self, path: str | Path) -> Path:
        """Write the fitted booster (trees, calibration, report) as one JSON file, atomically."""
        if not hasattr(self, "booster_"):
            raise RuntimeError("ResidualBooster is not fitted: call fit(...) first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "params": {k: getattr(self, k) for k in _PARAMS},
            "scale_": self.scale_,
            "offset_": self.offset_,
            "best_iteration_": self.best_iteration_,
            "n_features_in_": self.n_features_in_,
            "report_": getattr(self, "report_", None),
            "helped_": getattr(self, "helped_", None),
            "model": self.booster_.model_to_string(),
        }
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ResidualBooster:
        """A booster written by :meth:`save`, ready to ``predict``."""
        import lightgbm as lgb

        state = json.loads(Path(path).read_text())
        booster = cls(**state["params"])
        booster.booster_ = lgb.Booster(model_str=state["model"])
        for key in ("scale_", "offset_", "best_iteration_", "n_features_in_"):
            setattr(booster, key, state[key])
        if state.get("report_") is not None:
            booster.report_, booster.helped_ = state["report_"], state["helped_"]
        return booster

    def baseline(self, stage1_pred: np.ndarray) -> np.ndarray:
        """Stage1's prediction in label units: ``scale_ * stage1_pred + offset_``."""
        return (self.scale_ * stage1_pred + self.offset_).astype(np.float32)

    def correction(
        self, raw_features: np.ndarray, embeddings: np.ndarray | None, mask: np.ndarray
    ) -> np.ndarray:
        """Stage2's additive correction ``[T, N]`` (NaN where ``mask`` is False)."""
        if not hasattr(self, "booster_"):
            raise RuntimeError("ResidualBooster is not fitted: call fit(...) first")
        X = self._design(raw_features, embeddings)  # (T, N, F')
        if X.shape[-1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} input columns, got {X.shape[-1]}")
        out = np.full(mask.shape, np.nan, dtype=np.float32)
        t, n = np.nonzero(mask)
        if len(t):
            out[t, n] = self.booster_.predict(X[t, n], num_iteration=self.best_iteration_)
        return out

    def predict(
        self,
        raw_features: np.ndarray,
        embeddings: np.ndarray | None,
        stage1_pred: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Stage1+Stage2 prediction ``baseline(stage1_pred) + correction`` ``[T, N]``.

        ``mask`` defaults to the cells where ``stage1_pred`` is finite; NaN elsewhere.
        """
        mask = np.isfinite(stage1_pred) if mask is None else mask & np.isfinite(stage1_pred)
        self._check(raw_features, stage1_pred, mask)
        correction = self.correction(raw_features, embeddings, mask)
        return (self.baseline(stage1_pred) + correction).astype(np.float32)
