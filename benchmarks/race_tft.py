"""relcast's TFT vs ``pytorch_forecasting.TemporalFusionTransformer`` on the same data.

Same for both sides: the synthetic market (20 stocks), the 44 features of
``build_features`` (33 own + 6 index + 5 calendar; pytorch-forecasting's own scalers are
switched off so both read the identical numbers), hidden size 64, 4 heads, variable width
16 (their ``hidden_continuous_size``), one LSTM layer, dropout 0.1, lookback, horizons,
quantiles (0.1, 0.5, 0.9), batch size, Adam at 1e-3 (AdamW with weight decay 0 on our
side), gradient clipping 1.0, the number of epochs, a plain ``lightning.Trainer`` without
validation or checkpoints, and the training / test windows.

Making the targets comparable. pytorch-forecasting's decoder predicts one target column at
the H future steps ``t+1..t+H``. So the target is the 1-day return ``close[s]/close[s-1]-1``
z-scored across the stocks at each date s (the field's cross-sectional label
normalisation, computed once for both), and relcast's label for origin t and horizon h is
that column at ``s = t+h``: both models forecast exactly the same H numbers per window.
pytorch-forecasting's target normaliser is the identity (``TorchNormalizer("identity",
center=False)``), so its outputs are in the same units, and neither model sees the target
column as an input. Its decoder gets one known real, ``relative_time_idx`` (the step
position), which relcast does not need (one head per horizon). The test loss is relcast's
``pinball_loss`` applied to both sides' predictions on the same test windows (counts and a
label checksum (sum of absolute labels) are compared).

Measured per side in a fresh process: dataset build (their long pandas frame +
``TimeSeriesDataSet`` for train and test vs our ``assemble_inputs`` + window loaders),
training windows/s, inference windows/s (eval, no grad, batch 1024), peak RSS above the
baseline, activation memory of one training batch, and test pinball loss. Times are
reported as wall seconds and as CPU seconds of the process (``time.process_time``), the
latter being robust to other load on the machine.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import (
    MB,
    PeakRSS,
    format_table,
    ratio,
    run_isolated,
    saved_activation_bytes,
    write_result,
)

NAME = "race_tft"
QUANTILES = (0.1, 0.5, 0.9)
# chunk_length: relcast trains on sequences as the product does (each window end scored once
# an epoch, as in windowed training; None: one window per sample, the earlier race's path)
FULL = dict(num_stocks=20, num_days=500, lookback=30, horizons=5, batch_size=128, epochs=2,
            hidden_size=64, num_heads=4, var_size=16, chunk_length=128)  # fmt: skip
QUICK = dict(num_stocks=6, num_days=150, lookback=10, horizons=2, batch_size=64, epochs=1,
             hidden_size=16, num_heads=2, var_size=4, chunk_length=128)  # fmt: skip
GRAD_CLIP, LR, DROPOUT, INFER_BATCH = 1.0, 1e-3, 0.1, 1024


def make_data(cfg: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Features of the stocks, the shared target, and the train / test origins."""
    import relcast
    from relcast.features.build import build_features
    from relcast.features.labels import normalize_labels_cross_section
    from relcast.features.splits import chronological_split

    panel, _ = relcast.synthetic_market(cfg["num_stocks"], cfg["num_days"], seed=seed)
    H, L = cfg["horizons"], cfg["lookback"]
    split = chronological_split(panel.dates, valid_frac=0.0, test_frac=0.2, embargo=H)
    features = build_features(panel, train_end=int(split.train[-1]))
    stocks = np.flatnonzero(~panel.is_index)
    values = features.values[:, stocks]  # (T, N, F)
    mask = features.mask[:, stocks]
    T = len(panel.dates)
    first = int(np.flatnonzero(mask.all(axis=1))[0])  # warm-up over for every stock
    if not mask[first:].all():
        raise RuntimeError("race data must be complete after the warm-up")
    close = panel.field("close")[:, stocks].astype(np.float64)
    r1 = np.full(close.shape, np.nan)
    r1[1:] = close[1:] / close[:-1] - 1.0
    ok = np.zeros_like(mask)
    ok[first:] = True
    target = normalize_labels_cross_section(r1[:, :, None], ok)[:, :, 0]  # (T, N)
    target = np.where(ok, target, np.nan).astype(np.float32)
    labels = np.full((T, len(stocks), H), np.nan, dtype=np.float32)  # labels[t, :, h-1] = z[t+h]
    for h in range(1, H + 1):  # H shifts of one [T, N] array
        labels[: T - h, :, h - 1] = target[h:]
    train_last = int(split.train[-1])
    test_start = int(split.test[0])
    return {
        "features": features,
        "stocks": stocks,
        "sectors": panel.sectors[stocks],
        "values": values,
        "target": target,
        "labels": labels,
        "first": first,
        "train_origins": np.arange(first + L - 1, train_last + 1),
        "test_origins": np.arange(max(test_start, first + L - 1), T - H),
        "train_last": train_last,
        "test_start": test_start,
    }


