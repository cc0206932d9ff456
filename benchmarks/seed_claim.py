"""The design's resource claim: Stage3 on ``rawconcat`` (600 dims) vs ``hybrid`` (46 dims).

The seed design says that feeding Stage3 every stock's indicators side by side
(20 stocks x 30 indicators = 600 input dims, lookback 90) costs ~90% more memory and time
per epoch than the hybrid input (30 own indicators + 16 relationship dims = 46). We measure
it for TFT, LSTM and TCN with everything else equal (hidden 64, 4 heads for the TFT,
batch size, lookback, horizons, quantiles, optimiser):

- seconds per training window (forward + backward + AdamW step, loader gather included),
  wall and CPU time, and the implied seconds per epoch over all training windows;
- peak RSS above the baseline during those steps (each configuration in a fresh process);
- activation memory: bytes autograd saves between forward and backward for one batch;
- parameter count.

Data: ``relcast.synthetic_market(20 stocks)`` -> ``build_features`` -> the first 30 ``own``
columns of the 20 stocks (the index symbol and the index/calendar groups are left out so the
widths are exactly 600 and 46). The 16 relationship dims are **random normal numbers**: cost
does not depend on their values, and no Stage1 has to be trained for a cost measurement.
Windows come from :meth:`Stage3Inputs.loader` and the models from the Stage3 registry. The
``rawconcat`` side is the design's approach as written: the model reads the 600 dims of
every step (``cross[cross_index]``: the 20 stocks' blocks, the target's included). (relcast's
own ``rawconcat`` Stage3 projects each date's block once per batch instead,
:mod:`relcast.models.temporal.cross_input`; this benchmark measures the design's claim.)
"""

from __future__ import annotations

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

NAME = "seed_claim"
MODELS = ("tft", "lstm", "tcn")
FEATURE_SETS = ("rawconcat", "hybrid")
NUM_STOCKS, NUM_OWN, NUM_REL = 20, 30, 16

# timed steps per model: the TFT is slow on 600 dims; the cheap models get more steps so
# that their few-millisecond steps are not lost in timer noise
FULL = dict(num_days=700, lookback=90, horizons=10, batch_size=64, hidden_size=64,
            steps={"tft": 6, "lstm": 40, "tcn": 40})  # fmt: skip
QUICK = dict(num_days=130, lookback=10, horizons=2, batch_size=8, hidden_size=8,
             steps={"tft": 2, "lstm": 2, "tcn": 2})  # fmt: skip
QUANTILES = (0.1, 0.5, 0.9)


def make_inputs(num_days: int, horizons: int, seed: int = 0) -> dict[str, Any]:
    """Both Stage3 input sets (600 and 46 dims), normalised labels and the split."""
    import relcast
    from relcast.features.build import build_features
    from relcast.features.featureset import FeatureSet
    from relcast.features.labels import forward_returns, normalize_labels_cross_section
    from relcast.features.splits import chronological_split
    from relcast.training.stage3_inputs import assemble_inputs

    panel, _ = relcast.synthetic_market(NUM_STOCKS, num_days, seed=seed)
    split = chronological_split(panel.dates, embargo=horizons)
    features = build_features(panel, train_end=int(split.train[-1]))
    stocks = np.flatnonzero(~panel.is_index)
    own = features.groups["own"][:NUM_OWN]
    if len(own) < NUM_OWN:
        raise RuntimeError(f"build_features gave only {len(own)} own columns")
    cols = features.columns(own)
    own_set = FeatureSet(
        dates=features.dates,
        symbols=features.symbols[stocks],
        names=list(own),
        values=np.ascontiguousarray(features.values[:, stocks][:, :, cols]),
        mask=features.mask[:, stocks],
        groups={"own": list(own)},
    )
    T = len(panel.dates)
    rng = np.random.default_rng(seed)
    rel = rng.standard_normal((T, NUM_STOCKS, NUM_REL)).astype(np.float32)  # random, see doc
    rel_names = [f"rel_{k}" for k in range(NUM_REL)]
    sectors = panel.sectors[stocks]
    labels = forward_returns(panel, horizons)[:, stocks]  # (T, N, H)
    inputs = {
        "hybrid": assemble_inputs(own_set, (rel, rel_names), "hybrid", sectors=sectors),
        "rawconcat": assemble_inputs(own_set, None, "rawconcat", sectors=sectors),
    }
    target = {k: normalize_labels_cross_section(labels, v.valid) for k, v in inputs.items()}
    return {"inputs": inputs, "target": target, "split": split}


