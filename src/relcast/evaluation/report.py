"""Turn a run folder into plots and one self-contained ``report.html`` (opens offline).

The run folder (written by :mod:`relcast.pipeline` and :mod:`relcast.evaluation.runner`)::

    config.yaml          resolved configuration
    metrics.json         {"split": {"train": [start, end], "valid": [..], "test": [..],
                                    "embargo": int},
                          "labels": {...}, "test_dates_scored": int,
                          "models": {NAME: {"ic", "rank_ic", "icir", "rank_icir", "mse",
                                            "direction_acc", "rank_ic_by_horizon"?,
                                            "ic_t", "ic_p", "rank_ic_t", "rank_ic_p",
                                            "vs_lightgbm"?: {"t", "p", "mean_diff", ..},
                                            "vs_own"?: {...},
                                            "pinball"?, "coverage"?, "coverage_nominal"?,
                                            "backtest": {"topk": {...}, "long_short": {...}},
                                            "seeds"?: {"<column>_std": float}, ...}}}
                         (NAME: naive_zero, naive_momentum, lightgbm, stage1, stage1+stage2,
                          stage3_own_gru, hybrid_gru, control_shuffled_lightgbm, ...)
    predictions.parquet  date, symbol, model, horizon, pred, label [, q0.1, q0.5, q0.9]
    backtest.parquet     date, model, strategy ("topk" | "long_short"), daily_return,
                         benchmark_return, excess_return, turnover
    attention.npz        dates (int64 ns) [T], symbols (str) [N], attention float32 [T, N, N]
                         (Stage1 last layer, heads averaged, row i = how stock i attends to j)
    importance.json      {MODEL: {feature: weight}} (TFT variable importance)
    logs/<stage>/**/metrics.csv   Lightning CSVLogger files (epoch, step, train_loss, ...)

Only ``metrics.json`` is required. A plot whose input is missing is skipped with a note in the
HTML. :func:`build_report` writes the PNGs into ``plots/`` and embeds them in ``report.html``
as base64 data URIs, with inline CSS and no external URL, script or font.

Scales: ``label`` in predictions.parquet is the raw forward return, while Stage1/Stage3
predictions and quantiles are on the scale of labels z-scored across stocks at each date (what
they are trained on). The prediction-band plot therefore z-scores the realised label per date.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relcast.evaluation import plots
from relcast.evaluation.metrics import daily_rank_ic
from relcast.evaluation.views import backtest_series, prediction_band, quantile_columns

__all__ = [
    "COLUMNS",
    "Column",
    "build_report",
    "daily_ic_series",
    "metrics_table_rows",
    "metrics_table_text",
]


# ---------------------------------------------------------------------------- metrics table
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
    Column("vs_own_t", "vs own t", ("vs_own", "t"), "ratio", True),
    Column("ic", "IC", ("ic",), "signed", True),
    Column("ic_t", "IC t", ("ic_t",), "ratio", True),
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


def _lookup(row: Mapping, path: tuple[str, ...]) -> float:
    value: Any = row
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return math.nan
        value = value[key]
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float, kind: str) -> str:
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


def _models(metrics: Mapping) -> Mapping[str, Mapping]:
    """Accept the whole metrics.json dict or just its ``"models"`` part."""
    models = metrics.get("models", metrics)
    if not isinstance(models, Mapping):
        raise ValueError("metrics must be metrics.json's dict (with a 'models' key)")
    return models


def _table_values(models: Mapping[str, Mapping]) -> tuple[dict, dict, dict]:
    """Per (model, column): value, seed std (NaN if none), and whether it is the column best.

    Controls (``control_*``, trained on shuffled labels) never count as best.
    """
    value = {(m, c.key): _lookup(row, c.path) for m, row in models.items() for c in COLUMNS}
    std = {
        (m, c.key): _lookup(row, ("seeds", f"{c.key}_std"))
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
    text = _fmt(value, kind)
    if math.isfinite(std) and math.isfinite(value):
        text += " ± " + _fmt(std, kind).lstrip("+")
    return text


def metrics_table_rows(metrics: Mapping) -> list[list[str]]:
    """The metrics table as text cells, one row per model: its name, then one cell per
    :data:`COLUMNS` entry (``value ± seed std``, ``*`` on the best per column, controls
    excluded). Takes metrics.json's dict (or its ``"models"`` part)."""
    models = _models(metrics)
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
        "vs own t: paired t of the daily Rank IC minus lightgbm's / stage3_own's (|t| > 2: signal)"
    )
    return "\n".join(out)


