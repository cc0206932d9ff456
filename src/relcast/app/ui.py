"""Gradio pieces every tab uses: the shared state, error messages, log boxes, plot images.

Gradio is imported inside the functions, so this module imports without the ``app`` extra.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relcast.app.session import StepCancelled, kill, new_session, progress_md

log = logging.getLogger("relcast.app")


@dataclass
class Shared:
    """Components and settings the tabs share.

    Attributes:
        state: the ``gr.State`` holding the session dict (:mod:`relcast.app.session`).
        progress: the step bar above the tabs.
        runs_dir: where session folders go.
        events: every step's click event, so that Cancel can cancel them all.
        cancels: each tab's (Cancel button, status) pair, wired once all events exist.
    """

    state: Any
    progress: Any
    runs_dir: str | Path | None
    events: list = field(default_factory=list)
    cancels: list = field(default_factory=list)

    def new_session(self) -> dict:
        return new_session(self.runs_dir)


def plots_dir(session: dict) -> Path:
    """Where the app draws its plots: ``<run>/app_plots``."""
    return Path(session["run"]) / "app_plots"


def friendly(fn: Callable) -> Callable:
    """Show the errors of a handler as Gradio messages with relcast's text, no traceback."""
    import gradio as gr

    from relcast.config import RelcastConfigError
    from relcast.data.panel import RelcastDataError
    from relcast.runfolder import RunFolderError

    expected = (RelcastDataError, RelcastConfigError, RunFolderError, FileNotFoundError)

    def convert(exc: Exception) -> Exception:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, StepCancelled):
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


def log_box(elem_id: str, lines: int):
    """A read-only, monospaced, auto-scrolling box for a step's log."""
    import gradio as gr

    return gr.Textbox(
        label="Log",
        lines=lines,
        max_lines=lines,
        autoscroll=True,
        interactive=False,
        elem_classes=["relcast-log"],
        elem_id=elem_id,
    )


def plot_image(label: str, elem_id: str):
    """An image slot for a PNG plot, four times as wide as the controls beside it."""
    import gradio as gr

    return gr.Image(
        label=label,
        type="filepath",
        interactive=False,
        show_label=False,  # each plot has its own title; a label would cover it
        elem_id=elem_id,
        scale=4,
    )


def step_buttons(key: str, label: str):
    """The (run, cancel) buttons of a step."""
    import gradio as gr

    with gr.Row():
        start = gr.Button(label, variant="primary", elem_id=f"{key}-run")
        stop = gr.Button("Cancel", variant="stop", elem_id=f"{key}-cancel")
    return start, stop


def wire_cancels(shared: Shared) -> None:
    """Every Cancel button stops the session's subprocess and cancels every step event."""
    import gradio as gr

    def make_cancel(status):
        def on_cancel(session):
            if not (session and kill(session["dir"])):
                return progress_md(session), gr.skip()
            gr.Warning("Step cancelled: its subprocess was stopped.")
            return progress_md(session), "Cancelled: run the step again to start over."

        return on_cancel

    for stop, status in shared.cancels:
        stop.click(
            make_cancel(status), shared.state, [shared.progress, status], cancels=shared.events
        )