def model_hparams(model: str, hidden_size: int) -> dict[str, Any]:
    """Same width everywhere; the TFT's 4 heads (SPEC medium preset)."""
    if model == "tft":
        return dict(hidden_size=hidden_size, num_heads=4)
    if model in ("lstm", "gru"):
        return dict(hidden_size=hidden_size, num_layers=2)
    return dict(hidden_size=hidden_size)


def train_steps(model, batches, quantiles, steps: int) -> tuple[float, float, int]:
    """``steps`` AdamW steps on the next batches: (wall s, CPU s, windows seen)."""
    import torch

    from relcast.models.temporal.losses import pinball_loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    windows = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        batch = next(batches)
        loss = pinball_loss(model(batch)["pred"], batch["y"], quantiles)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        windows += len(batch["y"])
    return time.perf_counter() - wall, time.process_time() - cpu, windows


def measure(model_name: str, feature_set: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One configuration: timing, peak RSS, activation bytes, parameters."""
    import torch

    from relcast.models.temporal.losses import pinball_loss
    from relcast.models.temporal.registry import create_model

    torch.manual_seed(0)
    data = make_inputs(cfg["num_days"], cfg["horizons"])
    inputs, target = data["inputs"][feature_set], data["target"][feature_set]
    loader = inputs.loader(
        cfg["lookback"], target, index=data["split"].train, batch_size=cfg["batch_size"],
        shuffle=True, seed=0, drop_last=True,
    )  # fmt: skip
    width = inputs.cross_width or inputs.num_features  # rawconcat: the 600 dims of each step
    model = create_model(
        model_name,
        num_features=width,
        horizons=cfg["horizons"],
        quantiles=QUANTILES,
        num_stocks=len(inputs.symbols),
        num_sectors=inputs.num_sectors,
        lookback=cfg["lookback"],
        **model_hparams(model_name, cfg["hidden_size"]),
    )
    batches = iter(_cycle(loader))
    with PeakRSS() as peak:
        train_steps(model, batches, QUANTILES, 1)  # warm-up (allocations, MKL init)
        wall, cpu, windows = train_steps(model, batches, QUANTILES, cfg["steps"][model_name])
    batch = next(batches)
    with saved_activation_bytes() as saved:
        loss = pinball_loss(model(batch)["pred"], batch["y"], QUANTILES)
    loss.backward()
    return {
        "model": model_name,
        "feature_set": feature_set,
        "input_dims": width,
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": cfg["batch_size"],
        "lookback": cfg["lookback"],
        "windows_timed": windows,
        "ms_per_window": 1e3 * wall / windows,
        "cpu_ms_per_window": 1e3 * cpu / windows,
        "train_windows": loader.num_windows,
        "epoch_seconds": wall / windows * loader.num_windows,
        "peak_rss_mb": peak.delta / MB,
        "activation_mb": saved["bytes"] / MB,
    }


def _cycle(loader):
    """Batches forever; a rawconcat batch with every stock's block in each step's ``x``."""
    while True:
        for batch in loader:
            if "cross" in batch:  # the design's input: the 20 stocks' blocks, nothing else
                batch = {**batch, "x": batch["cross"][batch["cross_index"]]}  # (B, L, 600)
            yield batch


def run(quick: bool = False, results_dir=None) -> dict[str, Any]:
    """Measure every (model, feature set), print the table, write the JSON."""
    cfg = QUICK if quick else FULL
    rows = [
        run_isolated(measure, model, fs, cfg, isolate=not quick)
        for model in MODELS
        for fs in FEATURE_SETS
    ]
    ratios = {}
    for model in MODELS:
        raw = next(r for r in rows if r["model"] == model and r["feature_set"] == "rawconcat")
        hyb = next(r for r in rows if r["model"] == model and r["feature_set"] == "hybrid")
        ratios[model] = {
            f"hybrid_over_rawconcat_{key}": ratio(hyb[key], raw[key])
            for key in ("ms_per_window", "cpu_ms_per_window", "peak_rss_mb", "activation_mb",
                        "params")
        }  # fmt: skip
    result = {"config": cfg, "relationship_features": "random normal (cost only)",
              "rows": rows, "ratios": ratios}  # fmt: skip
    write_result(NAME, result, results_dir)
    print(f"\n## {NAME}: Stage3 rawconcat (600 dims) vs hybrid (46 dims)\n")
    print(format_table(rows, ["model", "feature_set", "input_dims", "params", "ms_per_window",
                              "cpu_ms_per_window", "epoch_seconds", "peak_rss_mb",
                              "activation_mb"]))  # fmt: skip
    print()
    print(format_table([{"model": m, **r} for m, r in ratios.items()]))
    return result


if __name__ == "__main__":
    run()
