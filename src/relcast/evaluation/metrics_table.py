"""The metrics table of a run (metrics.json's ``models``) as text, rows and HTML; the daily
Rank IC series of predictions.parquet. Shared by the report, the CLI and the app."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from relcast.metrics import daily_rank_ic

__all__ = [
    "COLUMNS",
    "Column",
    "daily_ic_series",
    "format_cell",
    "metric_value",
    "metrics_table_html",
    "metrics_table_rows",
    "metrics_table_text",
    "model_rows",
    "paired_table_html",
    "paired_table_rows",
    "simple_table_html",
]

PAIRED = ("vs_lightgbm", "vs_reversal", "vs_own")  # metrics.json's paired tests, in order
PAIRED_HEADER = ("model", "versus", "scores", "mean diff", "t", "p", "95% interval",
                 "Clark-West t", "CW p")  # fmt: skip


@dataclass(frozen=True)
class Column:
    """One column of the metrics table: where its value lives in a model's metrics."""

    key: str  # short name; also the seeds key "<key>_std"
    label: str  # header
    path: tuple[str, ...]  # keys into metrics["models"][NAME]
    kind: str  # "signed" (4 dp), "ratio" (2 dp), "plain" (4 dp), "percent", "signed_percent",
    # "pvalue" (3 dp)
    higher_is_better: bool | None  # None: no best is marked (p-values)


COLUMNS: tuple[Column, ...] = (
    Column("rank_ic", "Rank IC", ("rank_ic",), "signed", True),
    # Newey-West t / p of the daily Rank IC, paired t vs lightgbm / stage3_own (stats.py)
    Column("rank_ic_t", "Rank IC t", ("rank_ic_t",), "ratio", True),
    Column("rank_ic_p", "p", ("rank_ic_p",), "pvalue", None),
    Column("vs_lightgbm_t", "vs LGBM t", ("vs_lightgbm", "t"), "ratio", True),
    Column("vs_reversal_t", "vs rev1d t", ("vs_reversal", "t"), "ratio", True),
    Column("vs_own_t", "vs own t", ("vs_own", "t"), "ratio", True),
    # the same of the forecast's residual on the factor baselines (neutral.py)
    Column("neutral_rank_ic", "Neutral Rank IC", ("neutral", "rank_ic"), "signed", True),
    Column("neutral_rank_ic_t", "Neutral t", ("neutral", "rank_ic_t"), "ratio", True),
    Column("neutral_vs_own_t", "Neutral vs own t", ("neutral", "vs_own", "t"), "ratio", True),
    Column("ic", "IC", ("ic",), "signed", True),
    Column("ic_t", "IC t", ("ic_t",), "ratio", True),
    Column("neutral_ic", "Neutral IC", ("neutral", "ic"), "signed", True),
    Column("rank_icir", "Rank ICIR", ("rank_icir",), "ratio", True),
    Column("icir", "ICIR", ("icir",), "ratio", True),
    Column("mse", "MSE", ("mse",), "plain", False),
    Column("direction_acc", "Dir. acc", ("direction_acc",), "percent", True),
    Column(
        "topk_excess",
        "Top-k excess/yr",
        ("backtest", "topk", "excess_annualized_return_arithmetic"),
        "signed_percent",
        True,
    ),
    Column("topk_ir", "Top-k IR", ("backtest", "topk", "information_ratio"), "ratio", True),
    Column(
        "topk_max_drawdown", "Top-k max DD", ("backtest", "topk", "max_drawdown"), "percent", True
    ),
    Column(
        "topk_turnover", "Top-k turnover", ("backtest", "topk", "mean_turnover"), "percent", False
    ),
)


