"""Which relationship columns carry signal: each column's own daily Rank IC with the label.

Reads a finished run folder (default: the real-market benchmark's main run,
``runs/real_nasdaq/main``, whose relationship features are out-of-fold on the training span)
and scores every relationship column and every own/context column as a forecast by itself:
the mean daily Rank IC with the horizon-1 label on the validation and the test span, with
its Newey-West t. It also asks whether a column says anything own history does not: the
Rank IC of the column after removing, date by date, its least-squares fit on the own columns
(``resid_*``). Columns are ranked by the validation span (the test span is only reported).

``python -m benchmarks.relationship_columns [--run FOLDER]`` adds the run (by its folder
name) to ``benchmarks/results/relationship_columns.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, format_table, write_result

NAME = "relationship_columns"
DEFAULT_RUN = Path(__file__).resolve().parents[1] / "runs" / "real_nasdaq" / "main"


def residualize(column: np.ndarray, own: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``column [T, N]`` minus, per date, its least-squares fit (with intercept) on
    ``own [T, N, F]`` over the valid stocks; NaN elsewhere."""
    out = np.full(column.shape, np.nan, dtype=np.float64)
    for t in range(column.shape[0]):
        ok = valid[t]
        if ok.sum() <= own.shape[-1] + 2:
            continue
        X = np.column_stack([np.ones(ok.sum()), own[t, ok]])
        y = column[t, ok].astype(np.float64)
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        out[t, ok] = y - X @ beta
    return out


def column_scores(
    values: np.ndarray,
    names: list[str],
    label: np.ndarray,
    valid: np.ndarray,
    spans: dict[str, np.ndarray],
    lag: int,
) -> list[dict[str, Any]]:
    """One row per column: mean daily Rank IC and its Newey-West t on each span."""
    from relcast.evaluation.stats import newey_west_test
    from relcast.metrics import daily_rank_ic

    rows = []
    for k, name in enumerate(names):
        row: dict[str, Any] = {"column": name}
        for span, index in spans.items():
            daily = daily_rank_ic(values[index, :, k], label[index], valid[index])
            test = newey_west_test(daily[np.isfinite(daily)], lag)
            row[f"{span}_rank_ic"] = test["mean"]
            row[f"{span}_t"] = test["t"]
        rows.append(row)
    return rows


def run(folder: Path = DEFAULT_RUN, results_dir=None) -> dict[str, Any]:
    from relcast.config import load_config
    from relcast.evaluation.stats import newey_west_lag
    from relcast.run.runner import Pipeline

    folder = Path(folder)
    if not (folder / "relationships.npz").exists():
        raise SystemExit(f"{folder} has no relationship features: run its extract step first")
    pipe = Pipeline(load_config(file=folder / "config.yaml"), folder)
    rel, rel_names = pipe.ctx.relationships
    features = pipe.ctx.features
    own_names = list(features.groups["own"])
    own = features.group("own")  # (T, N, F_own)
    label = pipe.ctx.labels[..., 0]  # horizon 1
    valid = features.mask & np.isfinite(rel).all(-1) & np.isfinite(own).all(-1)
    valid &= np.isfinite(label)
    split = pipe.ctx.split
    spans = {"valid": np.asarray(split.valid), "test": np.asarray(split.test)}
    lag = newey_west_lag(1)
    rel_rows = column_scores(rel, rel_names, label, valid, spans, lag)
    own_rows = column_scores(own, own_names, label, valid, spans, lag)
    own_filled = np.where(valid[..., None], own, 0.0)
    resid = np.stack(
        [residualize(rel[..., k], own_filled, valid) for k in range(len(rel_names))], -1
    )
    resid_rows = column_scores(resid, rel_names, label, valid, spans, lag)
    for row, res in zip(rel_rows, resid_rows, strict=True):
        for key in ("valid_rank_ic", "valid_t", "test_rank_ic", "test_t"):
            row[f"resid_{key}"] = res[key]
    rel_rows.sort(key=lambda r: -abs(r["valid_rank_ic"]))
    own_rows.sort(key=lambda r: -abs(r["valid_rank_ic"]))
    this = {
        "run": str(folder),
        "label": "horizon 1, the run's label_delay",
        "newey_west_lag": lag,
        "relationship_columns": rel_rows,
        "own_columns_top10": own_rows[:10],
        "ratios": {
            "best_relationship_over_best_own_valid_abs_rank_ic": abs(rel_rows[0]["valid_rank_ic"])
            / abs(own_rows[0]["valid_rank_ic"]),
        },
    }
    # one entry per run folder name, the others kept from the earlier JSON
    earlier = Path(results_dir or RESULTS_DIR) / f"{NAME}.json"
    runs = json.loads(earlier.read_text()).get("runs", {}) if earlier.exists() else {}
    runs[folder.name] = this
    result = {"runs": runs, "rows": rel_rows, "ratios": this["ratios"]}
    write_result(NAME, result, results_dir)
    print(f"\n## {NAME}: each relationship column as a forecast (ranked by validation)\n")
    print(format_table(rel_rows))
    print("\n## the 10 strongest own columns (validation)\n")
    print(format_table(own_rows[:10]))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a finished run folder")
    args = parser.parse_args(argv)
    run(args.run)


if __name__ == "__main__":
    main()
