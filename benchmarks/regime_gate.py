"""Does the regime gate help? Hybrid Stage3 with and without it, on the same inputs.

One pipeline on the bundled real data (2006-2013, small preset, extractor ``v1+v2`` so
there are index and sector columns to gate, ``relationships.regime=true`` so every model
sees the regime one-hots, Stage2 off): ``prepare -> stage1 -> extract`` once, then for each
seed three GRUs with the demo's Stage3 settings (lookback 40, at most 3 epochs):

- ``hybrid+gate``: the hybrid inputs through the learned :class:`RegimeGate`,
- ``hybrid``: the very same inputs, no gate,
- ``own``: own + index + calendar + regime columns, no relationship features.

Scores: horizon-1 IC and rank IC on the validation and test spans (labels z-scored across
stocks per date), seconds per training epoch, and the learned gate scales. The difference
``hybrid+gate - hybrid`` is the gate's effect; its spread over seeds says how much of it is
noise. The synthetic market is left out: its regimes move the market factor, not the
relationships, so there is nothing planted for the gate to find.
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

import numpy as np

from benchmarks.common import format_table, run_isolated, write_result

NAME = "regime_gate"
BASE = [
    "data.source=demo",
    "data.start=2006-01-01",
    "relationships.extractor=v1+v2",
    "relationships.regime=true",
    "stage2.enabled=false",
    "stage3.models=[gru]",
    "stage3.lookback=40",
    "stage3.max_epochs=3",
    "stage3.patience=1",
    "trainer.progress=false",
]
FULL = dict(seeds=[0, 1, 2], overrides=[])
QUICK = dict(
    seeds=[0],
    overrides=[
        "data.start=2012-01-01",
        "stage1.max_epochs=1",
        "stage1.d_model=16",
        "stage1.num_heads=2",
        "stage1.num_layers=1",
        "relationships.oof_folds=2",
        "stage3.hidden_size=8",
        "stage3.gru.num_layers=1",
        "stage3.lookback=10",
        "stage3.max_epochs=1",
    ],
)
VARIANTS = {"hybrid+gate": ("hybrid", True), "hybrid": ("hybrid", False), "own": ("own", False)}


def measure(seeds: list[int], overrides: list[str]) -> dict[str, Any]:
    """Shared Stage1 + store, then every variant and seed; rows of scores."""
    from relcast.config import load_config
    from relcast.features.labels import normalize_labels_cross_section
    from relcast.metrics import signal_metrics
    from relcast.run.runner import Pipeline
    from relcast.run.steps.stage3 import fit_stage3_model
    from relcast.training.stage3 import predict_stage3

    cfg = load_config("small", overrides=[*BASE, *overrides])
    rows, gates = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline(cfg, tmp)
        for step in ("prepare", "stage1", "extract"):
            pipe.step(step)
        f, split = pipe.ctx.features, pipe.ctx.split
        cell = f.mask & pipe.ctx.target[None, :]
        z = normalize_labels_cross_section(pipe.ctx.labels, cell)[..., 0]  # (T, N)
        spans = {}
        for span in ("valid", "test"):
            on = np.zeros(len(f.dates), dtype=bool)
            on[getattr(split, span)] = True
            spans[span] = cell & on[:, None]
        for seed in seeds:
            for variant, (feature_set, gated) in VARIANTS.items():
                inputs = pipe.ctx.stage3_inputs(feature_set)
                spec = pipe.ctx.stage3_spec("gru", seed_offset=seed, regime_gate=gated)
                result = fit_stage3_model(pipe.ctx, "gru", inputs, spec, name=f"{variant}-{seed}")
                point = predict_stage3(result.model, inputs)["point"][..., 0]  # (T, N)
                row = {"variant": variant, "seed": seed, "inputs": inputs.num_features,
                       "seconds_per_epoch": result.seconds_per_epoch,
                       "epochs": len(result.history)}  # fmt: skip
                for span, mask in spans.items():
                    m = signal_metrics(point, z, mask & np.isfinite(point))
                    row[f"{span}_ic"], row[f"{span}_rank_ic"] = m["ic"], m["rank_ic"]
                rows.append(row)
                if gated:
                    gates[seed] = result.model.scales()
        regimes = f.group("regime")[cell].argmax(-1)
        share = np.bincount(regimes, minlength=3) / len(regimes)
    return {
        "rows": rows,
        "gates": gates,
        "regime_share": dict(zip(("bull", "bear", "sideways"), share.tolist(), strict=True)),
    }


def run(quick: bool = False, results_dir=None) -> dict[str, Any]:
    """Run in a fresh process, print the table, write the JSON."""
    cfg = QUICK if quick else FULL
    got = run_isolated(measure, cfg["seeds"], cfg["overrides"], isolate=not quick)
    rows = got["rows"]
    table = []
    for variant in VARIANTS:
        sel = [r for r in rows if r["variant"] == variant]
        row = {"variant": variant, "inputs": sel[0]["inputs"], "seeds": len(sel)}
        for key in ("valid_rank_ic", "test_rank_ic", "test_ic", "seconds_per_epoch"):
            values = [r[key] for r in sel]
            row[key] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        table.append(row)
    by = {(r["variant"], r["seed"]): r for r in rows}
    diffs = [by[("hybrid+gate", k)]["test_rank_ic"] - by[("hybrid", k)]["test_rank_ic"]
             for k in cfg["seeds"]]  # fmt: skip
    mean = {t["variant"]: t for t in table}
    ratios = {
        "test rank IC, gate minus no gate (mean over seeds)": round(statistics.fmean(diffs), 4),
        "seeds where the gate helped on test": f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
        "seconds per epoch, gate / no gate": round(
            mean["hybrid+gate"]["seconds_per_epoch"] / mean["hybrid"]["seconds_per_epoch"], 3
        ),
    }
    result = {
        "config": {**cfg, "base": BASE},
        "rows": table,
        "per_seed": rows,
        "gates": got["gates"],
        "regime_share": got["regime_share"],
        "ratios": ratios,
    }
    write_result(NAME, result, results_dir)
    print(f"\n## {NAME}: hybrid GRU with / without the regime gate, real data\n")
    print(format_table(table))
    print(f"\nregime share (target cells): {got['regime_share']}")
    print(f"learned gate scales per seed: {got['gates']}")
    print(f"{ratios}")
    return result


if __name__ == "__main__":
    run()
