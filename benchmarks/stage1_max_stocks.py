"""Stage1 on random cross-sections (``stage1.max_stocks``) against full attention at 2,000 stocks.

The same Stage1 (small preset: d_model 64, 4 heads, 2 layers; IC loss; 32 dates per batch;
seed 0, no early stopping) is trained with full attention and with ``max_stocks=512`` (each
training date attends over a random 512 of its ~2,000 traded stocks, a new draw per epoch),
the subset for 3x the epochs, less CPU time than the full run's (same seed and draws: its
first epochs are the equal-epoch comparison). Both validate on every stock after every epoch.
Each variant runs in a fresh process. Two synthetic markets of 2,000 stocks x 600 dates:

- ``lead_lag``: ``relcast.data.synthetic.synthetic_market`` (+ 1 index, business days, its
  default 500 planted lead-lag pairs and regimes) with the pipeline's features
  (``build_features``, scaled on the training span) and horizon-1 labels. The oracle forecasts
  every follower by its leader's return of the day and every other stock by 0. A pair is
  something a random subset breaks: a follower sees its leader on a quarter of its dates.
- ``sector_signal``: :func:`benchmarks.stage1_scale.synthetic` (44 random features, 20
  sectors, a stock's next return = 0.15 x its feature 0 + 0.3 x its sector's mean of feature 1
  + noise): the cross-sectional part is a mean over ~100 peers, which a subset of a quarter
  of the stocks still estimates. The oracle is that signal without the noise.

Measured per market and variant: seconds per epoch (wall and CPU seconds of the process,
training part and validation part apart), the validation Rank IC (horizon 1, mean over
validation dates, every stock) after each epoch, and the oracle's.

The machine is shared: wall times are indicative only (each row records the load average
before and after it); CPU seconds are steadier. ``--markets`` runs some markets only and
keeps the other markets' rows of the existing JSON (each row says when it was measured).

    OMP_NUM_THREADS=1 python -m benchmarks.stage1_max_stocks           # ~13 CPU minutes
    OMP_NUM_THREADS=1 python -m benchmarks.stage1_max_stocks --quick   # tiny sizes (tests)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, format_table, quiet, ratio, run_isolated, write_result

NAME = "stage1_max_stocks"
MARKETS = ("lead_lag", "sector_signal")
FULL = dict(
    stocks=2000, days=600, max_stocks=512, batch_dates=32, preset="small",
    epochs={
        "lead_lag": {"full": 4, "max_stocks": 12},
        "sector_signal": {"full": 3, "max_stocks": 9},
    },
)  # fmt: skip
QUICK = dict(
    stocks=40, days=260, max_stocks=8, batch_dates=16, preset="small", d_model=16,
    epochs={m: {"full": 1, "max_stocks": 2} for m in MARKETS},
)  # fmt: skip
CAVEAT = (
    "measured on a 2-core VM shared with other jobs (see load_average_1min before/after each "
    "row): wall seconds are indicative only, CPU seconds of the process steadier; one seed, "
    "few epochs: the Rank ICs say whether the subset keeps learning, not which is better"
)


def lead_lag_market(cfg: dict) -> SimpleNamespace:
    """``synthetic_market`` with the pipeline's features and its lead-lag oracle."""
    from relcast.data.synthetic import synthetic_market
    from relcast.features.build import build_features
    from relcast.features.labels import forward_returns
    from relcast.features.splits import chronological_split

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
    return SimpleNamespace(
        features=features, labels=labels, split=split, sectors=panel.sectors,
        is_index=panel.is_index, oracle=oracle,
    )  # fmt: skip


def sector_signal_market(cfg: dict) -> SimpleNamespace:
    """:func:`benchmarks.stage1_scale.synthetic` (20 sectors, 44 features) and its oracle."""
    from benchmarks.stage1_scale import synthetic

    features, labels, sectors, split = synthetic(cfg["stocks"], 44, 20, cfg["days"])
    x = np.nan_to_num(features.values)
    onehot = np.eye(20, dtype=np.float32)[sectors]  # (N, S)
    peer = x[..., 1] @ onehot / np.maximum(onehot.sum(0), 1)  # (T, S)
    oracle = 0.15 * x[..., 0] + 0.3 * peer[:, sectors]  # the signal without the noise
    return SimpleNamespace(
        features=features, labels=labels, split=split, sectors=sectors,
        is_index=np.zeros(len(sectors), dtype=bool), oracle=oracle,
    )  # fmt: skip


