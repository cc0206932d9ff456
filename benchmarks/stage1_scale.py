"""Stage1 at 1,000 stocks: training and extraction speed, and the cost of the out-of-fold store.

A synthetic market of the real NASDAQ universe's size (1,026 stocks, 44 feature columns, as
``relcast.read_panel("../shared/data/rsr_nasdaq")`` with the pipeline's features), random
features with a planted cross-sectional signal (a stock's next return follows its own feature
0 and its sector's mean of feature 1), horizon 1.

1. **Speed** (small and medium presets, each in a fresh process): training dates/s of one
   step of the pipeline's Stage1 module (IC loss, forward + backward + AdamW) on
   ``batch_dates`` dates, and extraction dates/s (V2 ``EmbeddingExtractor.extract``, i.e.
   ``predict_stage1`` in batches of 64 dates), with attention dropout 0.1 (``before``: what
   ``stage1.dropout`` used to do to the attention weights too) and 0 (``after``: the default
   now, PyTorch's fused attention kernel), plus peak RSS above the process's baseline.
2. **Out-of-fold store** (small preset, ``oof_dates`` dates, 8 per batch): the full Stage1 is
   trained once with early stopping and reused (as the pipeline does); then
   :func:`relcast.relationships.store.build_relationship_store` builds the 3-fold store

   - ``before``: fold models early-stop like the full model (a validation pass every epoch,
     ``patience`` epochs past their best) and Procrustes alignment extracts every training
     date again per fold;
   - ``after``: ``fold_epochs`` = the full model's best epoch count (one validation at the
     end), alignment on at most 64 dates;

   and the quality of what Stage3 would learn from it: a ridge regression on own features +
   relationship features, fitted on the training span's (out-of-fold) rows and scored on the
   validation span (full-model features), mean daily Rank IC; also with own features alone.

    python -m benchmarks.stage1_scale            # N = 1,026 (make bench-large, ~15 min)
    python -m benchmarks.stage1_scale --quick    # tiny sizes (tests)
    python -m benchmarks.stage1_scale --skip-oof # the speed rows only
"""

from __future__ import annotations

import argparse
import tempfile
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.common import MB, PeakRSS, format_table, quiet, run_isolated, write_result

NAME = "stage1_scale"
FULL = dict(
    stocks=1026,
    features=44,
    sectors=20,
    presets=("small", "medium"),
    batch_dates=32,
    train_steps=1,
    extract_dates=128,
    oof_dates=260,
    oof_batch_dates=8,
    oof_max_epochs=8,
    oof_patience=2,
    n_folds=3,
)
QUICK = dict(
    stocks=24,
    features=6,
    sectors=3,
    presets=("small",),
    batch_dates=4,
    train_steps=1,
    extract_dates=8,
    oof_dates=90,
    oof_batch_dates=4,
    oof_max_epochs=2,
    oof_patience=1,
    n_folds=2,
)


def synthetic(stocks: int, features: int, sectors: int, dates: int, seed: int = 0):
    """``(FeatureSet, labels [T, N, 1], sector_ids [N], split)`` with a planted signal."""
    from relcast.features.featureset import FeatureSet

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((dates, stocks, features)).astype(np.float32)
    mask = rng.random((dates, stocks)) > 0.03  # a few stocks missing per date
    sector = rng.integers(0, sectors, stocks)
    onehot = np.eye(sectors, dtype=np.float32)[sector]  # (N, S)
    peer = x[..., 1] @ onehot / np.maximum(onehot.sum(0), 1)  # (T, S) sector means
    y = 0.15 * x[..., 0] + 0.3 * peer[:, sector] + rng.standard_normal((dates, stocks))
    labels = np.where(mask, y, np.nan).astype(np.float32)[..., None]
    x[~mask] = np.nan
    names = [f"f{k}" for k in range(features)]
    fs = FeatureSet(
        dates=np.arange(dates).astype("datetime64[D]").astype("datetime64[ns]"),
        symbols=np.array([f"S{i:04d}" for i in range(stocks)]),
        names=names,
        values=x,
        mask=mask,
        groups={"own": names},
    )
    n_train, n_valid = int(dates * 0.6), int(dates * 0.2)
    gap = 2  # embargo >= the horizon between spans
    split = SimpleNamespace(
        train=np.arange(0, n_train),
        valid=np.arange(n_train + gap, n_train + n_valid),
        test=np.arange(n_train + n_valid + gap, dates),
    )
    return fs, labels, sector, split


