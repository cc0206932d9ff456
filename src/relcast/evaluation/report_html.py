"""The HTML around the report's plots: the page, its style, the header (split, data health,
configuration) and the tables of metrics (no plotting, no file reading)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from relcast.evaluation.metrics_table import (
    format_cell,
    metric_value,
    metrics_table_html,
    paired_table_html,
    simple_table_html,
)

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1180px;color:#222;padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;
padding-bottom:4px;margin-top:1.6em}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:0.88em;margin:8px 0}
th,td{padding:4px 9px;border-bottom:1px solid #e4e4e4;text-align:left}
thead th{background:#f3f5f8;border-bottom:2px solid #ccd}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{background:#dff0d8;font-weight:bold}tr.control th,tr.control td{color:#888}
th.model{font-weight:normal;font-family:Menlo,Consolas,monospace;white-space:nowrap}
.kv th{color:#555;font-weight:normal;padding-right:16px}
figure{margin:16px 0 28px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#444;font-size:0.9em;margin-top:4px}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;font-size:0.9em}
pre{background:#f6f8fa;padding:10px;font-size:0.82em;overflow-x:auto}
.legend{color:#555;font-size:0.85em}
"""

_CONFIG_SUMMARY = (
    ("preset", ("preset",)),
    ("data source", ("data", "source")),
    ("horizons", ("data", "horizons")),
    ("label delay", ("data", "label_delay")),
    ("Stage1 width x layers", ("stage1", "d_model"), ("stage1", "num_layers")),
    ("Stage1 loss", ("stage1", "loss")),
    ("Stage2 enabled", ("stage2", "enabled")),
    ("relationship extractor", ("relationships", "extractor")),
    ("out-of-fold folds", ("relationships", "oof_folds")),
    ("regime gating / window", ("relationships", "regime"), ("relationships", "regime_window")),
    ("Stage3 models", ("stage3", "models")),
    ("Stage3 feature sets", ("stage3", "feature_sets")),
    ("lookback", ("stage3", "lookback")),
    ("quantiles", ("stage3", "quantiles")),
    ("top-k / n_drop", ("evaluation", "topk"), ("evaluation", "n_drop")),
    ("costs buy / sell", ("evaluation", "buy_cost"), ("evaluation", "sell_cost")),
    ("seeds", ("evaluation", "seeds")),
)


