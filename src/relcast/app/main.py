"""The app itself: the tabs in one ``gr.Blocks``, and :func:`launch` to serve it."""

from __future__ import annotations

import os
from pathlib import Path

from relcast.app import data_tab, evaluate_tab, settings_tab, training_tab
from relcast.app.session import end_session, progress_md, runs_base
from relcast.app.ui import Shared, wire_cancels

CSS = """
.relcast-log textarea {font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px;}
"""


def build_app(runs_dir: str | Path | None = None):
    """The workflow as a ``gr.Blocks`` app; session folders go under ``runs_dir`` (temp)."""
    import gradio as gr

    with gr.Blocks(title="relcast") as demo:
        state = gr.State(None, delete_callback=end_session)
        gr.Markdown(
            "# relcast: three-stage hybrid stock forecasting\n"
            "Stage1 cross-sectional Transformer (stocks attend to each other) → Stage2 "
            "residual boost → relationship features → Stage3 temporal models (TFT, LSTM, GRU, "
            "TCN). Go through the tabs in order."
        )
        progress = gr.Markdown(progress_md(None), elem_id="progress")
        shared = Shared(state=state, progress=progress, runs_dir=runs_dir)
        data_tab.build(shared)
        settings_tab.build(shared)
        training_tab.build(shared)
        evaluate_tab.build(shared)
        wire_cancels(shared)  # after every step's event exists: Cancel cancels them all
    return demo


def launch(
    port: int = 7860,
    host: str = "127.0.0.1",
    runs_dir: str | Path | None = None,
    block: bool = True,
):
    """Serve the app on ``host:port``. ``block=False`` returns the running ``gr.Blocks``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    base = runs_base(runs_dir)
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