def _trainer(max_epochs: int, root: str):
    import lightning

    return lightning.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=GRAD_CLIP,
        default_root_dir=root,
    )


# ----------------------------------------------------------------------------- relcast side


def run_relcast(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build, train and test relcast's TFT; timings, memory and test loss."""
    import torch

    from relcast.features.featureset import FeatureSet
    from relcast.models.temporal.losses import pinball_loss
    from relcast.models.temporal.registry import create_model
    from relcast.training.stage3_inputs import assemble_inputs
    from relcast.training.stage3_module import lightning_module_class

    data = make_data(cfg)
    torch.manual_seed(0)
    with PeakRSS() as peak:
        t0, c0 = time.perf_counter(), time.process_time()
        fs, stocks = data["features"], data["stocks"]
        own = FeatureSet(fs.dates, fs.symbols[stocks], fs.names, data["values"],
                         fs.mask[:, stocks], fs.groups)  # fmt: skip
        inputs = assemble_inputs(own, None, "own", sectors=data["sectors"])
        inputs.valid[: data["first"]] = False
        train = inputs.loader(cfg["lookback"], data["labels"], index=data["train_origins"],
                              batch_size=cfg["batch_size"], shuffle=True, seed=0,
                              chunk_length=cfg.get("chunk_length"))  # fmt: skip
        test = inputs.loader(cfg["lookback"], data["labels"], index=data["test_origins"],
                             batch_size=INFER_BATCH)  # fmt: skip
        build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0

        model = create_model(
            "tft", num_features=inputs.num_features, horizons=cfg["horizons"],
            quantiles=QUANTILES, num_stocks=len(stocks), num_sectors=inputs.num_sectors,
            lookback=cfg["lookback"], hidden_size=cfg["hidden_size"], num_heads=cfg["num_heads"],
            variable_hidden_size=cfg["var_size"], dropout=DROPOUT,
        )  # fmt: skip
        module = lightning_module_class()(model, QUANTILES, lr=LR)
        with tempfile.TemporaryDirectory() as root:
            t0, c0 = time.perf_counter(), time.process_time()
            _trainer(cfg["epochs"], root).fit(module, train_dataloaders=train.dataloader())
            train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0

        model.eval()
        preds, ys = [], []
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for batch in test:
                preds.append(model(batch)["pred"])
                ys.append(batch["y"])
        infer_s, infer_cpu = time.perf_counter() - t0, time.process_time() - c0
    pred, y = torch.cat(preds), torch.cat(ys)
    batch = next(iter(train))
    model.train()
    with saved_activation_bytes() as saved:
        model(batch)
    return _row(
        "relcast", model, (build_s, build_cpu), (train_s, train_cpu), (infer_s, infer_cpu),
        train.num_windows, len(y), cfg,
        float(pinball_loss(pred, y, QUANTILES)), float(y.double().abs().sum()), peak, saved,
    )  # fmt: skip


# ----------------------------------------------------------------------------- their side


def run_pytorch_forecasting(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build, train and test pytorch-forecasting's TFT the same way."""
    import pandas as pd
    import torch
    from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
    from pytorch_forecasting.data.encoders import TorchNormalizer
    from pytorch_forecasting.metrics import QuantileLoss

    from relcast.models.temporal.losses import pinball_loss

    data = make_data(cfg)
    torch.manual_seed(0)
    H, L = cfg["horizons"], cfg["lookback"]
    names = [f"f{k}" for k in range(data["values"].shape[-1])]
    with PeakRSS() as peak:
        t0, c0 = time.perf_counter(), time.process_time()
        first, T = data["first"], data["values"].shape[0]
        N = len(data["stocks"])
        t_idx = np.repeat(np.arange(first, T), N)
        n_idx = np.tile(np.arange(N), T - first)
        frame = pd.DataFrame(data["values"][first:].reshape(-1, len(names)), columns=names)
        frame["time_idx"] = t_idx
        frame["symbol"] = pd.Series(data["features"].symbols[data["stocks"]][n_idx]).astype(str)
        frame["sector"] = pd.Series(np.asarray(data["sectors"])[n_idx]).astype(str)
        frame["target"] = data["target"][first:].reshape(-1)
        train_frame = frame[frame.time_idx <= data["train_last"] + H]
        train_ds = TimeSeriesDataSet(
            train_frame,
            time_idx="time_idx",
            target="target",
            group_ids=["symbol"],
            max_encoder_length=L,
            min_encoder_length=L,
            max_prediction_length=H,
            min_prediction_length=H,
            static_categoricals=["symbol", "sector"],
            time_varying_unknown_reals=names,
            add_relative_time_idx=True,
            add_target_scales=False,
            add_encoder_length=False,
            target_normalizer=TorchNormalizer(method="identity", center=False),
            scalers={n: None for n in names},
        )
        origin0 = int(data["test_origins"][0])
        test_ds = TimeSeriesDataSet.from_dataset(
            train_ds, frame[frame.time_idx >= origin0 - L + 1], stop_randomization=True
        )
        train_dl = train_ds.to_dataloader(train=True, batch_size=cfg["batch_size"], num_workers=0)
        test_dl = test_ds.to_dataloader(train=False, batch_size=INFER_BATCH, num_workers=0)
        build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0

        model = TemporalFusionTransformer.from_dataset(
            train_ds, hidden_size=cfg["hidden_size"], attention_head_size=cfg["num_heads"],
            hidden_continuous_size=cfg["var_size"], dropout=DROPOUT, lstm_layers=1,
            loss=QuantileLoss(list(QUANTILES)), learning_rate=LR, optimizer="adam",
            log_interval=-1,  # default plateau patience 1000: the LR never changes here
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as root:
            t0, c0 = time.perf_counter(), time.process_time()
            _trainer(cfg["epochs"], root).fit(model, train_dataloaders=train_dl)
            train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0

        model.eval()
        preds, ys = [], []
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for x, (y, _) in test_dl:
                preds.append(model(x)["prediction"])
                ys.append(y)
        infer_s, infer_cpu = time.perf_counter() - t0, time.process_time() - c0
    pred, y = torch.cat(preds), torch.cat(ys)
    x, _ = next(iter(train_dl))
    model.train()
    with saved_activation_bytes() as saved:
        model(x)
    return _row(
        "pytorch_forecasting", model, (build_s, build_cpu), (train_s, train_cpu),
        (infer_s, infer_cpu), len(train_ds), len(y), cfg,
        float(pinball_loss(pred, y, QUANTILES)), float(y.double().abs().sum()), peak, saved,
    )  # fmt: skip


def _row(side, model, build, train, infer, n_train, n_test, cfg, loss, checksum, peak,
         saved) -> dict[str, Any]:  # fmt: skip
    """One side's numbers; ``build/train/infer`` are (wall s, CPU s) pairs."""
    return {
        "side": side,
        "params": sum(p.numel() for p in model.parameters()),
        "train_windows": n_train,
        "test_windows": n_test,
        "build_s": build[0],
        "train_s": train[0],
        "infer_s": infer[0],
        "end_to_end_s": build[0] + train[0] + infer[0],
        "end_to_end_cpu_s": build[1] + train[1] + infer[1],
        "train_windows_per_s": n_train * cfg["epochs"] / train[0],
        "train_windows_per_cpu_s": n_train * cfg["epochs"] / train[1],
        "infer_windows_per_s": n_test / infer[0],
        "infer_windows_per_cpu_s": n_test / infer[1],
        "peak_rss_mb": peak.delta / MB,
        "activation_mb": saved["bytes"] / MB,
        "test_pinball": loss,
        "test_label_checksum": checksum,
    }


def run(quick: bool = False, results_dir=None) -> dict[str, Any]:
    """Race both sides, print the table, write the JSON."""
    cfg = QUICK if quick else FULL
    ours = run_isolated(run_relcast, cfg, isolate=not quick)
    theirs = run_isolated(run_pytorch_forecasting, cfg, isolate=not quick)
    rows = [ours, theirs]
    checksum_gap = abs(ours["test_label_checksum"] - theirs["test_label_checksum"])
    same = ours["test_windows"] == theirs["test_windows"] and checksum_gap < 1e-2
    ratios = {
        "speedup_end_to_end": ratio(theirs["end_to_end_s"], ours["end_to_end_s"]),
        "speedup_end_to_end_cpu": ratio(theirs["end_to_end_cpu_s"], ours["end_to_end_cpu_s"]),
        "speedup_train_cpu": ratio(
            ours["train_windows_per_cpu_s"], theirs["train_windows_per_cpu_s"]
        ),
        "speedup_inference_cpu": ratio(
            ours["infer_windows_per_cpu_s"], theirs["infer_windows_per_cpu_s"]
        ),
        "speedup_build": ratio(theirs["build_s"], ours["build_s"]),
        "speedup_train": ratio(ours["train_windows_per_s"], theirs["train_windows_per_s"]),
        "speedup_inference": ratio(ours["infer_windows_per_s"], theirs["infer_windows_per_s"]),
        "peak_rss_relcast_over_pf": ratio(ours["peak_rss_mb"], theirs["peak_rss_mb"]),
        "activation_relcast_over_pf": ratio(ours["activation_mb"], theirs["activation_mb"]),
        "test_pinball_relcast_over_pf": ratio(ours["test_pinball"], theirs["test_pinball"]),
    }
    result = {"config": cfg, "same_test_windows": same, "rows": rows, "ratios": ratios}
    write_result(NAME, result, results_dir)
    print(f"\n## {NAME}: relcast TFT vs pytorch-forecasting TFT\n")
    print(format_table(rows, ["side", "params", "train_windows", "test_windows", "build_s",
                              "train_s", "infer_s", "end_to_end_s", "end_to_end_cpu_s",
                              "train_windows_per_s", "train_windows_per_cpu_s",
                              "infer_windows_per_s", "peak_rss_mb", "activation_mb",
                              "test_pinball"]))  # fmt: skip
    print()
    print(format_table([{"same_test_windows": same, **ratios}]))
    return result


if __name__ == "__main__":
    run()