def metric_value(row: Mapping, path: tuple[str, ...]) -> float:
    """The number at ``path`` in a model's metrics row, NaN where it is missing or not a number."""
    value: Any = row
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return math.nan
        value = value[key]
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def format_cell(value: float, kind: str) -> str:
    """A metrics-table cell as text: ``"-"`` for NaN, else by the column's kind."""
    if not math.isfinite(value):
        return "-"
    if kind == "signed":
        return f"{value:+.4f}"
    if kind == "ratio":
        return f"{value:+.2f}"
    if kind == "percent":
        return f"{100 * value:.1f}%"
    if kind == "signed_percent":
        return f"{100 * value:+.1f}%"
    if kind == "pvalue":
        return f"{value:.3f}" if value >= 0.001 else "<0.001"
    return f"{value:.4f}"


def model_rows(metrics: Mapping) -> Mapping[str, Mapping]:
    """Accept the whole metrics.json dict or just its ``"models"`` part."""
    models = metrics.get("models", metrics)
    if not isinstance(models, Mapping):
        raise ValueError("metrics must be metrics.json's dict (with a 'models' key)")
    return models


def _table_values(models: Mapping[str, Mapping]) -> tuple[dict, dict, dict]:
    """Per (model, column): value, seed std (NaN if none), and whether it is the column best.

    Controls (``control_*``, trained on shuffled labels) never count as best.
    """
    value = {(m, c.key): metric_value(row, c.path) for m, row in models.items() for c in COLUMNS}
    std = {
        (m, c.key): metric_value(row, ("seeds", f"{c.key}_std"))
        for m, row in models.items()
        for c in COLUMNS
    }
    best = {}
    for c in COLUMNS:
        if c.higher_is_better is None:
            best.update({(m, c.key): False for m in models})
            continue
        cands = [value[m, c.key] for m in models if not m.startswith("control_")]
        cands = [v for v in cands if math.isfinite(v)]
        target = (max if c.higher_is_better else min)(cands) if cands else math.nan
        for m in models:
            v = value[m, c.key]
            best[m, c.key] = (
                not m.startswith("control_") and math.isfinite(v) and math.isclose(v, target)
            )
    return value, std, best


def _cell_text(value: float, std: float, kind: str) -> str:
    text = format_cell(value, kind)
    if math.isfinite(std) and math.isfinite(value):
        text += " ± " + format_cell(std, kind).lstrip("+")
    return text


def metrics_table_rows(metrics: Mapping) -> list[list[str]]:
    """The metrics table as text cells, one row per model: its name, then one cell per
    :data:`COLUMNS` entry (``value ± seed std``, ``*`` on the best per column, controls
    excluded). Takes metrics.json's dict (or its ``"models"`` part)."""
    models = model_rows(metrics)
    value, std, best = _table_values(models)
    return [
        [
            m,
            *(
                _cell_text(value[m, c.key], std[m, c.key], c.kind) + ("*" if best[m, c.key] else "")
                for c in COLUMNS
            ),
        ]
        for m in models
    ]


def metrics_table_text(metrics: Mapping) -> str:
    """Fixed-width text table of the test metrics (rows = models), best per column marked *.

    Takes metrics.json's dict (or its ``"models"`` part); for the terminal (``make demo``).
    """
    header = ["model", *(c.label for c in COLUMNS)]
    rows = metrics_table_rows(metrics)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    out.append("* best per column (controls excluded); Top-k columns: top-k dropout portfolio")
    out.append(
        "t: Newey-West t of the mean daily Rank IC / IC, p its two-sided p-value; vs LGBM t / "
        "vs rev1d t / vs own t: paired t of the daily Rank IC minus lightgbm's / reversal_1d's / "
        "stage3_own's (|t| > 2: signal)"
    )
    out.append(
        "Neutral: the same scores of the forecast's residual on the factor baselines (per date,"
        " least squares with an intercept); ±: std over single seeds (the row is their mean)"
    )
    return "\n".join(out)


