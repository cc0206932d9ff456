"""Tab 6, Evaluate: score every model on the test span, then the metrics table, Stage1
attention heatmap for a chosen stock, TFT variable importance, predictions with intervals,
backtest curves and the HTML report."""

from __future__ import annotations

from pathlib import Path

from relcast.app import run_plots
from relcast.app.session import check_order, progress_md, run_step
from relcast.app.ui import Shared, friendly, log_box, plot_image, plots_dir, step_buttons
from relcast.runfolder import RunFolder


def evaluate_choices(run_dir: str | Path) -> dict[str, list[str]]:
    """What the tab's dropdowns offer for an evaluated run.

    ``stocks``: predicted symbols; ``targets``: those with Stage1 attention (all attention
    symbols if none is predicted); ``importance``: TFT models; ``models``: models for the
    prediction plot, those with intervals first. predictions.parquet is not read whole: its
    models and symbols come from :func:`run_plots.prediction_file`.
    """
    run = Path(run_dir)
    predictions = run_plots.prediction_file(run)
    stocks = sorted(predictions.symbols)
    _, att_symbols, _ = run_plots.read_attention(run)
    targets = [s for s in att_symbols if s in set(stocks)] or list(att_symbols)
    return {
        "stocks": stocks,
        "targets": targets,
        "importance": run_plots.importance_models(run),
        "models": run_plots.prediction_models(predictions),
    }


def evaluate_outputs(run_dir: str | Path, out_dir: str | Path) -> dict:
    """Everything the tab shows once a run is evaluated (no Gradio needed).

    Writes the HTML report and the plots (under ``out_dir``) and returns ``table`` (the
    metrics table), ``choices`` (:func:`evaluate_choices`), the first selections ``target``
    (also the stock of the prediction plot), ``importance_model`` (None without a TFT) and
    ``pred_model``, and the paths ``heatmap``, ``importance`` (None without a TFT),
    ``bands``, ``curves`` (top-k portfolio) and ``report``.
    """
    from relcast.evaluation.report import build_report

    run = Path(run_dir)
    folder = RunFolder(run)
    with folder.lock("report"):  # one writer per run folder, as for the CLI's report
        report = build_report(run)
    c = evaluate_choices(run)
    first, imp, pm = c["targets"][0], c["importance"], c["models"]
    return {
        "table": run_plots.metrics_frame(folder.load_metrics()),
        "choices": c,
        "target": first,
        "heatmap": run_plots.attention_plot(run, first, out_dir),
        "importance_model": imp[0] if imp else None,
        "importance": run_plots.importance_plot(run, imp[0], out_dir) if imp else None,
        "pred_model": pm[0],
        "bands": run_plots.prediction_plot(run, pm[0], first, out_dir),
        "curves": run_plots.backtest_plot(run, "topk", out_dir),
        "report": report,
    }


def build(shared: Shared) -> None:
    """The tab's widgets and handlers (inside the app's ``gr.Blocks``)."""
    import gradio as gr

    state, progress = shared.state, shared.progress
    with gr.Tab("6 Evaluate", id="evaluate"):
        gr.Markdown(
            "Score every model and baseline on the test span (same split, same "
            "labels), then look at what Stage1 learned and how Stage3 forecasts."
        )
        eval_btn, eval_stop = step_buttons("evaluate", "Evaluate on the test span")
        eval_status = gr.Markdown(elem_id="evaluate-status")
        eval_log = log_box("evaluate-log", lines=6)
        table = gr.Dataframe(
            label="Test metrics (horizon 1; control_* = shuffled labels, must be near zero)",
            interactive=False,
            wrap=True,
            elem_id="metrics-table",
        )
        with gr.Row():
            target = gr.Dropdown([], label="Target stock (attention)", elem_id="target", scale=1)
            heatmap = plot_image(
                "Stage1 attention: which stocks influence the target", "attention-plot"
            )
        with gr.Row():
            imp_model = gr.Dropdown(
                [], label="TFT model (variable importance)", elem_id="importance-model", scale=1
            )
            importance = plot_image("Variable importance (TFT only)", "importance-plot")
        with gr.Row():
            with gr.Column(scale=1):
                pred_model = gr.Dropdown([], label="Model", elem_id="pred-model")
                pred_stock = gr.Dropdown([], label="Stock", elem_id="pred-stock")
            bands = plot_image("Predictions with intervals", "prediction-plot")
        with gr.Row():
            strategy = gr.Radio(
                ["topk", "long_short"], value="topk", label="Portfolio", elem_id="strategy", scale=1
            )
            curves = plot_image("Backtest (test span, after costs)", "backtest-plot")
        report_file = gr.File(label="Full HTML report", interactive=False, elem_id="report-file")

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
        """Fill every output of the tab from the run folder."""
        o = evaluate_outputs(session["run"], plots_dir(session))
        c = o["choices"]
        return {
            table: o["table"],
            target: gr.update(choices=c["targets"], value=o["target"]),
            heatmap: str(o["heatmap"]),
            imp_model: gr.update(choices=c["importance"], value=o["importance_model"]),
            importance: str(o["importance"]) if o["importance"] else None,
            pred_model: gr.update(choices=c["models"], value=o["pred_model"]),
            pred_stock: gr.update(choices=c["stocks"], value=o["target"]),
            bands: str(o["bands"]),
            curves: str(o["curves"]),
            report_file: str(o["report"]),
        }

    @friendly
    def on_evaluate(session):
        check_order(session, "evaluate")
        session["done"] = [s for s in session["done"] if s != "evaluate"]
        yield {
            eval_status: "Running evaluation ...",
            progress: progress_md(session, running="evaluate"),
        }
        for text in run_step(session, "evaluate"):
            yield {eval_log: text}
        yield {eval_status: "Drawing the plots and the report ..."}
        outputs = look(session)
        session["done"].append("evaluate")
        n = len(outputs[table])
        yield {
            **outputs,
            state: session,
            progress: progress_md(session),
            eval_status: f"✓ {n} models and baselines scored on the test span.",
        }

    shared.events.append(
        eval_btn.click(on_evaluate, state, [state, eval_status, progress, eval_log, *look_outputs])
    )
    shared.cancels.append((eval_stop, eval_status))

    @friendly
    def on_target(session, name):
        if not session or not name:
            return None
        return str(run_plots.attention_plot(session["run"], name, plots_dir(session)))

    @friendly
    def on_importance(session, name):
        if not session or not name:
            return None
        path = run_plots.importance_plot(session["run"], name, plots_dir(session))
        return str(path) if path else None

    @friendly
    def on_prediction(session, model, symbol):
        if not session or not model or not symbol:
            return None
        return str(run_plots.prediction_plot(session["run"], model, symbol, plots_dir(session)))

    @friendly
    def on_strategy(session, name):
        if not session or "evaluate" not in session.get("done", []):
            return None
        return str(run_plots.backtest_plot(session["run"], name, plots_dir(session)))

    # .input, not .change: only the user's choice redraws (the evaluate step draws itself)
    target.input(on_target, [state, target], heatmap)
    imp_model.input(on_importance, [state, imp_model], importance)
    pred_model.input(on_prediction, [state, pred_model, pred_stock], bands)
    pred_stock.input(on_prediction, [state, pred_model, pred_stock], bands)
    strategy.input(on_strategy, [state, strategy], curves)
