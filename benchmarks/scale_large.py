"""Scaling of the large preset: Stage1 cost against the universe size, Stage3 from disk.

1. Stage1 (``CrossSectionalTransformer``, large preset: d_model 256, 8 heads, 4 layers) on
   random data for N = 100, 1,000 and 3,000 stocks, 30 features, 5 horizons: one training
   step (forward + backward + AdamW) and one forward pass without gradients, each in a fresh
   process, in three attention modes:

   - ``fused``: ``need_weights=False`` with dropout 0: ``scaled_dot_product_attention`` takes
     the fused (flash) CPU kernel and never stores the ``N x N`` weights;
   - ``sdpa+dropout``: ``need_weights=False`` with the preset's dropout 0.1: on CPU, attention
     dropout sends SDPA to its math fallback, which materialises ``N x N`` weights again;
   - ``weights``: ``need_weights=True`` (explicit softmax, weights of every layer returned),
     what the V1 extractor needs, for the dates being explained only.

   Reported: seconds per step, dates per second, peak RSS above the process's baseline, the
   bytes autograd saves for backward, and the size of one layer's attention weights.

2. Stage3 from a memory-mapped store (``--memmap``): a :class:`MemmapFeatureStore` of
   ``stocks x bars x 30`` float32 features (1,000 x 100,000 = 12 GB in the full run) is
   written chunk by chunk from a synthetic generator, then the large preset's TCN (hidden 64,
   lookback 120, 5 horizons) trains on it for a bounded number of steps in a fresh process
   whose peak RSS (``ru_maxrss``) is reported.

    python -m benchmarks.scale_large                 # everything, full sizes
    python -m benchmarks.scale_large --quick         # tiny sizes (tests)
    python -m benchmarks.scale_large --memmap --stocks 200 --bars 20000 --steps 20
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    MB,
    PeakRSS,
    format_table,
    quiet,
    run_isolated,
    saved_activation_bytes,
    write_result,
)
from relcast.training.specs import Stage3Spec, TrainerSpec

NAME = "scale_large"
GIB = 1024.0**3
MODES = ("fused", "sdpa+dropout", "weights")
FULL = dict(
    stocks=(100, 1000, 3000),
    batch_dates={100: 8, 1000: 2, 3000: 1},
    train_steps={100: 3, 1000: 2, 3000: 1},
    num_features=30,
    horizons=5,
    memmap=dict(stocks=1000, bars=100_000, features=30, steps=30, batch_size=256),
)
QUICK = dict(
    stocks=(16, 32),
    batch_dates={16: 2, 32: 2},
    train_steps={16: 1, 32: 1},
    num_features=30,
    horizons=5,
    memmap=dict(stocks=20, bars=1500, features=30, steps=2, batch_size=32),
)
LOOKBACK = 120  # the large preset's Stage3 lookback (src/relcast/config/presets/large.yaml)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


# ----------------------------------------------------------------------------- Stage1
def stage1_cost(
    num_stocks: int, mode: str, batch_dates: int, steps: int, num_features: int, horizons: int
) -> dict[str, Any]:
    """Time and memory of Stage1 training steps and a forward pass in one attention mode."""
    import torch

    from relcast.config import load_config
    from relcast.models.cross_sectional import CrossSectionalTransformer, Stage1Config

    torch.manual_seed(0)
    dropout = 0.0 if mode == "fused" else 0.1
    need_weights = mode == "weights"
    settings = load_config("large", overrides=[f"stage1.dropout={dropout}"]).stage1
    config = Stage1Config.from_settings(
        settings, num_features=num_features, num_stocks=num_stocks, horizons=horizons
    )
    model = CrossSectionalTransformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, N = batch_dates, num_stocks
    x = torch.randn(B, N, num_features)
    mask = torch.rand(B, N) > 0.02  # a few suspended stocks: the mask is really used
    y = torch.randn(B, N, horizons)

    def train_step() -> None:
        out = model(x, mask, need_weights=need_weights)
        loss = (((out["pred"] - y) ** 2) * mask[..., None]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    with saved_activation_bytes() as saved:
        out = model(x, mask, need_weights=need_weights)
    del out
    with PeakRSS() as train_peak:
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            train_step()
            seconds.append(time.perf_counter() - start)
    # the first step pays for allocations; with several steps the later ones are timed
    step_s = float(np.median(seconds[1:] if len(seconds) > 1 else seconds))
    model.eval()
    with torch.no_grad(), PeakRSS() as fwd_peak:
        start = time.perf_counter()
        model(x, mask, need_weights=need_weights)
        forward_s = time.perf_counter() - start
    return {
        "stocks": N,
        "mode": mode,
        "batch_dates": B,
        "train_s_per_step": step_s,
        "train_dates_per_s": B / step_s,
        "train_peak_rss_mb": train_peak.delta / MB,
        "saved_for_backward_mb": saved["bytes"] / MB,
        "forward_dates_per_s": B / forward_s,
        "forward_peak_rss_mb": fwd_peak.delta / MB,
        "attention_one_layer_mb": B * config.num_heads * N * N * 4 / MB,
    }


# ----------------------------------------------------------------------------- Stage3 memmap
def build_synthetic_store(
    folder: str, stocks: int, bars: int, features: int, horizons: int = 5, chunk: int = 1000
) -> dict[str, Any]:
    """Write a store of random minute-bar features chunk by chunk (never all in RAM).

    Labels carry a weak planted signal (horizon h loads on feature 0), so the loss can fall.
    """
    from relcast.data.synthetic import _dates
    from relcast.store.memmap import MemmapFeatureStore

    rng = np.random.default_rng(0)
    names = [f"f{k:02d}" for k in range(features)]
    start = time.perf_counter()
    store = MemmapFeatureStore.create(
        folder, _dates("2020-01-01", bars, "1min"), [f"S{i:04d}" for i in range(stocks)],
        names, {"own": names}, horizons, overwrite=True,
    )  # fmt: skip
    for a in range(0, bars, chunk):
        t = min(chunk, bars - a)
        x = rng.standard_normal((t, stocks, features), dtype=np.float32)
        mask = rng.random((t, stocks)) > 0.005
        noise = rng.standard_normal((t, stocks, horizons), dtype=np.float32)
        labels = 0.002 * (0.3 * x[..., :1] + noise)
        if a + t == bars:  # the last H bars have no future
            labels[-horizons:] = np.nan
        store.write(a, x, mask, labels)
        store.release()
    store = store.finish()
    return {
        "store_gib": store.nbytes / GIB,
        "values_gib": store.values_by_stock.nbytes / GIB,
        "build_s": time.perf_counter() - start,
        "build_peak_rss_gib": _peak_rss_gib(),
    }


def train_from_store(folder: str, steps: int, batch_size: int) -> dict[str, Any]:
    """Train the large preset's TCN on a store for ``steps`` batches; peak RSS and speed."""
    import lightning
    import torch

    from relcast.features.splits import chronological_split
    from relcast.store.memmap import MemmapFeatureStore
    from relcast.training.common import release_pages_callback
    from relcast.training.stage3 import fit_stage3
    from relcast.training.stage3_inputs import store_inputs

    class BatchTimer(lightning.Callback):
        """Wall time of each training batch (loading + forward + backward + step)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    quiet()
    timer = BatchTimer()
    store = MemmapFeatureStore(folder)
    split = chronological_split(store.dates, 0.15, 0.15, embargo=store.horizons)
    inputs = store_inputs(store)
    out_dir = tempfile.mkdtemp(prefix="relcast_memmap_")
    start = time.perf_counter()
    try:
        result = fit_stage3(
            "tcn",
            inputs,
            store.targets,
            split,
            Stage3Spec(
                lookback=LOOKBACK,
                label_norm="none",
                hparams={"hidden_size": 64, "dropout": 0.1},
                batch_size=batch_size,
                max_epochs=1,
            ),
            TrainerSpec(
                out_dir=out_dir,
                progress=False,
                callbacks=(release_pages_callback(store, 1), timer),
                options=dict(limit_train_batches=steps, limit_val_batches=1),
            ),
        )
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    seconds = time.perf_counter() - start
    # the batch gather (the loader's __next__) runs before on_train_batch_start: time it too
    train_s = float(np.sum(timer.seconds))
    return {
        "steps": steps,
        "batch_size": batch_size,
        "lookback": LOOKBACK,
        "train_windows_total": result.num_train_windows,
        "fit_s": seconds,
        "train_s_per_step": train_s / len(timer.seconds),
        "train_windows_per_s": len(timer.seconds) * batch_size / train_s,
        "train_loss": result.history[-1].get("train_loss", float("nan")),
        "train_peak_rss_gib": _peak_rss_gib(),
        "rss_anon_end_gib": _status_kib("RssAnon") * 1024 / GIB,
        "rss_file_end_gib": _status_kib("RssFile") * 1024 / GIB,
        "torch_threads": torch.get_num_threads(),
    }


def memmap_stage3(
    stocks: int, bars: int, features: int, steps: int, batch_size: int, folder: str | None = None,
    isolate: bool = True, keep: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Build a store (one process) and train from it (another); both peaks are reported."""
    own_folder = folder is None
    folder = folder or tempfile.mkdtemp(prefix="relcast_store_")
    try:
        built = run_isolated(build_synthetic_store, folder, stocks, bars, features, isolate=isolate)
        trained = run_isolated(train_from_store, folder, steps, batch_size, isolate=isolate)
    finally:
        if own_folder and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {"stocks": stocks, "bars": bars, "features": features, **built, **trained}