def _get(cfg: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(cfg, Mapping) or key not in cfg:
            return None
        cfg = cfg[key]
    return cfg


def _kv_table(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def data_health_html(health: Mapping | None) -> list[str]:
    """The reader's data-health account (data_health.json): rows masked/repaired by reason."""
    if health is None:
        return []
    totals = health.get("totals", {})
    if not totals:
        return [
            "<h2>Data health</h2>",
            f'<p class="note">{health.get("rows", 0)} rows read, nothing masked or repaired.</p>',
        ]
    pairs = []
    for reason, n in totals.items():
        per = health.get("by_symbol", {}).get(reason, {})
        worst = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        shown = ", ".join(f"{s} {k}" for s, k in worst)
        action = health.get("actions", {}).get(reason, "")
        pairs.append((reason, f"{action} {n} rows in {len(per)} symbols (most: {shown})"))
    note = f"{health.get('rows', 0)} rows read; rules in the README (Data health)."
    return ["<h2>Data health</h2>", _kv_table(pairs), f'<p class="note">{note}</p>']


def _header_html(run_dir: Path, metrics: Mapping, config_text: str | None, health) -> str:
    parts = [
        "<h1>relcast run report</h1>",
        f'<p class="sub">run folder <code>{html.escape(run_dir.name)}</code>, generated '
        f"{datetime.now():%Y-%m-%d %H:%M}</p>",
    ]
    split = metrics.get("split", {})
    pairs = [
        (name, " to ".join(map(str, split[name])))
        for name in ("train", "valid", "test")
        if isinstance(split.get(name), list | tuple)
    ]
    if "embargo" in split:
        pairs.append(("embargo (dates between spans)", str(split["embargo"])))
    if "test_dates_scored" in metrics:
        pairs.append(("test dates scored", str(metrics["test_dates_scored"])))
    labels = metrics.get("labels", {})
    if "definition" in labels:
        pairs.append(("label", str(labels["definition"])))
    parts += [
        "<h2>Split</h2>",
        _kv_table(pairs) if pairs else '<p class="note">metrics.json has no split dates.</p>',
    ]
    parts += data_health_html(health)
    parts.append("<h2>Configuration</h2>")
    if config_text is None:
        parts.append('<p class="note">Skipped: config.yaml not found.</p>')
    else:
        import yaml

        try:
            cfg = yaml.safe_load(config_text) or {}
        except yaml.YAMLError:
            cfg = {}
        summary = []
        for label, *paths in _CONFIG_SUMMARY:
            values = [_get(cfg, p) for p in paths]
            if all(v is None for v in values):
                continue
            summary.append(
                (
                    label,
                    " / ".join(
                        ", ".join(map(str, v)) if isinstance(v, list) else str(v) for v in values
                    ),
                )
            )
        parts.append(_kv_table(summary))
        parts.append(
            "<details><summary>full config.yaml</summary><pre>"
            f"{html.escape(config_text)}</pre></details>"
        )
    return "\n".join(parts)


def figure_html(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def page_html(run_dir, metrics, models, config_text, health, sections) -> str:
    """The whole report page: header, metrics tables, then the plot ``sections``."""
    parts = [_header_html(run_dir, metrics, config_text, health), "<h2>Test metrics</h2>"]
    if models:
        parts.append(metrics_table_html(models))
        parts.append(
            '<p class="legend">Green = best per column (controls excluded). IC / rank IC: '
            "mean daily cross-sectional correlation with the horizon-1 label; ICIR = mean / std "
            "over dates. MSE and direction accuracy on labels z-scored across stocks (MSE 1.0 = "
            "no information). Top-k: top-k dropout portfolio, excess return over the benchmark "
            "(arithmetic, annualised), information ratio, max drawdown, mean daily two-sided "
            "turnover. <i>control_*</i> rows are trained on shuffled labels: their IC must be "
            "near zero. <b>Rank IC t</b> and <b>IC t</b>: "
            "mean daily (rank) IC divided by its Newey-West standard error (Bartlett kernel, "
            "lag = label horizon + 4, which allows for autocorrelated days), <b>p</b> its "
            "two-sided p-value (normal); |t| above 2 (p below 0.05) means the IC is unlikely to "
            "be luck. <b>vs LGBM t</b> / <b>vs own t</b>: the same t for the daily difference "
            "between this model's rank IC and lightgbm's / stage3_own_&lt;same model&gt;'s, on "
            "the dates both are defined; <b>vs rev1d t</b> the same against reversal_1d (minus "
            "the last bar's return); positive = this model is better. <b>Neutral</b>: the same "
            "scores of the forecast's residual after a per-date regression on the factor "
            "baselines (reversal, momentum, low volatility, liquidity): what the model adds "
            "beyond them. A model with several seeds is scored by the mean forecast of its "
            "seeds; ± gives the std over single seeds. The paired tests below add a "
            "block-bootstrap 95% interval of each mean difference and Clark-West's test of "
            "own history nested in the model (docs/statistics.md).</p>"
        )
    else:
        parts.append(note("metrics.json lists no models."))
    by_h = {m: row.get("rank_ic_by_horizon") or {} for m, row in models.items()}
    by_h = {m: v for m, v in by_h.items() if v}
    if by_h:
        frame = pd.DataFrame(by_h).T.astype(float)
        parts.append("<h3>Rank IC by horizon</h3>")
        parts.append(simple_table_html(frame, lambda v: format_cell(v, "signed"), "horizon-table"))
    paired = paired_table_html(models)
    if paired:
        parts.append("<h3>Paired tests</h3>")
        parts.append(paired)
        parts.append(
            '<p class="legend">Mean daily Rank IC difference (model minus versus), its '
            "Newey-West t and two-sided p; the 95% interval of that mean from a circular "
            "moving-block bootstrap over dates; for own history (nested in the model) "
            "Clark-West's MSPE-adjusted t on the forecasts, one-sided p. <i>neutral</i>: the "
            "same on the factor-neutral residuals.</p>"
        )
    intervals = {
        m: {
            "pinball": metric_value(row, ("pinball",)),
            "coverage": metric_value(row, ("coverage",))
            if "coverage" in row
            else metric_value(row, ("coverage_80",)),
            "nominal": metric_value(row, ("coverage_nominal",)),
        }
        for m, row in models.items()
        if "pinball" in row or "coverage" in row or "coverage_80" in row
    }
    if intervals:
        frame = pd.DataFrame(intervals).T
        parts.append("<h3>Quantile forecasts</h3>")
        parts.append(simple_table_html(frame, lambda v: format_cell(v, "plain"), "interval-table"))
    parts += sections
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>relcast report: {html.escape(run_dir.name)}</title><style>{_CSS}</style>"
        f"</head><body>\n{body}\n</body></html>\n"
    )
