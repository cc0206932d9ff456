"""Stage3 training on windows vs on sequences (chunks), for GRU, LSTM, TCN and TFT.

Windowed training pushes every window of ``lookback`` steps through the model on its own
and scores its last step; sequence training (the default since issue 14) runs each model
once over chunks of a stock's span and scores every window end past a ``lookback - 1``
step burn-in (:mod:`relcast.training.loader`). Both see the same scored samples per epoch,
with the same model, batch size (scored samples per optimiser step), optimiser and seed.

Per model and path, in a fresh process (clean peak RSS):

- training samples per second (a sample = one scored (date, stock), all horizons; forward +
  backward + AdamW step, loader gather included) over the same number of samples, per
  wall second and per CPU second of the process (``samples_per_cpu_s``: with one torch
  thread, the figure that stays fair when other processes share the core);
- seconds per epoch (every training window end once): measured when the budget covers a
  whole epoch, else extrapolated from the timed samples (``epoch_measured`` says which);
- peak RSS of the process and its rise during training;
- validation pinball loss after that same number of training samples, each model on its own
  path (windows or chunks), over the same (date, stock) cells.

With ``--seeds K`` every (model, path) runs K times (seeds 0..K-1: initial weights, dropout,
training order; the paths alternate inside each seed) and the JSON's ``seed_summary`` holds
mean and std over seeds of samples/s and validation loss per path and of the paired
difference sequence - window, so "no worse" is judged against seed noise. ``--models`` picks
models, ``--samples`` overrides the training-sample budget. ``--medium`` writes
``results/sequence_training_medium.json``, the full size ``results/sequence_training.json``.

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
    from relcast.features.build import build_features
    from relcast.features.labels import forward_returns, normalize_labels_cross_section
    from relcast.features.splits import chronological_split
    from relcast.training.stage3_inputs import assemble_inputs

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


def _loader(folder: Path, cfg, index, stocks, path: str, *, shuffle: bool, batch_size: int,
            seed: int = 0):  # fmt: skip
    from relcast.training.loader import Batching, WindowLoader, WindowSource

    return WindowLoader(
        WindowSource(
            np.load(folder / "values.npy", mmap_mode="r"),
            np.load(folder / "valid.npy"),
            np.load(folder / "target.npy", mmap_mode="r"),
            sector_ids=np.load(folder / "sector_ids.npy"),
        ),
        cfg["lookback"],
        index=index,
        stocks=stocks,
        batching=Batching(
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            chunk_length=cfg["chunk_length"] if path == "sequence" else None,
        ),
    )


def _samples(batch) -> int:
    origin = batch.get("origin")
    return int(origin.sum()) if origin is not None else len(batch["y"])


def measure(
    model_name: str, path: str, cfg: dict[str, Any], data: dict, folder: str, seed: int = 0
) -> dict:
    """Train ``model_name`` on ``path`` for the sample budget; time, RSS and valid loss.

    ``seed`` draws the model's initial weights, its dropout and the training order."""
    import resource

    import torch

    from relcast.models.temporal.losses import pinball_loss
    from relcast.models.temporal.registry import create_model

    folder = Path(folder)
    train = _loader(folder, cfg, data["train"], data["stocks"], path, shuffle=True,
                    batch_size=cfg["batch_size"], seed=seed)  # fmt: skip
    valid = _loader(folder, cfg, data["valid"], data["valid_stocks"], path, shuffle=False,
                    batch_size=4096 if path == "sequence" else 512)  # fmt: skip
    torch.manual_seed(seed)
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
        start, cpu_start = time.perf_counter(), time.process_time()
        while seen < budget:
            for batch in train:
                seen += step(batch)
                if seen >= budget:
                    break
            else:
                epochs_done += 1
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
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
        "seed": seed,
        "samples": seen,
        "samples_per_s": rate,
        "samples_per_cpu_s": seen / cpu_seconds,
        "train_windows": train.num_windows,
        "epoch_seconds": train.num_windows / rate,
        "epoch_measured": epochs_done >= 1 or seen >= train.num_windows,
        "train_peak_rss_rise_mb": peak.delta / MB,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "valid_loss": total / max(count, 1),
        "valid_samples": count,
        "items_per_batch": train.items_per_batch,
    }


def seed_summary(rows: list[dict], model: str) -> dict[str, Any]:
    """Mean and std over seeds of samples/s and validation loss per path, and of the paired
    (same seed) difference sequence - window of the validation loss."""

    def stats(values: list[float]) -> dict[str, float]:
        v = np.asarray(values, dtype=float)
        std = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        return {"mean": float(v.mean()), "std": std, "values": [float(x) for x in v]}

    by_path = {p: sorted((r for r in rows if r["model"] == model and r["path"] == p),
                         key=lambda r: r["seed"]) for p in PATHS}  # fmt: skip
    out: dict[str, Any] = {"seeds": [r["seed"] for r in by_path["window"]]}
    for p, rs in by_path.items():
        out[p] = {key: stats([r[key] for r in rs])
                  for key in ("samples_per_s", "samples_per_cpu_s", "valid_loss")}  # fmt: skip
    diff = [s["valid_loss"] - w["valid_loss"] for w, s in zip(*by_path.values(), strict=True)]
    out["valid_loss_sequence_minus_window"] = stats(diff)
    speed = [
        s["samples_per_s"] / w["samples_per_s"] for w, s in zip(*by_path.values(), strict=True)
    ]
    out["sequence_over_window_samples_per_s"] = stats(speed)
    cpu = [s["samples_per_cpu_s"] / w["samples_per_cpu_s"]
           for w, s in zip(*by_path.values(), strict=True)]  # fmt: skip
    out["sequence_over_window_samples_per_cpu_s"] = stats(cpu)
    return out