# ----------------------------------------------------------------------------- report
def run(quick: bool = False, results_dir=None, memmap_only: bool = False) -> dict[str, Any]:
    """Measure, print the tables and write ``benchmarks/results/scale_large.json``."""
    cfg = QUICK if quick else FULL
    rows = []
    if not memmap_only:
        for N in cfg["stocks"]:
            for mode in MODES:
                rows.append(
                    run_isolated(
                        stage1_cost,
                        N,
                        mode,
                        cfg["batch_dates"][N],
                        cfg["train_steps"][N],
                        cfg["num_features"],
                        cfg["horizons"],
                        isolate=not quick,
                    )  # fmt: skip
                )
                print(format_table(rows[-1:]), flush=True)
    memmap = memmap_stage3(**cfg["memmap"], isolate=not quick)
    growth = _growth(rows)
    result = {"config": {k: v for k, v in cfg.items() if k != "batch_dates"}, "rows": rows,
              "memmap_stage3": memmap, "ratios": growth}  # fmt: skip
    write_result(NAME, result, results_dir)
    print(f"\n## {NAME}: Stage1 large preset, cost against N\n")
    print(format_table(rows))
    print("\n## Stage3 TCN from a memory-mapped store\n")
    print(format_table([memmap]))
    return result


def _growth(rows: list[dict]) -> dict[str, float]:
    """Per-date train time and saved memory of the largest N over the smallest, per mode."""
    out = {}
    for mode in MODES:
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["stocks"])
        if len(mine) < 2:
            continue
        lo, hi = mine[0], mine[-1]
        n_ratio = hi["stocks"] / lo["stocks"]
        out[f"{mode}: N ratio"] = n_ratio
        out[f"{mode}: time per date ratio"] = lo["train_dates_per_s"] / hi["train_dates_per_s"]
        out[f"{mode}: saved memory per date ratio"] = (
            hi["saved_for_backward_mb"] / hi["batch_dates"]
        ) / (lo["saved_for_backward_mb"] / lo["batch_dates"])
    return out


def main(quick: bool = False) -> dict[str, Any]:
    """Entry point for ``benchmarks.run_all``: the whole benchmark."""
    return run(quick=quick)


def _cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--memmap", action="store_true", help="only the memory-mapped Stage3 run")
    parser.add_argument("--stocks", type=int, default=FULL["memmap"]["stocks"])
    parser.add_argument("--bars", type=int, default=FULL["memmap"]["bars"])
    parser.add_argument("--features", type=int, default=FULL["memmap"]["features"])
    parser.add_argument("--steps", type=int, default=FULL["memmap"]["steps"])
    parser.add_argument("--batch-size", type=int, default=FULL["memmap"]["batch_size"])
    parser.add_argument("--folder", type=str, default=None, help="store folder (default tmp)")
    parser.add_argument("--json", type=Path, default=None, help="write the memmap result here")
    args = parser.parse_args(argv)
    quiet()
    if not args.memmap:
        run(quick=args.quick)
        return
    result = memmap_stage3(
        args.stocks, args.bars, args.features, args.steps, args.batch_size, folder=args.folder
    )
    print(format_table([result]))
    if args.json:
        args.json.write_text(json.dumps({"memmap_stage3": result}, indent=2))


if __name__ == "__main__":
    _cli()
