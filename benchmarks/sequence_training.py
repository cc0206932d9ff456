"""Stage3 training on windows vs on sequences (chunks), for GRU, LSTM, TCN and TFT.

Windowed training pushes every window of ``lookback`` steps through the model on its own
and scores its last step; sequence training (the default since issue 14) runs each model
once over chunks of a stock's span and scores every window end past a ``lookback - 1``
step burn-in (:mod:`relcast.training.loader`). Both see the same scored samples per epoch,
with the same model, batch size (scored samples per optimiser step), optimiser and seed.

Per model and path, in a fresh process (clean peak RSS):

- training samples per second (a sample = one scored (date, stock), all horizons; forward +
  backward + AdamW step, loader gather included) over the same number of samples;
- seconds per epoch (every training window end once): measured when the budget covers a
  whole epoch, else extrapolated from the timed samples (``epoch_measured`` says which);
- peak RSS of the process and its rise during training;
- validation pinball loss after that same number of training samples, each model on its own
  path (windows or chunks), over the same (date, stock) cells.

Data: ``relcast.synthetic_market`` at the real universe's size (1,026 stocks x 1,275 dates,
as the RSR NASDAQ set) -> ``build_features`` -> Stage3 ``own`` inputs, labels z-scored per
date; built once and memory-mapped by the measuring processes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MB, PeakRSS, format_table, ratio, run_isolated, write_result

NAME = "sequence_training"
MODELS = ("gru", "lstm", "tcn", "tft")
PATHS = ("window", "sequence")
QUANTILES = (0.1, 0.5, 0.9)

FULL = dict(num_stocks=1026, num_days=1275, lookback=60, horizons=5, hidden_size=64,
            batch_size=1024, chunk_length=128, valid_stocks=128,
            samples={"gru": 100_000, "lstm": 100_000, "tcn": 100_000, "tft": 30_000})  # fmt: skip
# a few minutes on 2 cores: the full model sizes on a 100-stock market
MEDIUM = dict(num_stocks=100, num_days=800, lookback=60, horizons=5, hidden_size=64,
              batch_size=1024, chunk_length=128, valid_stocks=100,
              samples={"gru": 20_000, "lstm": 20_000, "tcn": 20_000, "tft": 4_000})  # fmt: skip
QUICK = dict(num_stocks=20, num_days=220, lookback=20, horizons=2, hidden_size=16,
             batch_size=256, chunk_length=40, valid_stocks=20,
             samples={"gru": 1_500, "lstm": 1_500, "tcn": 1_500, "tft": 600})  # fmt: skip


def build_data(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Synthetic market -> Stage3 ``own`` inputs and z-scored labels, saved as .npy files."""
    import relcast
    from relcast.features import (
        build_features,
        chronological_split,
        forward_returns,
        normalize_labels_cross_section,
    )
    from relcast.training.stage3 import assemble_inputs

    panel, _ = relcast.synthetic_market(cfg["num_stocks"], cfg["num_days"], seed=0)
    split = chronological_split(panel.dates, embargo=cfg["horizons"])
    features = build_features(panel, train_end=int(split.train[-1]))
    inputs = assemble_inputs(features, None, "own", sectors=panel.sectors)
    stocks = np.flatnonzero(~panel.is_index)
    target = normalize_labels_cross_section(forward_returns(panel, cfg["horizons"]), inputs.valid)
    np.save(folder / "values.npy", inputs.values)
    np.save(folder / "target.npy", np.asarray(target, dtype=np.float32))
    np.save(folder / "valid.npy", inputs.valid)
    np.save(folder / "sector_ids.npy", inputs.sector_ids)
    return {
        "train": split.train,
        "valid": split.valid,
        "stocks": stocks,
        "valid_stocks": stocks[: cfg["valid_stocks"]],
        "num_features": inputs.num_features,
    }


def _loader(folder: Path, cfg, index, stocks, path: str, *, shuffle: bool, batch_size: int):
    from relcast.training.loader import WindowLoader

    return WindowLoader(
        np.load(folder / "values.npy", mmap_mode="r"),
        np.load(folder / "valid.npy"),
        cfg["lookback"],
        np.load(folder / "target.npy", mmap_mode="r"),
        index=index,
        stocks=stocks,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=0,
        sector_ids=np.load(folder / "sector_ids.npy"),
        chunk_length=cfg["chunk_length"] if path == "sequence" else None,
    )


def _samples(batch) -> int:
    origin = batch.get("origin")
    return int(origin.sum()) if origin is not None else len(batch["y"])