def metrics_table_html(models: Mapping[str, Mapping]) -> str:
    value, std, best = _table_values(models)
    head = "".join(f"<th>{html.escape(c.label)}</th>" for c in COLUMNS)
    body = []
    for m in models:
        cells = []
        for c in COLUMNS:
            v = value[m, c.key]
            cls = "num best" if best[m, c.key] else "num"
            data = repr(v) if math.isfinite(v) else "nan"
            text = html.escape(_cell_text(v, std[m, c.key], c.kind))
            cells.append(f'<td class="{cls}" data-col="{c.key}" data-value="{data}">{text}</td>')
        row_cls = ' class="control"' if m.startswith("control_") else ""
        body.append(f'<tr{row_cls}><th class="model">{html.escape(m)}</th>{"".join(cells)}</tr>')
    return (
        '<table class="metrics" id="metrics-table"><thead><tr><th>model</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def paired_table_rows(metrics: Mapping) -> list[list[str]]:
    """Every paired test of metrics.json as text cells (:data:`PAIRED_HEADER`): per model and
    baseline, on the raw forecasts and on their factor-neutral residuals, the mean daily Rank
    IC difference, its Newey-West t and p, the block-bootstrap 95% interval and, for
    ``vs_own``, Clark-West's t and one-sided p. Takes metrics.json's dict (or its models)."""
    rows = []
    for m, row in model_rows(metrics).items():
        for scores, tests in (("raw", row), ("neutral", row.get("neutral") or {})):
            for key in PAIRED:
                test = tests.get(key)
                if not isinstance(test, Mapping):
                    continue
                ci = test.get("ci95") or [math.nan, math.nan]
                lo, hi = (
                    format_cell(float(v) if v is not None else math.nan, "signed") for v in ci
                )
                cw = test.get("clark_west") or {}
                fmt, at = format_cell, metric_value
                rows.append([
                    m, str(test.get("baseline", key)), scores,
                    fmt(at(test, ("mean_diff",)), "signed"),
                    fmt(at(test, ("t",)), "ratio"), fmt(at(test, ("p",)), "pvalue"),
                    f"[{lo}, {hi}]" if "-" not in (lo, hi) else "-",
                    fmt(at(cw, ("t",)), "ratio"), fmt(at(cw, ("p",)), "pvalue"),
                ])  # fmt: skip
    return rows


def paired_table_html(models: Mapping[str, Mapping]) -> str:
    """:func:`paired_table_rows` as an HTML table (empty text when there is no paired test)."""
    rows = paired_table_rows(models)
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in PAIRED_HEADER)
    body = "".join(
        f'<tr><th class="model">{html.escape(r[0])}</th><td>{html.escape(r[1])}</td>'
        f"<td>{html.escape(r[2])}</td>"
        + "".join(f'<td class="num">{html.escape(c)}</td>' for c in r[3:])
        + "</tr>"
        for r in rows
    )
    return (
        f'<table class="metrics" id="paired-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def simple_table_html(frame: pd.DataFrame, fmt: Callable[[float], str], id_: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        f'<tr><th class="model">{html.escape(str(i))}</th>'
        + "".join(f'<td class="num">{html.escape(fmt(float(v)))}</td>' for v in r)
        + "</tr>"
        for i, r in zip(frame.index, frame.to_numpy(), strict=True)
    )
    return (
        f'<table class="metrics" id="{id_}"><thead><tr><th>model</th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def daily_ic_series(predictions: pd.DataFrame, model: str, horizon: int = 1) -> pd.Series:
    """Daily cross-sectional rank IC of one model at one horizon, from predictions.parquet.

    Returns a Series indexed by date (NaN where fewer than two stocks or a constant side).
    """
    sub = predictions[(predictions["model"] == model) & (predictions["horizon"] == horizon)]
    if sub.empty:
        have = sorted(predictions["model"].unique().tolist())
        raise ValueError(f"no predictions for model {model!r} at horizon {horizon}; have {have}")
    pred = sub.pivot(index="date", columns="symbol", values="pred")  # (T, N)
    label = sub.pivot(index="date", columns="symbol", values="label").reindex_like(pred)
    ic = daily_rank_ic(pred.to_numpy(np.float64), label.to_numpy(np.float64))
    return pd.Series(ic, index=pd.DatetimeIndex(pred.index), name=model)
