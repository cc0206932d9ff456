"""Stage1 on random cross-sections (``stage1.max_stocks``) against full attention at 2,000 stocks.

A synthetic market (``relcast.data.synthetic.synthetic_market``: 2,000 stocks + 1 index, 600
business days, its default planted lead-lag pairs and regimes), the pipeline's features
(``build_features``, scaled on the training span), horizon-1 labels, a chronological split.
The same Stage1 (small preset: d_model 64, 4 heads, 2 layers; IC loss; 32 dates per batch;
seed 0, no early stopping) is trained with full attention for 4 epochs and with ``max_stocks``
(each training date attends over a random 512 of its ~2,000 traded stocks, a new draw per
epoch) for 12 epochs, about the CPU time of the full run's 4 (same seed and draws: its first 4
epochs are the equal-epoch comparison). Both validate on every stock after every epoch. Each
variant runs in a fresh process.

Measured per variant: seconds per epoch (wall and CPU seconds of the process, training part
and validation part apart), the validation Rank IC (horizon 1, mean over validation dates,
every stock) after each epoch, and the oracle's validation Rank IC (every follower forecast
by its planted leader's return of the day, every other stock by 0: what a model that found
every pair and nothing else would reach).

The machine is shared: wall times are indicative only (the JSON records the load average
before and after each run); CPU seconds are steadier. Run with ``OMP_NUM_THREADS=1``.

    OMP_NUM_THREADS=1 python -m benchmarks.stage1_max_stocks           # ~10 CPU minutes
    OMP_NUM_THREADS=1 python -m benchmarks.stage1_max_stocks --quick   # tiny sizes (tests)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import format_table, quiet, ratio, run_isolated, write_result

NAME = "stage1_max_stocks"
FULL = dict(
    stocks=2000, days=600, max_stocks=512, batch_dates=32, preset="small",
    epochs={"full": 4, "max_stocks": 12},
)  # fmt: skip
QUICK = dict(
    stocks=40, days=260, max_stocks=8, batch_dates=16, preset="small", d_model=16,
    epochs={"full": 1, "max_stocks": 2},
)  # fmt: skip
CAVEAT = (
    "measured on a 2-core VM shared with other jobs (see load_average_1min before/after each "
    "row): wall seconds are indicative only, CPU seconds of the process steadier; one seed, "
    "few epochs: the Rank ICs say whether the subset keeps learning, not which is better"
)


def market(cfg: dict):
    """``(features, labels [T, N, 1], split, sector_ids, is_index, oracle valid Rank IC)``."""
    from relcast.data.synthetic import synthetic_market
    from relcast.features import build_features, chronological_split, forward_returns
    from relcast.models.metrics import daily_rank_ic

    panel, truth = synthetic_market(num_stocks=cfg["stocks"], num_days=cfg["days"], seed=0)
    split = chronological_split(panel.dates, embargo=1)
    features = build_features(panel, train_end=int(split.train[-1]))
    labels = forward_returns(panel, 1)
    # The oracle: a follower's next return follows its leader's return of today.
    close = panel.field("close")
    today = np.full_like(close, np.nan)
    today[1:] = close[1:] / close[:-1] - 1
    # A forecast for every stock, 0 for those without a leader: comparable with Stage1's IC.
    oracle = np.zeros(close.shape, dtype=np.float64)
    followers = np.flatnonzero(truth.leader_of >= 0)
    oracle[:, followers] = today[:, truth.leader_of[followers]]
    v = np.asarray(split.valid)
    ok = panel.mask[v] & np.isfinite(labels[v, :, 0]) & np.isfinite(oracle[v])
    oracle_ic = float(np.nanmean(daily_rank_ic(oracle[v], labels[v, :, 0], ok)))
    return features, labels, split, panel.sectors, panel.is_index, oracle_ic


def _timer():
    import lightning

    class EpochClock(lightning.Callback):
        """Wall and CPU seconds of each epoch's training and validation parts."""

        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

        @staticmethod
        def _now() -> tuple[float, float]:
            return time.perf_counter(), time.process_time()

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = self._now()

        def on_validation_start(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self.valid = self._now()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            end = self._now()
            s, v = self.start, self.valid
            self.rows.append({
                "train_wall_s": v[0] - s[0], "train_cpu_s": v[1] - s[1],
                "valid_wall_s": end[0] - v[0], "valid_cpu_s": end[1] - v[1],
            })  # fmt: skip

    return EpochClock()


def measure(variant: str, cfg: dict) -> dict[str, Any]:
    """Train one variant in this process; its timings and validation Rank ICs."""
    import torch

    from relcast.config import load_config
    from relcast.models.cross_sectional import Stage1Config
    from relcast.training.stage1 import encode_sectors, fit_stage1

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    features, labels, split, sectors, is_index, oracle_ic = market(cfg)
    data_s = time.perf_counter() - start
    settings = load_config(cfg["preset"]).stage1
    if "d_model" in cfg:
        settings = settings.model_copy(update={"d_model": cfg["d_model"], "num_heads": 2})
    N = len(features.symbols)
    config = Stage1Config.from_settings(
        settings, num_features=len(features.names), num_stocks=N,
        num_sectors=encode_sectors(sectors, N)[1], horizons=1,
    )  # fmt: skip
    clock = _timer()
    epochs = cfg["epochs"][variant]
    with tempfile.TemporaryDirectory(prefix="relcast-bench-") as tmp:
        result = fit_stage1(
            features, labels, split, config, out_dir=tmp, sector_ids=sectors,
            loss=settings.loss, max_epochs=epochs, patience=epochs + 1,
            batch_dates=cfg["batch_dates"], lr=settings.lr, seed=0, target=~is_index,
            accelerator="cpu", progress=False, callbacks=[clock],
            max_stocks=cfg["max_stocks"] if variant == "max_stocks" else None,
        )  # fmt: skip

    def mean(key: str) -> float:
        return round(float(np.mean([e[key] for e in clock.rows])), 3)

    return {
        "variant": variant,
        "max_stocks": cfg["max_stocks"] if variant == "max_stocks" else None,
        "stocks": N - int(is_index.sum()),
        "train_dates": len(split.train),
        "valid_dates": len(split.valid),
        "epochs": len(clock.rows),
        "train_wall_s_per_epoch": mean("train_wall_s"),
        "train_cpu_s_per_epoch": mean("train_cpu_s"),
        "valid_wall_s_per_epoch": mean("valid_wall_s"),
        "valid_cpu_s_per_epoch": mean("valid_cpu_s"),
        "val_rank_ic_per_epoch": [round(h["val_rank_ic"], 4) for h in result.history],
        "best_val_rank_ic": round(result.best_val_rank_ic, 4),
        "oracle_val_rank_ic": round(oracle_ic, 4),
        "data_seconds": round(data_s, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }


def run(quick: bool = False, results_dir=None) -> dict[str, Any]:
    """Measure both variants, print the table, write ``results/stage1_max_stocks.json``."""
    cfg = QUICK if quick else FULL
    rows = [run_isolated(measure, v, cfg, isolate=not quick) for v in ("full", "max_stocks")]
    print(format_table(rows, [
        "variant", "stocks", "train_wall_s_per_epoch", "train_cpu_s_per_epoch",
        "valid_cpu_s_per_epoch", "val_rank_ic_per_epoch", "oracle_val_rank_ic",
    ]))  # fmt: skip
    full, sub = rows
    same = full["epochs"]  # the subset run's first epochs: the equal-epoch comparison
    ratios = {
        "train_cpu_speedup": ratio(full["train_cpu_s_per_epoch"], sub["train_cpu_s_per_epoch"]),
        "train_wall_speedup": ratio(full["train_wall_s_per_epoch"], sub["train_wall_s_per_epoch"]),
        "epoch_cpu_speedup": ratio(
            full["train_cpu_s_per_epoch"] + full["valid_cpu_s_per_epoch"],
            sub["train_cpu_s_per_epoch"] + sub["valid_cpu_s_per_epoch"],
        ),
        f"best_val_rank_ic_full_{same}_epochs": full["best_val_rank_ic"],
        f"best_val_rank_ic_max_stocks_{same}_epochs": max(sub["val_rank_ic_per_epoch"][:same]),
        f"best_val_rank_ic_max_stocks_{sub['epochs']}_epochs": sub["best_val_rank_ic"],
        "oracle_val_rank_ic": full["oracle_val_rank_ic"],
    }
    result = {"config": cfg, "caveat": CAVEAT, "rows": rows, "ratios": ratios}
    write_result(NAME, result, results_dir)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    return run(quick=args.quick)


if __name__ == "__main__":
    main()