def measure(model_name: str, path: str, cfg: dict[str, Any], data: dict, folder: str) -> dict:
    """Train ``model_name`` on ``path`` for the sample budget; time, RSS and valid loss."""
    import resource

    import torch

    from relcast.models.temporal import create_model, pinball_loss

    folder = Path(folder)
    train = _loader(folder, cfg, data["train"], data["stocks"], path, shuffle=True,
                    batch_size=cfg["batch_size"])  # fmt: skip
    valid = _loader(folder, cfg, data["valid"], data["valid_stocks"], path, shuffle=False,
                    batch_size=4096 if path == "sequence" else 512)  # fmt: skip
    torch.manual_seed(0)
    hp = {"num_heads": 4} if model_name == "tft" else {}
    if model_name in ("gru", "lstm"):
        hp["num_layers"] = 2
    model = create_model(
        model_name, num_features=data["num_features"], horizons=cfg["horizons"],
        quantiles=QUANTILES, num_stocks=cfg["num_stocks"] + 1,
        num_sectors=int(train.sector_ids.max()) + 1, lookback=cfg["lookback"],
        hidden_size=cfg["hidden_size"], dropout=0.1, **hp,
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    budget = min(cfg["samples"][model_name], train.num_windows)

    def step(batch) -> int:
        loss = pinball_loss(model(batch)["pred"], batch["y"], QUANTILES, batch.get("origin"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return _samples(batch)

    model.train()
    seen, epochs_done = 0, 0
    warm = next(iter(train))
    step(warm)  # warm-up (allocations, thread pools); not timed, not counted
    with PeakRSS() as peak:
        start = time.perf_counter()
        while seen < budget:
            for batch in train:
                seen += step(batch)
                if seen >= budget:
                    break
            else:
                epochs_done += 1
        seconds = time.perf_counter() - start
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in valid:
            n = _samples(batch)
            loss = pinball_loss(model(batch)["pred"], batch["y"], QUANTILES, batch.get("origin"))
            total, count = total + float(loss) * n, count + n
    rate = seen / seconds
    return {
        "model": model_name,
        "path": path,
        "samples": seen,
        "samples_per_s": rate,
        "train_windows": train.num_windows,
        "epoch_seconds": train.num_windows / rate,
        "epoch_measured": epochs_done >= 1 or seen >= train.num_windows,
        "train_peak_rss_rise_mb": peak.delta / MB,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "valid_loss": total / max(count, 1),
        "valid_samples": count,
        "items_per_batch": train.items_per_batch,
    }


def run(quick: bool = False, results_dir=None, medium: bool = False) -> dict[str, Any]:
    """Every model on both paths; print the table, write the JSON."""
    cfg = QUICK if quick else MEDIUM if medium else FULL
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = build_data(cfg, Path(tmp))
        build_seconds = time.perf_counter() - t0
        rows = [
            run_isolated(measure, model, path, cfg, data, tmp, isolate=not quick)
            for model in MODELS
            for path in PATHS
        ]
    ratios = {}
    for model in MODELS:
        win = next(r for r in rows if r["model"] == model and r["path"] == "window")
        seq = next(r for r in rows if r["model"] == model and r["path"] == "sequence")
        ratios[model] = {
            "sequence_over_window_samples_per_s": ratio(seq["samples_per_s"], win["samples_per_s"]),
            "sequence_over_window_epoch_seconds": ratio(seq["epoch_seconds"], win["epoch_seconds"]),
            "sequence_over_window_peak_rss": ratio(
                seq["process_peak_rss_mb"], win["process_peak_rss_mb"]
            ),
            "valid_loss_sequence_minus_window": round(seq["valid_loss"] - win["valid_loss"], 5),
        }
    cfg_out = {k: v for k, v in cfg.items()}
    result = {"config": cfg_out, "data_build_seconds": build_seconds, "rows": rows,
              "ratios": ratios}  # fmt: skip
    write_result(NAME, result, results_dir)
    size = f"{cfg['num_stocks']} stocks x {cfg['num_days']} dates"
    shape = f"lookback {cfg['lookback']}, chunks of {cfg['chunk_length']}"
    print(f"\n## {NAME}: Stage3 windows vs sequences ({size}, {shape})\n")
    print(format_table(rows, ["model", "path", "samples", "samples_per_s", "epoch_seconds",
                              "epoch_measured", "train_peak_rss_rise_mb", "process_peak_rss_mb",
                              "valid_loss"]))  # fmt: skip
    return result


if __name__ == "__main__":
    import argparse

    from benchmarks.common import quiet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--medium", action="store_true", help="100 stocks (a few minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    quiet()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run(quick=args.quick, medium=args.medium, results_dir=args.results_dir)