def _config(preset: str, fs, sectors: int, attention_dropout: float):
    from relcast.config import load_config
    from relcast.models.cross_sectional import Stage1Config

    cfg = Stage1Config.from_settings(
        load_config(preset).stage1,
        num_features=len(fs.names),
        num_stocks=len(fs.symbols),
        num_sectors=sectors,
        horizons=1,
    )
    cfg.attention_dropout = attention_dropout
    return cfg


def measure_speed(preset: str, attention_dropout: float, cfg: dict) -> dict[str, Any]:
    """Training and extraction dates/s of one preset (run in a fresh process)."""
    import torch

    from relcast.models.extractors import EmbeddingExtractor
    from relcast.training.stage1 import Stage1Module

    B = cfg["batch_dates"]
    dates = max(B, cfg["extract_dates"])
    fs, labels, sector, _ = synthetic(cfg["stocks"], cfg["features"], cfg["sectors"], dates)
    torch.manual_seed(0)
    module = Stage1Module(
        _config(preset, fs, cfg["sectors"], attention_dropout), sector_ids=sector, loss="ic"
    )
    optimizer = module.configure_optimizers()
    mask = torch.from_numpy(fs.mask[:B])
    batch = {
        "x": torch.from_numpy(np.nan_to_num(fs.values[:B])),
        "mask": mask,
        "y": torch.from_numpy(np.where(fs.mask[:B, :, None], labels[:B], np.nan)),
    }

    def step(b: dict) -> None:
        loss = module._losses(b, module(b))["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    module.train()
    step({k: v[:2] for k, v in batch.items()})  # warm-up on 2 dates
    with PeakRSS() as peak:
        start = time.perf_counter()
        for _ in range(cfg["train_steps"]):
            step(batch)
        train_s = (time.perf_counter() - start) / cfg["train_steps"]
    train_rss = peak.delta
    model = module.model.eval()
    ext = EmbeddingExtractor("bottleneck")
    ext.extract(model, fs, np.arange(2))  # warm-up
    idx = np.arange(cfg["extract_dates"])
    with PeakRSS() as peak:
        start = time.perf_counter()
        ext.extract(model, fs, idx)
        extract_s = time.perf_counter() - start
    return {
        "preset": preset,
        "attention_dropout": attention_dropout,
        "stocks": cfg["stocks"],
        "batch_dates": B,
        "train_s_per_step": round(train_s, 3),
        "train_dates_per_s": round(B / train_s, 3),
        "train_peak_rss_mb": round(train_rss / MB, 1),
        "extract_dates_per_s": round(len(idx) / extract_s, 3),
        "extract_peak_rss_mb": round(peak.delta / MB, 1),
    }


def _daily_rank_ic(pred: np.ndarray, y: np.ndarray, ok: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ics = [spearmanr(p[m], t[m])[0] for p, t, m in zip(pred, y, ok, strict=True) if m.sum() > 2]
    return float(np.nanmean(ics))


def hybrid_quality(store, fs, labels, split) -> dict[str, float]:
    """Valid Rank IC of a ridge on own (+ relationship) features fitted on the training span."""
    y = labels[..., 0]

    def rows(idx, with_rel):
        parts = [fs.values[idx]] + ([store.values[idx]] if with_rel else [])
        return np.concatenate(parts, axis=-1)  # (t, N, F [+ K])

    out = {}
    for name, with_rel in (("own", False), ("hybrid", True)):
        xtr, xva = rows(split.train, with_rel), rows(split.valid, with_rel)
        ok_tr = np.isfinite(xtr).all(-1) & np.isfinite(y[split.train])
        ok_va = np.isfinite(xva).all(-1) & np.isfinite(y[split.valid])
        a, b = xtr[ok_tr].astype(np.float64), y[split.train][ok_tr]
        w = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ b)
        pred = np.nan_to_num(xva) @ w  # (t, N)
        out[f"valid_rank_ic_{name}"] = round(_daily_rank_ic(pred, y[split.valid], ok_va), 4)
    return out


def measure_oof(cfg: dict, variants: tuple[str, ...]) -> list[dict[str, Any]]:
    """The 3-fold store built the old way and the new way, from one full model."""
    from relcast.models.extractors import EmbeddingExtractor
    from relcast.relationships import store as relationships
    from relcast.training.specs import Stage1Spec, TrainerSpec
    from relcast.training.stage1 import fit_stage1

    fs, labels, sector, split = synthetic(
        cfg["stocks"], cfg["features"], cfg["sectors"], cfg["oof_dates"]
    )
    config = _config("small", fs, cfg["sectors"], 0.0)
    spec = Stage1Spec(
        max_epochs=cfg["oof_max_epochs"],
        patience=cfg["oof_patience"],
        batch_dates=cfg["oof_batch_dates"],
    )
    trainer = TrainerSpec(progress=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="relcast-bench-") as tmp:
        start = time.perf_counter()
        full = fit_stage1(
            fs, labels, split, config, spec, trainer.logging_to(f"{tmp}/full"), sector_ids=sector
        )
        full_s = time.perf_counter() - start
        ics = [h.get("val_rank_ic", np.nan) for h in full.history]
        best_epochs = int(np.nanargmax(ics)) + 1
        rows.append({
            "variant": "full model (shared)", "seconds": round(full_s, 1),
            "epochs": len(full.history), "best_epoch": best_epochs,
            "best_val_rank_ic": round(full.best_val_rank_ic, 4),
        })  # fmt: skip
        for variant in variants:
            old_align = relationships.ALIGN_DATES
            if variant == "before":
                relationships.ALIGN_DATES = 10**9  # every training date, as before
            try:
                with PeakRSS() as peak:
                    fit = relationships.Stage1Fit(
                        config, spec, trainer.logging_to(f"{tmp}/{variant}"), sector_ids=sector
                    )
                    plan = relationships.StorePlan(
                        n_folds=cfg["n_folds"],
                        fold_epochs=None if variant == "before" else best_epochs,
                    )
                    store = relationships.build_relationship_store(
                        fs, labels, split, EmbeddingExtractor("bottleneck"), fit, plan,
                        full_model=full.model,
                    )  # fmt: skip
            finally:
                relationships.ALIGN_DATES = old_align
            folds = store.models[:-1]
            rows.append({
                "variant": variant,
                "seconds": round(store.build_seconds, 1),
                "fold_train_seconds": round(sum(m["train_seconds"] for m in folds), 1),
                "fold_epochs": [m["epochs"] for m in folds],
                "fold_best_val_rank_ic": [round(m["best_val_rank_ic"], 4) for m in folds],
                "peak_rss_mb": round(peak.delta / MB, 1),
                **hybrid_quality(store, fs, labels, split),
            })  # fmt: skip
    return rows


def run(
    quick: bool = False, results_dir=None, skip_oof: bool = False, variants=("before", "after")
) -> dict[str, Any]:
    """Measure, print the tables, write ``results/stage1_scale.json``."""
    cfg = QUICK if quick else FULL
    speed = [
        run_isolated(measure_speed, preset, p, cfg, isolate=not quick)
        for preset in cfg["presets"]
        for p in (0.1, 0.0)
    ]
    print(format_table(speed))
    oof = [] if skip_oof else run_isolated(measure_oof, cfg, tuple(variants), isolate=not quick)
    if oof:
        print(format_table(oof, ["variant", "seconds", "fold_train_seconds", "fold_epochs",
                                 "valid_rank_ic_hybrid", "valid_rank_ic_own"]))  # fmt: skip
    ratios: dict[str, Any] = {}
    for preset in cfg["presets"]:
        before, after = (next(r for r in speed if r["preset"] == preset and
                              r["attention_dropout"] == p) for p in (0.1, 0.0))  # fmt: skip
        ratios[f"{preset}_train_speedup"] = round(
            after["train_dates_per_s"] / before["train_dates_per_s"], 2
        )
        ratios[f"{preset}_train_dates_per_s"] = after["train_dates_per_s"]
        ratios[f"{preset}_extract_dates_per_s"] = after["extract_dates_per_s"]
    by = {r["variant"]: r for r in oof}
    if "before" in by and "after" in by:
        ratios["oof_store_speedup"] = round(by["before"]["seconds"] / by["after"]["seconds"], 2)
    result = {"config": cfg, "rows": speed + oof, "ratios": ratios}
    write_result(NAME, result, results_dir)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--skip-oof", action="store_true", help="speed rows only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    return run(quick=args.quick, skip_oof=args.skip_oof)


if __name__ == "__main__":
    main()
