"""Tabs 3-5, the training steps: Stage1 (+ Stage2), relationship features, Stage3.

Each runs ``relcast <step>`` in a subprocess (:func:`relcast.app.session.run_step`), streams
its log, and can be cancelled. Redoing a step makes the later ones stale.
"""

from __future__ import annotations

from relcast.app.session import STEP_NAMES, check_order, progress_md, run_step, step_summary
from relcast.app.ui import Shared, friendly, log_box, step_buttons
from relcast.runfolder import RunFolder

# (step, tab title, what it does, button label)
TRAINING_STEPS = (
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
)


def forget_from(session: dict, step: str) -> None:
    """Redoing ``step`` makes it and every later step stale: they leave ``done``."""
    order = list(STEP_NAMES)
    session["done"] = [s for s in session["done"] if order.index(s) < order.index(step)]


def build(shared: Shared) -> None:
    """One tab per training step (inside the app's ``gr.Blocks``)."""
    import gradio as gr

    for key, title, note, label in TRAINING_STEPS:
        with gr.Tab(title, id=key):
            gr.Markdown(note)
            start, stop = step_buttons(key, label)
            status = gr.Markdown(elem_id=f"{key}-status")
            logbox = log_box(f"{key}-log", lines=14)
        shared.events.append(
            start.click(
                _runner(shared, key, status, logbox),
                shared.state,
                [shared.state, status, shared.progress, logbox],
            )
        )
        shared.cancels.append((stop, status))


def _runner(shared: Shared, step: str, status, logbox):
    state, progress = shared.state, shared.progress

    @friendly
    def on_run(session):
        check_order(session, step)
        forget_from(session, step)
        if step == "stage3":  # Stage3 skips models already saved: retrain them all
            RunFolder(session["run"]).drop_stage3()
        yield {
            status: f"Running {STEP_NAMES[step]} ...",
            progress: progress_md(session, running=step),
            state: session,
        }
        for text in run_step(session, step):
            yield {logbox: text}
        session["done"].append(step)
        yield {
            status: "✓ " + step_summary(session["run"], step),
            progress: progress_md(session),
            state: session,
        }

    return on_run
