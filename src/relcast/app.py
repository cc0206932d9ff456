"""The Gradio workflow app: load data, set up a run, train each stage, look at the results.

Start it with ``relcast app`` (needs the extra: ``pip install 'relcast[app]'``). Each browser
session works in its own run folder under a temporary directory, removed when the session
ends. The steps follow the design, one tab each:

1. Data: the bundled demo, an uploaded CSV/Parquet (+ optional universe file) or a synthetic
   market; a summary of what was read.
2. Settings: preset + the key settings; applying them prepares a new run folder (split).
3. Stage1 (+ Stage2), 4. relationship features, 5. Stage3: each runs ``relcast <step>`` in a
   subprocess, streams its log, and can be cancelled (the subprocess is killed). Redoing a
   step makes the later ones stale: they must be run again.
6. Evaluate: metrics table, Stage1 attention heatmap for a chosen stock, TFT variable
   importance, predictions with intervals, backtest curves, the HTML report.

Errors the user causes (bad files, bad settings) show as messages, never as tracebacks.
Gradio is imported inside :func:`build_app`, so the helpers here import without the extra.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "attention_plot",
    "backtest_plot",
    "build_app",
    "importance_plot",
    "launch",
    "metrics_frame",
    "prediction_plot",
]

log = logging.getLogger(__name__)

SOURCES = ("Bundled demo", "Upload CSV/Parquet", "Synthetic market")
STEP_NAMES = {
    "data": "1 Data",
    "settings": "2 Settings",
    "stage1": "3 Stage1",
    "extract": "4 Relationships",
    "stage3": "5 Stage3",
    "evaluate": "6 Evaluate",
}
# step -> the step that must be done first (the design's order)
REQUIRES = {"stage1": "settings", "extract": "stage1", "stage3": "extract", "evaluate": "stage3"}
CSS = """
.relcast-log textarea {font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px;}
"""
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NOISE = ("litlogger", "LitLogger")  # Lightning's advertisement line
_RUNNING: dict[str, subprocess.Popen] = {}  # session folder -> its running step


# ============================================================================ the look (no gradio)
def metrics_frame(metrics: Mapping) -> pd.DataFrame:
    """metrics.json -> the report's metrics table as strings, one row per model.

    Same columns, formats, ``± std`` over seeds and ``*`` on the best value per column
    (controls excluded) as :func:`relcast.evaluation.report.metrics_table_text`.
    """
    # the report's own helpers: one definition of the table, so the app cannot drift from it
    from relcast.evaluation.report import COLUMNS, _cell_text, _models, _table_values

    models = _models(metrics)
    value, std, best = _table_values(models)
    rows = [
        [
            name,
            *(
                _cell_text(value[name, c.key], std[name, c.key], c.kind)
                + ("*" if best[name, c.key] else "")
                for c in COLUMNS
            ),
        ]
        for name in models
    ]
    return pd.DataFrame(rows, columns=["model", *(c.label for c in COLUMNS)])


def _read_attention(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(Path(run_dir) / "attention.npz", allow_pickle=False) as z:
        dates = z["dates"].astype("int64").astype("M8[ns]")
        return dates, z["symbols"].astype(str), z["attention"]  # (T,), (N,), (T, N, N)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def attention_plot(run_dir: str | Path, target: str, out_dir: str | Path) -> Path:
    """Heatmap of how ``target`` attends to every stock on each test date (Stage1)."""
    from relcast.evaluation.plots import attention_heatmap

    dates, symbols, attention = _read_attention(Path(run_dir))
    return attention_heatmap(
        attention, dates, symbols, target, Path(out_dir) / f"attention_{_safe(target)}.png"
    )


def importance_plot(run_dir: str | Path, model: str, out_dir: str | Path) -> Path | None:
    """Variable importance bars of a TFT model (None if the run has no importance)."""
    from relcast.evaluation.plots import variable_importance

    path = Path(run_dir) / "importance.json"
    importance = json.loads(path.read_text()) if path.exists() else {}
    if model not in importance:
        return None
    return variable_importance(
        importance[model],
        Path(out_dir) / f"importance_{_safe(model)}.png",
        title=f"{model}: variable importance",
    )


def _quantile_columns(frame: pd.DataFrame) -> list[str]:
    cols = [c for c in frame.columns if re.fullmatch(r"q\d*\.?\d+", str(c))]
    return sorted(cols, key=lambda c: float(c[1:]))


def _prediction_models(predictions: pd.DataFrame) -> list[str]:
    """Models to offer for the prediction plot: those with intervals first, hybrid first."""
    qcols = _quantile_columns(predictions)
    models = [m for m in dict.fromkeys(predictions["model"]) if not m.startswith("naive_zero")]
    with_q = set()
    if qcols:
        has = predictions[qcols].notna().all(axis=1)
        with_q = set(predictions.loc[has, "model"])
    return sorted(models, key=lambda m: (m not in with_q, not m.startswith("hybrid")))


def prediction_plot(
    run_dir: str | Path, model: str, symbol: str, out_dir: str | Path, horizon: int = 1
) -> Path:
    """One stock's forecasts on the test span vs the realised return, with the interval.

    Models are trained on labels z-scored across stocks at each date, so the realised label
    is z-scored the same way (and point scores without quantiles too, whatever their scale).
    """
    from relcast.evaluation.plots import prediction_bands

    frame = pd.read_parquet(Path(run_dir) / "predictions.parquet")
    sub = frame[(frame["model"] == model) & (frame["horizon"] == horizon)].copy()
    if sub.empty:
        raise ValueError(f"no predictions for model {model!r} at horizon {horizon}")
    qcols = [c for c in _quantile_columns(sub) if sub[c].notna().any()]
    by_date = sub.groupby("date")["label"]
    sub["label_z"] = (sub["label"] - by_date.transform("mean")) / by_date.transform("std", ddof=0)
    pred = "pred"
    if not qcols:
        by_date = sub.groupby("date")["pred"]
        sub["pred_z"] = (sub["pred"] - by_date.transform("mean")) / by_date.transform("std", ddof=0)
        pred = "pred_z"
    one = sub[sub["symbol"].astype(str) == symbol].sort_values("date")
    if one.empty:
        raise ValueError(f"no predictions for {symbol!r} from {model!r}")
    lo = one[qcols[0]].to_numpy(float) if qcols else None
    hi = one[qcols[-1]].to_numpy(float) if qcols else None
    title = f"{model}: {symbol}, horizon {horizon} (z-scores across stocks)"
    return prediction_bands(
        pd.to_datetime(one["date"]).to_numpy(),
        one["label_z"].to_numpy(float),
        one[pred].to_numpy(float),
        lo,
        hi,
        title,
        Path(out_dir) / f"pred_{_safe(model)}_{_safe(symbol)}.png",
        band_label=f"{qcols[0]}-{qcols[-1]} interval" if qcols else "interval",
    )


def backtest_plot(run_dir: str | Path, strategy: str, out_dir: str | Path) -> Path:
    """Cumulative returns after costs of every model's ``topk`` or ``long_short`` portfolio."""
    from relcast.evaluation.plots import cumulative_returns

    bt = pd.read_parquet(Path(run_dir) / "backtest.parquet")
    part = bt[bt["strategy"] == strategy].sort_values("date")
    if part.empty:
        raise ValueError(f"no {strategy!r} rows in backtest.parquet")
    series = {
        m: (g["date"].to_numpy(), g["daily_return"].to_numpy())
        for m, g in part.groupby("model", sort=False)
    }
    bench = None
    if strategy == "topk":
        b = part.groupby("date")["benchmark_return"].first()
        bench = (b.index.to_numpy(), b.to_numpy())
    label = {"topk": "top-k dropout", "long_short": "long-short"}.get(strategy, strategy)
    return cumulative_returns(
        series,
        Path(out_dir) / f"cumulative_{strategy}.png",
        benchmark=bench,
        title=f"Cumulative return: {label} portfolio",
    )