def oracle_rank_ic(m: SimpleNamespace) -> float:
    """The oracle's mean daily Rank IC over the validation dates (every traded stock)."""
    from relcast.metrics import daily_rank_ic

    v = np.asarray(m.split.valid)
    y = m.labels[v, :, 0]
    ok = m.features.mask[v] & ~m.is_index[None, :] & np.isfinite(y) & np.isfinite(m.oracle[v])
    return float(np.nanmean(daily_rank_ic(m.oracle[v], y, ok)))


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


def measure(market: str, variant: str, cfg: dict) -> dict[str, Any]:
    """Train one variant on one market in this process; its timings and validation Rank ICs."""
    import torch

    from relcast.config import load_config
    from relcast.models.cross_sectional import Stage1Config
    from relcast.training.specs import Stage1Spec, TrainerSpec
    from relcast.training.stage1 import encode_sectors, fit_stage1

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    m = (lead_lag_market if market == "lead_lag" else sector_signal_market)(cfg)
    features, labels, split, sectors, is_index = (
        m.features,
        m.labels,
        m.split,
        m.sectors,
        m.is_index,
    )
    oracle_ic = oracle_rank_ic(m)
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
    epochs = cfg["epochs"][market][variant]
    with tempfile.TemporaryDirectory(prefix="relcast-bench-") as tmp:
        result = fit_stage1(
            features, labels, split, config,
            Stage1Spec(
                loss=settings.loss, max_epochs=epochs, patience=epochs + 1,
                batch_dates=cfg["batch_dates"], lr=settings.lr, seed=0,
                max_stocks=cfg["max_stocks"] if variant == "max_stocks" else None,
            ),
            TrainerSpec(out_dir=tmp, progress=False, callbacks=(clock,)),
            sector_ids=sectors, target=~is_index,
        )  # fmt: skip

    def mean(key: str) -> float:
        return round(float(np.mean([e[key] for e in clock.rows])), 3)

    return {
        "market": market,
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
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def market_ratios(full: dict, sub: dict) -> dict[str, Any]:
    """Speed-ups and the best validation Rank ICs (at equal epochs and at the subset's all)."""
    same = full["epochs"]  # the subset run's first epochs: the equal-epoch comparison
    return {
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


def run(quick: bool = False, results_dir=None, markets=MARKETS) -> dict[str, Any]:
    """Measure, print the table, write ``results/stage1_max_stocks.json`` (rows of markets not
    run now are kept from that file)."""
    cfg = QUICK if quick else FULL
    path = Path(results_dir or RESULTS_DIR) / f"{NAME}.json"
    kept = []
    if set(markets) != set(MARKETS) and path.exists():
        kept = [r for r in json.loads(path.read_text())["rows"] if r["market"] not in markets]
    rows = kept + [
        run_isolated(measure, market, variant, cfg, isolate=not quick)
        for market in markets
        for variant in ("full", "max_stocks")
    ]
    rows.sort(key=lambda r: (MARKETS.index(r["market"]), r["variant"] != "full"))
    print(format_table(rows, [
        "market", "variant", "train_wall_s_per_epoch", "train_cpu_s_per_epoch",
        "valid_cpu_s_per_epoch", "val_rank_ic_per_epoch", "oracle_val_rank_ic",
    ]))  # fmt: skip
    ratios = {}
    for market in MARKETS:
        pair = [r for r in rows if r["market"] == market]
        if len(pair) == 2:
            ratios[market] = market_ratios(*pair)
    result = {"config": cfg, "caveat": CAVEAT, "rows": rows, "ratios": ratios}
    write_result(NAME, result, results_dir)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--markets", nargs="+", choices=MARKETS, default=list(MARKETS))
    args = parser.parse_args(argv)
    import torch

    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    return run(quick=args.quick, markets=tuple(args.markets))


if __name__ == "__main__":
    main()