def _metrics_table_html(models: Mapping[str, Mapping]) -> str:
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


def _simple_table_html(frame: pd.DataFrame, fmt: Callable[[float], str], id_: str) -> str:
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


# ---------------------------------------------------------------------------- helpers
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


def _choose_target(attention: np.ndarray, symbols: np.ndarray, candidates: set[str]) -> str:
    """The candidate whose time-averaged attention is most concentrated on one other stock."""
    with np.errstate(all="ignore"):
        mean = np.nanmean(attention.astype(np.float64), axis=0)  # (N, N)
    np.fill_diagonal(mean, -np.inf)
    score = np.where(np.isfinite(mean), mean, -np.inf).max(axis=1)  # (N,)
    allowed = (
        np.array([s in candidates for s in symbols]) if candidates else np.ones(len(symbols), bool)
    )
    score = np.where(allowed, score, -np.inf)
    return str(symbols[int(np.argmax(score))])


def _read_logs(logs_dir: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Stage name -> metrics.csv frame; several CSVs of a stage get a ``version`` column."""
    curves, notes = {}, []
    for stage in sorted(p for p in logs_dir.iterdir() if p.is_dir()):
        files = sorted(stage.rglob("metrics.csv"))
        frames = []
        for f in files:
            try:
                frame = pd.read_csv(f)
            except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as err:
                notes.append(f"{f.relative_to(logs_dir.parent)} unreadable ({err})")
                continue
            if "epoch" in frame and not frame.empty:
                # e.g. "fold_0/logs/version_0": folds and reruns stay apart
                fit = str(f.parent.relative_to(stage))
                frames.append(frame.assign(version=fit) if len(files) > 1 else frame)
        if frames:
            curves[stage.name] = pd.concat(frames, ignore_index=True)
    return curves, notes


# ---------------------------------------------------------------------------- report
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
    ("Stage1 width x layers", ("stage1", "d_model"), ("stage1", "n_layers")),
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


def _data_health_html(path: Path) -> list[str]:
    """The reader's data-health account (data_health.json): rows masked/repaired by reason."""
    if not path.is_file():
        return []
    health = json.loads(path.read_text())
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


def _header_html(run_dir: Path, metrics: Mapping, config_text: str | None) -> str:
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
    parts += _data_health_html(run_dir / "data_health.json")
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


def _figure_html(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


_STRATEGY = {"topk": "top-k dropout", "long_short": "long-short"}


def _read_parquet(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    if "date" in frame:
        frame["date"] = pd.to_datetime(frame["date"])
    return frame


def _regime_gates(run_dir: Path) -> dict[str, dict]:
    """``{model: {regime: {"index": s, "sector": s}}}`` logged by a regime-gated Stage3."""
    path = run_dir / "run.json"
    if not path.exists():
        return {}
    stage3 = json.loads(path.read_text()).get("steps", {}).get("stage3", {})
    return {
        name: info["regime_gate_scales"]
        for name, info in stage3.get("models", {}).items()
        if info.get("regime_gate_scales")
    }


def build_report(run_dir: str | Path, target: str | None = None) -> Path:
    """Write ``plots/*.png`` and a self-contained ``report.html`` for a run folder.

    Args:
        run_dir: the run folder (see the module docstring for its layout).
        target: symbol whose attention and prediction bands are shown; default: the stock
            whose average Stage1 attention is most concentrated on one other stock.

    Returns the path of ``report.html``. Missing optional inputs are skipped with a note.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(
            f"{metrics_path} not found: run the evaluate step first (relcast evaluate RUN)"
        )
    metrics = json.loads(metrics_path.read_text())
    models = _models(metrics)
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text() if config_path.exists() else None

    sections: list[str] = []

    def draw(title: str, caption: str, fn: Callable[[], Path]) -> None:
        """Run one plot; a failure becomes a note instead of losing the whole report."""
        try:
            sections.append(_figure_html(fn(), caption))
        except Exception as err:  # noqa: BLE001 - the rest of the report is still worth having
            warnings.warn(f"report: could not draw {title}: {err}", stacklevel=2)
            sections.append(_note(f"Could not draw {title}: {type(err).__name__}: {err}"))

    predictions = None
    if (run_dir / "predictions.parquet").exists():
        predictions = _read_parquet(run_dir / "predictions.parquet")
    predicted = set(predictions["symbol"].astype(str)) if predictions is not None else set()

    # --- attention
    sections.append("<h2>Which stocks influence the target (Stage1 attention)</h2>")
    if (run_dir / "attention.npz").exists():
        with np.load(run_dir / "attention.npz", allow_pickle=False) as z:
            raw = z["dates"]  # int64 ns (as written by the runner) or datetime64
            att_dates = raw if raw.dtype.kind == "M" else raw.astype("int64").astype("M8[ns]")
            att_symbols = z["symbols"].astype(str)
            attention = z["attention"]
        if target is None:
            target = _choose_target(attention, att_symbols, predicted)
        if target not in att_symbols:
            sections.append(_note(f"Skipped: target {target!r} is not in attention.npz."))
        else:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", target)
            draw(
                "the attention heatmap",
                f"How {target} attends to each stock on each test date (left; grey = no data) "
                "and on average (right). High weight = that stock's representation feeds "
                f"{target}'s Stage1 embedding.",
                lambda: plots.attention_heatmap(
                    attention, att_dates, att_symbols, target, plot_dir / f"attention_{safe}.png"
                ),
            )
    else:
        sections.append(_note("Skipped: attention.npz not found (Stage1 attention not saved)."))

    # --- variable importance
    sections.append("<h2>Variable importance</h2>")
    imp_path = run_dir / "importance.json"
    importance = json.loads(imp_path.read_text()) if imp_path.exists() else {}
    if not importance:
        sections.append(_note("Skipped: importance.json not found (no TFT in this run)."))
    for name, weights in importance.items():
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        draw(
            f"the importance of {name}",
            f"{name}: average variable-selection weight of each input over test windows.",
            lambda name=name, weights=weights, safe=safe: plots.variable_importance(
                weights, plot_dir / f"importance_{safe}.png", title=f"{name}: variable importance"
            ),
        )

    # --- predictions with intervals
    sections.append("<h2>Predictions with intervals</h2>")
    if predictions is None:
        sections.append(_note("Skipped: predictions.parquet not found."))
    else:
        sections.append(_prediction_section(predictions, models, target, plot_dir, draw))

    # --- portfolios
    sections.append("<h2>Cumulative portfolio returns (test span, after costs)</h2>")
    if (run_dir / "backtest.parquet").exists():
        bt = _read_parquet(run_dir / "backtest.parquet")
        order = [m for m in models if m in set(bt["model"])]
        for strategy, caption in (
            (
                "topk",
                "Top-k dropout portfolio of each model vs the benchmark (dashed), "
                "compounded, net of trading costs.",
            ),
            (
                "long_short",
                "Long top 20% / short bottom 20% of each model (market-neutral, "
                "so no benchmark), compounded, net of trading costs.",
            ),
        ):
            if not (bt["strategy"] == strategy).any():
                sections.append(_note(f"Skipped: no {strategy} rows in backtest.parquet."))
                continue
            series, bench = backtest_series(bt, strategy, order)
            draw(
                f"the {strategy} returns",
                caption,
                lambda s=series, b=bench, st=strategy: plots.cumulative_returns(
                    s,
                    plot_dir / f"cumulative_{st}.png",
                    benchmark=b,
                    title=f"Cumulative return: {_STRATEGY[st]} portfolio",
                ),
            )
    else:
        sections.append(_note("Skipped: backtest.parquet not found."))

    # --- IC over time
    sections.append("<h2>Rank IC over time</h2>")
    if predictions is None:
        sections.append(_note("Skipped: predictions.parquet not found."))
    else:
        have = set(predictions["model"])
        daily = {}
        for m in [m for m in models if m in have] + sorted(have - set(models)):
            s = daily_ic_series(predictions, m, horizon=1)
            if s.notna().any():  # a constant forecast (naive_zero) has no IC
                daily[m] = (s.index.to_numpy(), s.to_numpy())
        if daily:
            draw(
                "the IC over time",
                "Daily cross-sectional rank IC of each model at horizon 1, 20-date rolling "
                "mean; the legend gives the mean over the test span.",
                lambda: plots.ic_over_time(daily, plot_dir / "ic_over_time.png", rolling=20),
            )
        else:
            sections.append(_note("Skipped: no model has a defined daily IC."))

    # --- training curves
    sections.append("<h2>Training curves</h2>")
    logs_dir = run_dir / "logs"
    curves, log_notes = _read_logs(logs_dir) if logs_dir.is_dir() else ({}, [])
    sections += [_note(n) for n in log_notes]
    if curves:
        draw(
            "the training curves",
            "Per stage: training and validation loss by epoch (left axis) and validation "
            "rank IC (right axis, dashed). Several lines = several fits (folds or seeds).",
            lambda: plots.training_curves(curves, plot_dir / "training_curves.png"),
        )
    else:
        sections.append(_note("Skipped: no logs/<stage>/metrics.csv found."))

    # --- regime gate (relationships.regime)
    gates = _regime_gates(run_dir)
    if gates:
        sections.append("<h2>Regime gate</h2>")
        for name, scales in gates.items():
            frame = pd.DataFrame(scales).T[["index", "sector"]].astype(float)
            sections.append(f"<h3>{html.escape(name)}</h3>")
            table_id = "regime-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)
            sections.append(_simple_table_html(frame, lambda v: f"x{v:.3f}", table_id))
        sections.append(
            '<p class="legend">Learned scale of the index relationship columns '
            "(attention_to_index, attention to the index) and of the sector column "
            "(attention_to_sector) in each regime of the index, applied at every window "
            "step by that step's regime; 1.0 = unchanged, range 0 to 2.</p>"
        )

    html_text = _page(run_dir, metrics, models, config_text, sections)
    out = run_dir / "report.html"
    tmp = out.with_name(".report.html.tmp")
    tmp.write_text(html_text, encoding="utf-8")
    tmp.replace(out)
    return out


def _prediction_section(predictions, models, target, plot_dir, draw) -> str:
    """Pick a model (with quantiles if any, hybrid first) and a stock; draw its bands."""
    sections: list[str] = []
    qcols = quantile_columns(predictions)
    h1 = predictions[predictions["horizon"] == predictions["horizon"].min()]
    with_q = [
        m
        for m in dict.fromkeys(h1["model"])
        if qcols and h1.loc[h1["model"] == m, qcols].notna().all(axis=1).any()
    ]
    if with_q:
        model = sorted(with_q, key=lambda m: not m.startswith("hybrid"))[0]
    else:
        ranked = [
            m for m in models if m in set(h1["model"]) and not m.startswith(("control_", "naive_"))
        ]
        ranked.sort(key=lambda m: -np.nan_to_num(_lookup(models[m], ("rank_ic",)), nan=-np.inf))
        if not ranked:
            return _note("Skipped: no model predictions to show.")
        model = ranked[0]
    sub = h1[h1["model"] == model]
    horizon = int(sub["horizon"].iloc[0])
    symbols = sub["symbol"].astype(str)
    symbol = target if target in set(symbols) else symbols.value_counts().index[0]
    # labels (and point scores) z-scored across stocks per date: the scale models train on
    one = prediction_band(h1, model, symbol, horizon)
    band = one.band_label if one.has_interval else ""
    caption = (
        f"{model}: horizon-{horizon} forecast for {symbol} on the test span vs the "
        "realised return, both as z-scores across stocks at each date"
    )
    caption += f", with the {band}." if with_q else " (this run has no quantile forecasts)."
    if not with_q:
        sections.append(_note("No quantile columns in predictions.parquet: no interval band."))
    draw(
        "the prediction bands",
        caption,
        lambda: plots.prediction_bands(
            one.dates,
            one.label,
            one.pred,
            one.lo,
            one.hi,
            f"{model}: {symbol}, horizon {horizon} (z-scores across stocks)",
            plot_dir / "prediction_bands.png",
            band_label=one.band_label,
        ),
    )
    return "\n".join(sections)


def _page(run_dir, metrics, models, config_text, sections) -> str:
    parts = [_header_html(run_dir, metrics, config_text), "<h2>Test metrics</h2>"]
    if models:
        parts.append(_metrics_table_html(models))
        parts.append(
            '<p class="legend">Green = best per column (controls excluded). IC / rank IC: '
            "mean daily cross-sectional correlation with the horizon-1 label; ICIR = mean / std "
            "over dates. MSE and direction accuracy on labels z-scored across stocks (MSE 1.0 = "
            "no information). Top-k: top-k dropout portfolio, excess return over the benchmark "
            "(arithmetic, annualised), information ratio, max drawdown, mean daily two-sided "
            "turnover. <i>control_*</i> rows are trained on shuffled labels: their IC must be "
            "near zero. Values with ± are mean ± std over seeds. <b>Rank IC t</b> and <b>IC t</b>: "
            "mean daily (rank) IC divided by its Newey-West standard error (Bartlett kernel, "
            "lag = label horizon + 4, which allows for autocorrelated days), <b>p</b> its "
            "two-sided p-value (normal); |t| above 2 (p below 0.05) means the IC is unlikely to "
            "be luck. <b>vs LGBM t</b> / <b>vs own t</b>: the same t for the daily difference "
            "between this model's rank IC and lightgbm's / stage3_own_&lt;same model&gt;'s, on "
            "the dates both are defined (seed-averaged forecasts with several seeds); positive = "
            "this model is better. metrics.json has the mean differences and p-values.</p>"
        )
    else:
        parts.append(_note("metrics.json lists no models."))
    by_h = {m: row.get("rank_ic_by_horizon") or {} for m, row in models.items()}
    by_h = {m: v for m, v in by_h.items() if v}
    if by_h:
        frame = pd.DataFrame(by_h).T.astype(float)
        parts.append("<h3>Rank IC by horizon</h3>")
        parts.append(_simple_table_html(frame, lambda v: _fmt(v, "signed"), "horizon-table"))
    intervals = {
        m: {
            "pinball": _lookup(row, ("pinball",)),
            "coverage": _lookup(row, ("coverage",))
            if "coverage" in row
            else _lookup(row, ("coverage_80",)),
            "nominal": _lookup(row, ("coverage_nominal",)),
        }
        for m, row in models.items()
        if "pinball" in row or "coverage" in row or "coverage_80" in row
    }
    if intervals:
        frame = pd.DataFrame(intervals).T
        parts.append("<h3>Quantile forecasts</h3>")
        parts.append(_simple_table_html(frame, lambda v: _fmt(v, "plain"), "interval-table"))
    parts += sections
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>relcast report: {html.escape(run_dir.name)}</title><style>{_CSS}</style>"
        f"</head><body>\n{body}\n</body></html>\n"
    )