def _ratios(rows: list[dict], model: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one model: means over seeds (one seed: that run)."""
    win = [r for r in rows if r["model"] == model and r["path"] == "window"]
    seq = [r for r in rows if r["model"] == model and r["path"] == "sequence"]

    def mean(rs: list[dict], key: str) -> float:
        return float(np.mean([r[key] for r in rs]))

    diff = summary["valid_loss_sequence_minus_window"]
    out = {
        "sequence_over_window_samples_per_s": ratio(
            mean(seq, "samples_per_s"), mean(win, "samples_per_s")
        ),
        "sequence_over_window_samples_per_cpu_s": ratio(
            mean(seq, "samples_per_cpu_s"), mean(win, "samples_per_cpu_s")
        ),
        "sequence_over_window_epoch_seconds": ratio(
            mean(seq, "epoch_seconds"), mean(win, "epoch_seconds")
        ),
        "sequence_over_window_peak_rss": ratio(
            mean(seq, "process_peak_rss_mb"), mean(win, "process_peak_rss_mb")
        ),
        "valid_loss_sequence_minus_window": round(diff["mean"], 5),
    }
    if len(win) > 1:  # judged against seed noise: the spread of each path's loss over seeds
        out["valid_loss_difference_std_over_seeds"] = round(diff["std"], 5)
        out["valid_loss_window_std_over_seeds"] = round(summary["window"]["valid_loss"]["std"], 5)
        out["valid_loss_sequence_std_over_seeds"] = round(
            summary["sequence"]["valid_loss"]["std"], 5
        )
    return out


def run(
    quick: bool = False,
    results_dir=None,
    medium: bool = False,
    seeds: int = 1,
    models: tuple[str, ...] = MODELS,
    samples: int | None = None,
) -> dict[str, Any]:
    """``models`` on both paths, ``seeds`` runs each; print the tables, write the JSON.

    The full size writes ``sequence_training.json``; ``medium`` writes
    ``sequence_training_medium.json`` (quick keeps the benchmark's name, for the smoke test).
    ``samples`` overrides every model's training-sample budget.
    """
    cfg = dict(QUICK if quick else MEDIUM if medium else FULL)
    if samples:
        cfg["samples"] = {m: int(samples) for m in cfg["samples"]}
    unknown = sorted(set(models) - set(MODELS))
    if unknown or seeds < 1:
        raise ValueError(f"models must be among {MODELS} (got {unknown}), seeds >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = build_data(cfg, Path(tmp))
        build_seconds = time.perf_counter() - t0
        # the paths alternate inside each (model, seed): a busy machine slows both alike
        rows = [
            run_isolated(measure, model, path, cfg, data, tmp, seed, isolate=not quick)
            for model in models
            for seed in range(seeds)
            for path in PATHS
        ]
    summaries = {model: seed_summary(rows, model) for model in models}
    ratios = {model: _ratios(rows, model, summaries[model]) for model in models}
    cfg_out = {**cfg, "seeds": seeds, "models": list(models)}
    result = {"config": cfg_out, "data_build_seconds": build_seconds, "rows": rows,
              "ratios": ratios}  # fmt: skip
    if seeds > 1:
        result["seed_summary"] = summaries
    write_result(f"{NAME}_medium" if medium and not quick else NAME, result, results_dir)
    size = f"{cfg['num_stocks']} stocks x {cfg['num_days']} dates"
    shape = f"lookback {cfg['lookback']}, chunks of {cfg['chunk_length']}"
    print(f"\n## {NAME}: Stage3 windows vs sequences ({size}, {shape})\n")
    print(format_table(rows, ["model", "path", "seed", "samples", "samples_per_s",
                              "samples_per_cpu_s",
                              "epoch_seconds", "epoch_measured", "train_peak_rss_rise_mb",
                              "process_peak_rss_mb", "valid_loss"]))  # fmt: skip
    if seeds > 1:
        print(f"\n### mean ± std over {seeds} seeds (difference paired by seed)\n")
        print(format_table([_summary_row(m, summaries[m]) for m in models]))
    return result


def _summary_row(model: str, summary: dict[str, Any]) -> dict[str, Any]:
    def pm(stat: dict[str, float], digits: int) -> str:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"

    return {
        "model": model,
        "window samples/s": pm(summary["window"]["samples_per_s"], 0),
        "sequence samples/s": pm(summary["sequence"]["samples_per_s"], 0),
        "speed-up": pm(summary["sequence_over_window_samples_per_s"], 2),
        "window samples/cpu-s": pm(summary["window"]["samples_per_cpu_s"], 0),
        "sequence samples/cpu-s": pm(summary["sequence"]["samples_per_cpu_s"], 0),
        "speed-up (cpu)": pm(summary["sequence_over_window_samples_per_cpu_s"], 2),
        "window valid loss": pm(summary["window"]["valid_loss"], 5),
        "sequence valid loss": pm(summary["sequence"]["valid_loss"], 5),
        "sequence - window": pm(summary["valid_loss_sequence_minus_window"], 5),
    }


if __name__ == "__main__":
    import argparse

    from benchmarks.common import quiet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--medium", action="store_true", help="100 stocks (a few minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--seeds", type=int, default=1, help="runs per model and path (0..K-1)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--samples", type=int, default=None, help="training samples per run")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    quiet()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run(quick=args.quick, medium=args.medium, results_dir=args.results_dir, seeds=args.seeds,
        models=tuple(args.models), samples=args.samples)  # fmt: skip