# ============================================================================ steps (no gradio)
def _runs_base(runs_dir: str | Path | None) -> Path:
    """Where session folders go: ``runs_dir``, else ``<system temp>/relcast-app``."""
    return Path(runs_dir) if runs_dir is not None else Path(tempfile.gettempdir()) / "relcast-app"


def _new_session(runs_dir: str | Path | None) -> dict:
    base = _runs_base(runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="relcast-app-", dir=base)
    return {"dir": folder, "data": None, "summary": "", "run": None, "done": [], "runs": 0}


def _end_session(session: dict | None) -> None:
    """Called by Gradio when a session ends: stop its step, remove its folder."""
    if not session:
        return
    _kill(session["dir"])
    shutil.rmtree(session["dir"], ignore_errors=True)


def _kill(key: str) -> bool:
    """Stop the step running for session folder ``key``; False if none was running."""
    proc = _RUNNING.pop(key, None)
    return proc is not None and _stop(proc)


def _stop(proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        return False
    try:  # the step runs in its own process group: stop it and anything it started
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def _load_data(
    session: dict,
    source: str,
    data_file: str | None,
    universe_file: str | None,
    stocks: float,
    days: float,
) -> tuple[list[str], str]:
    """Read the chosen market; returns config overrides naming it, and its summary."""
    import relcast
    from relcast.data.datasets import describe_panel
    from relcast.data.panel import RelcastDataError

    if source == SOURCES[0]:
        panel = relcast.load_dataset("demo")
        overrides = ["data.source=demo"]
        title = "Bundled demo: US large caps + S&P 500 (offline)"
    elif source == SOURCES[1]:
        if not data_file:
            raise RelcastDataError("choose a CSV or Parquet file to upload first")
        inputs = Path(session["dir"]) / "inputs"
        inputs.mkdir(exist_ok=True)
        # the app reads its own copies: the user's files are never touched
        # plain copy names: they travel through ``data.source=PATH`` overrides (YAML values)
        data = Path(shutil.copy(data_file, inputs / _safe(Path(data_file).name)))
        universe = None
        if universe_file:
            universe = Path(
                shutil.copy(universe_file, inputs / ("universe_" + _safe(Path(universe_file).name)))
            )
        try:
            panel = relcast.read_panel(data, universe=universe)
        except RelcastDataError as exc:  # name the user's files, not the app's copies
            text = str(exc).replace(str(data), Path(data_file).name)
            if universe is not None:
                text = text.replace(str(universe), Path(universe_file).name)
            raise RelcastDataError(text) from None
        overrides = [f"data.source={data}"] + ([f"data.universe={universe}"] if universe else [])
        title = f"Uploaded: {Path(data_file).name}" + (
            f" with universe {Path(universe_file).name}" if universe_file else ""
        )
    elif source == SOURCES[2]:
        stocks, days = int(stocks), int(days)
        panel, _ = relcast.synthetic_market(num_stocks=stocks, num_days=days, seed=0)
        overrides = [
            "data.source=synthetic",
            f"data.synthetic_stocks={stocks}",
            f"data.synthetic_days={days}",
        ]
        title = (
            f"Synthetic market: {stocks} stocks, {days} days, seed 0 (planted index betas, "
            "sectors, lead-lag, regimes)"
        )
    else:
        raise RelcastDataError(f"unknown data source {source!r}; choose one of {list(SOURCES)}")
    return overrides, f"{title}\n{describe_panel(panel)}"


def _settings_overrides(
    d_model,
    n_heads,
    stage1_epochs,
    lookback,
    horizons,
    models,
    feature_sets,
    stage3_epochs,
    extractor,
    stage2,
    regime,
    extra: str,
) -> list[str]:
    """Widget values -> ``key=value`` overrides; the free-text lines come last and win."""
    from relcast.config import RelcastConfigError

    if not models:
        raise RelcastConfigError("choose at least one Stage3 model (tft, lstm, gru, tcn)")
    if not feature_sets:
        raise RelcastConfigError("choose at least one Stage3 feature set (hybrid is the design)")
    out = [
        f"stage1.d_model={int(d_model)}",
        f"stage1.n_heads={int(n_heads)}",
        f"stage1.max_epochs={int(stage1_epochs)}",
        f"stage3.lookback={int(lookback)}",
        f"data.horizons={int(horizons)}",
        f"stage3.models=[{','.join(models)}]",
        f"stage3.feature_sets=[{','.join(feature_sets)}]",
        f"stage3.max_epochs={int(stage3_epochs)}",
        f"relationships.extractor={extractor}",
        f"stage2.enabled={'true' if stage2 else 'false'}",
        f"relationships.regime={'true' if regime else 'false'}",
    ]
    for line in (extra or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    # streamed progress needs the progress bar; the CPU is all the app assumes
    return [*out, "trainer.progress=true"]


def _prepare(session: dict, preset: str, overrides: list[str]) -> str:
    """Validate the config, create a fresh run folder and split the market into it."""
    from relcast.config import load_config
    from relcast.pipeline import Pipeline

    if not session.get("data"):
        raise _user_error("load a market in step 1 first")
    session["run"], session["done"] = None, ["data"]  # a failed apply leaves no stale run
    cfg = load_config(preset, None, [*session["data"], *overrides])
    session["runs"] += 1
    run = Path(session["dir"]) / f"run-{session['runs']:02d}"
    Pipeline(cfg, run).prepare()  # bad data or too few dates fail here, before training
    session["run"], session["done"] = str(run), ["data", "settings"]
    split = json.loads((run / "split.json").read_text())
    d = split["dates"]
    s3 = cfg.stage3
    return "\n".join(
        [
            f"Run folder: {run}",
            f"Split (embargo {split['embargo']} dates between spans): train {d['train'][0]} .. "
            f"{d['train'][1]} ({len(split['train'])} dates), valid {d['valid'][0]} .. "
            f"{d['valid'][1]} ({len(split['valid'])}), test {d['test'][0]} .. {d['test'][1]} "
            f"({len(split['test'])})",
            f"Stage1: d_model {cfg.stage1.d_model}, {cfg.stage1.n_heads} heads, "
            f"{cfg.stage1.n_layers} layers, up to {cfg.stage1.max_epochs} epochs; "
            f"Stage2 {'on' if cfg.stage2.enabled else 'off'}; relationships "
            f"{cfg.relationships.extractor} ({cfg.relationships.oof_folds} out-of-fold folds)",
            f"Stage3: {', '.join(s3.models)} on {', '.join(s3.feature_sets)} features, lookback "
            f"{s3.lookback}, horizons 1..{cfg.data.horizons}, up to {s3.max_epochs} epochs",
        ]
    )


def _user_error(message: str) -> Exception:
    from relcast.data.panel import RelcastDataError

    return RelcastDataError(message)


def _check_order(session: dict | None, step: str) -> None:
    need = REQUIRES[step]
    if not session or need not in session.get("done", []):
        raise _user_error(f"run step {STEP_NAMES[need]} before {STEP_NAMES[step]}")


def _render_log(path: Path, header: str, max_lines: int = 200) -> str:
    """The step's output as a user sees a terminal: progress-bar redraws (\\r) collapsed."""
    text = path.read_bytes().decode("utf-8", "replace") if path.exists() else ""
    lines = []
    for raw in _ANSI.sub("", text).split("\n"):
        shown = [part for part in raw.split("\r") if part.strip()]
        if shown and not any(n in shown[-1] for n in _NOISE):
            lines.append(shown[-1].rstrip())
    return "\n".join([header, *lines[-max_lines:]])


def _failure_message(path: Path, command: str) -> str:
    """The CLI's one-line ``error: ...`` if it wrote one, else the exception's last line."""
    text = _ANSI.sub("", path.read_text(errors="replace")) if path.exists() else ""
    lines = [ln.split("\r")[-1] for ln in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("error: "):
            return "\n".join([line.removeprefix("error: "), *lines[i + 1 :]]).strip()
    last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
    return f"relcast {command} failed: {last.strip()} (full log: {path})"


def _run_step(session: dict, command: str) -> Iterator[str]:
    """Run ``relcast <command> --run RUN`` in a subprocess; yield its log as it grows."""
    run = Path(session["run"])
    logs = run / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"app_{command}.log"
    header = f"$ relcast {command} --run {run}"
    # library deprecation warnings are noise to the user reading the log
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    with open(path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relcast.cli", command, "--run", str(run)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # own process group: cancel stops it as a whole
        )
    _RUNNING[session["dir"]] = proc
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            yield _render_log(path, header)
    finally:  # also reached when Gradio cancels the event: never leave training behind
        if _RUNNING.get(session["dir"]) is proc:  # (a later step may be registered by now)
            del _RUNNING[session["dir"]]
        _stop(proc)
    yield _render_log(path, header)
    if proc.returncode < 0:
        raise _StepCancelled(f"{command} was cancelled")
    if proc.returncode != 0:
        raise _user_error(_failure_message(path, command))


class _StepCancelled(RuntimeError):
    pass


def _step_summary(run: str, step: str) -> str:
    """What a finished step achieved, from run.json."""
    info = json.loads((Path(run) / "run.json").read_text())["steps"]
    if step == "stage1":
        s1, s2 = info.get("stage1", {}), info.get("stage2", {})
        text = (
            f"Stage1 trained: {s1.get('epochs', '?')} epochs, best validation rank IC "
            f"{s1.get('best_val_rank_ic', float('nan')):+.4f}, {s1.get('seconds', 0):.0f} s."
        )
        if s2.get("enabled") is False:
            return text + " Stage2 off."
        return text + (
            " Stage2 residual boost "
            + ("helped" if s2.get("helped") else "did not help")
            + " on validation."
        )
    if step == "extract":
        e = info.get("extract", {})
        return (
            f"{e.get('columns', '?')} relationship columns per (date, stock), "
            f"{e.get('folds', 0)} out-of-fold folds, {e.get('seconds', 0):.0f} s."
        )
    if step == "stage3":
        models = info.get("stage3", {}).get("models", {})
        return (
            " ".join(
                f"{name}: best val rank IC {m.get('best_val_rank_ic', float('nan')):+.4f}, "
                f"{m.get('num_inputs', '?')} inputs, {m.get('seconds_per_epoch', 0):.1f} s/epoch."
                for name, m in models.items()
            )
            or "no Stage3 model trained"
        )
    return f"{step} done."


def _progress_md(session: dict | None, running: str | None = None) -> str:
    done = set(session.get("done", [])) if session else set()
    parts = []
    for key, label in STEP_NAMES.items():
        if key in done:
            parts.append(f"**✓ {label}**")
        elif key == running:
            parts.append(f"*▶ {label} (running)*")
        else:
            parts.append(f"○ {label}")
    return " → ".join(parts)


# ============================================================================ the app
def _friendly(fn: Callable) -> Callable:
    """Show the errors of a handler as Gradio messages with relcast's text, no traceback."""
    import gradio as gr

    from relcast.config import RelcastConfigError
    from relcast.data.panel import RelcastDataError
    from relcast.persist import RunFolderError

    expected = (RelcastDataError, RelcastConfigError, RunFolderError, FileNotFoundError)

    def convert(exc: Exception) -> Exception:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, _StepCancelled):
            return gr.Error(str(exc), title="Cancelled", print_exception=False)
        if isinstance(exc, expected):
            return gr.Error(str(exc), print_exception=False)
        log.exception("relcast app: unexpected error in %s", fn.__name__)
        return gr.Error(f"{type(exc).__name__}: {exc}", print_exception=False)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every error becomes a message
                raise convert(exc) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise convert(exc) from None

    return wrapper


def build_app(runs_dir: str | Path | None = None):
    """The workflow as a ``gr.Blocks`` app; session folders go under ``runs_dir`` (temp)."""
    import gradio as gr

    from relcast.config import load_config

    small = load_config("small")

    def new_state() -> dict:
        return _new_session(runs_dir)

    with gr.Blocks(title="relcast") as demo:
        state = gr.State(None, delete_callback=_end_session)
        gr.Markdown(
            "# relcast: three-stage hybrid stock forecasting\n"
            "Stage1 cross-sectional Transformer (stocks attend to each other) → Stage2 "
            "residual boost → relationship features → Stage3 temporal models (TFT, LSTM, GRU, "
            "TCN). Go through the tabs in order."
        )
        progress = gr.Markdown(_progress_md(None), elem_id="progress")

        # ------------------------------------------------------------ 1 data
        with gr.Tab("1 Data", id="data"):
            source = gr.Radio(
                list(SOURCES), value=SOURCES[0], label="Market data", elem_id="source"
            )
            with gr.Row(visible=False) as upload_row:
                data_file = gr.File(
                    label="Bars: long CSV/Parquet (date, symbol, open, high, low, close, volume)",
                    file_types=[".csv", ".parquet", ".pq", ".gz"],
                    elem_id="data-file",
                )
                universe_file = gr.File(
                    label="Universe (optional): symbol, name, sector, market, is_index",
                    file_types=[".csv", ".yaml", ".yml", ".json"],
                    elem_id="universe-file",
                )
            with gr.Row(visible=False) as synth_row:
                stocks = gr.Slider(
                    3, 100, value=20, step=1, label="Stocks", elem_id="synthetic-stocks"
                )
                days = gr.Slider(
                    150, 3000, value=800, step=10, label="Days", elem_id="synthetic-days"
                )
            load_btn = gr.Button("Load data", variant="primary", elem_id="load-data")
            summary = gr.Textbox(
                label="What was read",
                lines=10,
                max_lines=24,
                interactive=False,
                elem_id="data-summary",
            )

        # ------------------------------------------------------------ 2 settings
        with gr.Tab("2 Settings", id="settings"):
            with gr.Row():
                preset = gr.Dropdown(
                    ["small", "medium", "large"],
                    value="small",
                    label="Preset (SPEC.md)",
                    elem_id="preset",
                )
                extractor = gr.Dropdown(
                    ["v1", "v2", "v3", "v1+v2"],
                    value=small.relationships.extractor,
                    label="Relationship extractor",
                    elem_id="extractor",
                )
                stage2 = gr.Checkbox(
                    value=small.stage2.enabled, label="Stage2 residual boost", elem_id="stage2"
                )
                regime = gr.Checkbox(
                    value=small.relationships.regime,
                    label="Regime gating (needs extractor v1, v3 or v1+v2)",
                    elem_id="regime",
                )
            with gr.Row():
                d_model = gr.Number(
                    small.stage1.d_model,
                    precision=0,
                    minimum=8,
                    label="Stage1 d_model",
                    elem_id="d-model",
                )
                n_heads = gr.Number(
                    small.stage1.n_heads,
                    precision=0,
                    minimum=1,
                    label="Stage1 heads",
                    elem_id="n-heads",
                )
                stage1_epochs = gr.Number(
                    small.stage1.max_epochs,
                    precision=0,
                    minimum=1,
                    label="Stage1 max epochs",
                    elem_id="stage1-epochs",
                )
                horizons = gr.Number(
                    small.data.horizons,
                    precision=0,
                    minimum=1,
                    maximum=60,
                    label="Horizons (days)",
                    elem_id="horizons",
                )
            with gr.Row():
                models = gr.CheckboxGroup(
                    ["tft", "lstm", "gru", "tcn"],
                    value=list(small.stage3.models),
                    label="Stage3 models",
                    elem_id="models",
                )
                feature_sets = gr.CheckboxGroup(
                    ["hybrid", "own", "rawconcat"],
                    value=list(small.stage3.feature_sets),
                    label="Stage3 feature sets (hybrid = own + relationship + calendar)",
                    elem_id="feature-sets",
                )
                lookback = gr.Number(
                    small.stage3.lookback,
                    precision=0,
                    minimum=2,
                    label="Stage3 lookback",
                    elem_id="lookback",
                )
                stage3_epochs = gr.Number(
                    small.stage3.max_epochs,
                    precision=0,
                    minimum=1,
                    label="Stage3 max epochs",
                    elem_id="stage3-epochs",
                )
            extra = gr.Textbox(
                label="More settings: one key=value per line (e.g. "
                "stage3.hidden_size=32); these win over the fields above",
                lines=3,
                elem_id="extra",
            )
            apply_btn = gr.Button(
                "Apply settings and prepare the run", variant="primary", elem_id="apply"
            )
            run_info = gr.Textbox(label="Run", lines=5, interactive=False, elem_id="run-info")

        # ------------------------------------------------------------ 3-5 training steps
        step_ui = {}
        for key, title, note, label in (
            (
                "stage1",
                "3 Stage1",
                "Train the cross-sectional Transformer on the training span (early stopping on "
                "validation rank IC), then the Stage2 residual booster if enabled.",
                "Train Stage1 (+ Stage2)",
            ),
            (
                "extract",
                "4 Relationships",
                "Extract relationship features for every (date, stock) once and store them; on "
                "the training span out-of-fold, so Stage3 never sees Stage1 outputs fitted on "
                "the same labels.",
                "Extract relationship features",
            ),
            (
                "stage3",
                "5 Stage3",
                "Train the chosen temporal models on own + relationship + calendar features "
                "(and the comparison feature sets).",
                "Train Stage3",
            ),
        ):
            with gr.Tab(title, id=key):
                gr.Markdown(note)
                with gr.Row():
                    start = gr.Button(label, variant="primary", elem_id=f"{key}-run")
                    stop = gr.Button("Cancel", variant="stop", elem_id=f"{key}-cancel")
                status = gr.Markdown(elem_id=f"{key}-status")
                logbox = gr.Textbox(
                    label="Log",
                    lines=14,
                    max_lines=14,
                    autoscroll=True,
                    interactive=False,
                    elem_classes=["relcast-log"],
                    elem_id=f"{key}-log",
                )
            step_ui[key] = (start, stop, status, logbox)

        # ------------------------------------------------------------ 6 evaluate
        with gr.Tab("6 Evaluate", id="evaluate"):
            gr.Markdown(
                "Score every model and baseline on the test span (same split, same "
                "labels), then look at what Stage1 learned and how Stage3 forecasts."
            )
            with gr.Row():
                eval_btn = gr.Button(
                    "Evaluate on the test span", variant="primary", elem_id="evaluate-run"
                )
                eval_stop = gr.Button("Cancel", variant="stop", elem_id="evaluate-cancel")
            eval_status = gr.Markdown(elem_id="evaluate-status")
            eval_log = gr.Textbox(
                label="Log",
                lines=6,
                max_lines=6,
                autoscroll=True,
                interactive=False,
                elem_classes=["relcast-log"],
                elem_id="evaluate-log",
            )
            table = gr.Dataframe(
                label="Test metrics (horizon 1; control_* = shuffled labels, must be near zero)",
                interactive=False,
                wrap=True,
                elem_id="metrics-table",
            )
            with gr.Row():
                target = gr.Dropdown(
                    [], label="Target stock (attention)", elem_id="target", scale=1
                )
                heatmap = gr.Image(
                    label="Stage1 attention: which stocks influence the target",
                    type="filepath",
                    interactive=False,
                    show_label=False,  # each plot has its own title; a label would cover it
                    elem_id="attention-plot",
                    scale=4,
                )
            with gr.Row():
                imp_model = gr.Dropdown(
                    [], label="TFT model (variable importance)", elem_id="importance-model", scale=1
                )
                importance = gr.Image(
                    label="Variable importance (TFT only)",
                    type="filepath",
                    interactive=False,
                    show_label=False,  # each plot has its own title; a label would cover it
                    elem_id="importance-plot",
                    scale=4,
                )
            with gr.Row():
                with gr.Column(scale=1):
                    pred_model = gr.Dropdown([], label="Model", elem_id="pred-model")
                    pred_stock = gr.Dropdown([], label="Stock", elem_id="pred-stock")
                bands = gr.Image(
                    label="Predictions with intervals",
                    type="filepath",
                    interactive=False,
                    show_label=False,  # each plot has its own title; a label would cover it
                    elem_id="prediction-plot",
                    scale=4,
                )
            with gr.Row():
                strategy = gr.Radio(
                    ["topk", "long_short"],
                    value="topk",
                    label="Portfolio",
                    elem_id="strategy",
                    scale=1,
                )
                curves = gr.Image(
                    label="Backtest (test span, after costs)",
                    type="filepath",
                    interactive=False,
                    show_label=False,  # each plot has its own title; a label would cover it
                    elem_id="backtest-plot",
                    scale=4,
                )
            report_file = gr.File(
                label="Full HTML report", interactive=False, elem_id="report-file"
            )

        # ------------------------------------------------------------ handlers
        def plots_dir(session: dict) -> Path:
            return Path(session["run"]) / "app_plots"

        def on_source(choice):
            return (
                gr.update(visible=choice == SOURCES[1]),
                gr.update(visible=choice == SOURCES[2]),
            )

        source.change(on_source, source, [upload_row, synth_row])

        @_friendly
        def on_load(session, choice, data_path, universe_path, n_stocks, n_days):
            session = session or new_state()
            overrides, text = _load_data(
                session, choice, data_path, universe_path, n_stocks, n_days
            )
            session.update(data=overrides, summary=text, run=None, done=["data"])
            return session, text, _progress_md(session)

        load_btn.click(
            on_load,
            [state, source, data_file, universe_file, stocks, days],
            [state, summary, progress],
        )

        def on_preset(name):
            cfg = load_config(name)
            return (
                cfg.stage1.d_model,
                cfg.stage1.n_heads,
                cfg.stage1.max_epochs,
                cfg.data.horizons,
                list(cfg.stage3.models),
                list(cfg.stage3.feature_sets),
                cfg.stage3.lookback,
                cfg.stage3.max_epochs,
                cfg.relationships.extractor,
                cfg.stage2.enabled,
                cfg.relationships.regime,
            )

        # the settings widgets, in the order on_preset returns them and on_apply reads them
        settings = [
            d_model,
            n_heads,
            stage1_epochs,
            horizons,
            models,
            feature_sets,
            lookback,
            stage3_epochs,
            extractor,
            stage2,
            regime,
        ]
        preset.change(on_preset, preset, settings)

        @_friendly
        def on_apply(session, preset_name, dm, nh, e1, hz, ms, fs, lb, e3, ex, s2, rg, more):
            overrides = _settings_overrides(dm, nh, e1, lb, hz, ms, fs, e3, ex, s2, rg, more)
            if session is None:
                raise _user_error("load a market in step 1 first")
            text = _prepare(session, preset_name, overrides)
            return session, text, _progress_md(session)

        apply_btn.click(
            on_apply,
            [state, preset, *settings, extra],
            [state, run_info, progress],
        )

        def make_step(step: str, status, logbox):
            @_friendly
            def run_step(session):
                _check_order(session, step)
                order = list(STEP_NAMES)
                # redoing a step makes every later one stale
                session["done"] = [s for s in session["done"] if order.index(s) < order.index(step)]
                if step == "stage3":  # Stage3 skips models already saved: retrain them all
                    shutil.rmtree(Path(session["run"]) / "stage3", ignore_errors=True)
                yield {
                    status: f"Running {STEP_NAMES[step]} ...",
                    progress: _progress_md(session, running=step),
                    state: session,
                }
                for text in _run_step(session, step):
                    yield {logbox: text}
                session["done"].append(step)
                yield {
                    status: "✓ " + _step_summary(session["run"], step),
                    progress: _progress_md(session),
                    state: session,
                }

            return run_step

        events = []
        for key, (start, _stop, status, logbox) in step_ui.items():
            events.append(
                start.click(
                    make_step(key, status, logbox), state, [state, status, progress, logbox]
                )
            )

        look_outputs = [
            table,
            target,
            heatmap,
            imp_model,
            importance,
            pred_model,
            pred_stock,
            bands,
            curves,
            report_file,
        ]

        def look(session: dict) -> dict:
            """Fill every output of the Evaluate tab from the run folder."""
            from relcast.evaluation.report import build_report

            run = Path(session["run"])
            out = plots_dir(session)
            metrics = json.loads((run / "metrics.json").read_text())
            report = build_report(run)
            predictions = pd.read_parquet(run / "predictions.parquet")
            stocks_ = sorted(predictions["symbol"].astype(str).unique())
            _, att_symbols, _ = _read_attention(run)
            targets = [s for s in att_symbols if s in set(stocks_)] or list(att_symbols)
            imp_path = run / "importance.json"
            imp_models = list(json.loads(imp_path.read_text())) if imp_path.exists() else []
            pmodels = _prediction_models(predictions)
            first = targets[0]
            return {
                table: metrics_frame(metrics),
                target: gr.update(choices=targets, value=first),
                heatmap: str(attention_plot(run, first, out)),
                imp_model: gr.update(
                    choices=imp_models, value=imp_models[0] if imp_models else None
                ),
                importance: (str(importance_plot(run, imp_models[0], out)) if imp_models else None),
                pred_model: gr.update(choices=pmodels, value=pmodels[0]),
                pred_stock: gr.update(choices=stocks_, value=first),
                bands: str(prediction_plot(run, pmodels[0], first, out)),
                curves: str(backtest_plot(run, "topk", out)),
                report_file: str(report),
            }

        @_friendly
        def on_evaluate(session):
            _check_order(session, "evaluate")
            session["done"] = [s for s in session["done"] if s != "evaluate"]
            yield {
                eval_status: "Running evaluation ...",
                progress: _progress_md(session, running="evaluate"),
            }
            for text in _run_step(session, "evaluate"):
                yield {eval_log: text}
            yield {eval_status: "Drawing the plots and the report ..."}
            outputs = look(session)
            session["done"].append("evaluate")
            n = len(outputs[table])
            yield {
                **outputs,
                state: session,
                progress: _progress_md(session),
                eval_status: f"✓ {n} models and baselines scored on the test span.",
            }

        events.append(
            eval_btn.click(
                on_evaluate, state, [state, eval_status, progress, eval_log, *look_outputs]
            )
        )

        def make_cancel(status):
            def on_cancel(session):
                if not (session and _kill(session["dir"])):
                    return _progress_md(session), gr.skip()
                gr.Warning("Step cancelled: its subprocess was stopped.")
                return _progress_md(session), "Cancelled: run the step again to start over."

            return on_cancel

        for _, stop, status, _ in step_ui.values():
            stop.click(make_cancel(status), state, [progress, status], cancels=events)
        eval_stop.click(make_cancel(eval_status), state, [progress, eval_status], cancels=events)

        @_friendly
        def on_target(session, name):
            if not session or not name:
                return None
            return str(attention_plot(session["run"], name, plots_dir(session)))

        @_friendly
        def on_importance(session, name):
            if not session or not name:
                return None
            path = importance_plot(session["run"], name, plots_dir(session))
            return str(path) if path else None

        @_friendly
        def on_prediction(session, model, symbol):
            if not session or not model or not symbol:
                return None
            return str(prediction_plot(session["run"], model, symbol, plots_dir(session)))

        @_friendly
        def on_strategy(session, name):
            if not session or "evaluate" not in session.get("done", []):
                return None
            return str(backtest_plot(session["run"], name, plots_dir(session)))

        # .input, not .change: only the user's choice redraws (the evaluate step draws itself)
        target.input(on_target, [state, target], heatmap)
        imp_model.input(on_importance, [state, imp_model], importance)
        pred_model.input(on_prediction, [state, pred_model, pred_stock], bands)
        pred_stock.input(on_prediction, [state, pred_model, pred_stock], bands)
        strategy.input(on_strategy, [state, strategy], curves)

    return demo


def launch(
    port: int = 7860,
    host: str = "127.0.0.1",
    runs_dir: str | Path | None = None,
    block: bool = True,
):
    """Serve the app on ``host:port``. ``block=False`` returns the running ``gr.Blocks``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    base = _runs_base(runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    demo = build_app(base)
    demo.queue()
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        ssr_mode=False,
        css=CSS,
        allowed_paths=[str(base)],  # the plots and report.html of the session folders
        quiet=not block,
        footer_links=[],
    )
    return demo
