"""One browser session's state and the steps it runs as subprocesses (no Gradio needed).

A session is a plain dict kept in a ``gr.State``::

    {"dir": its own folder, "data": config overrides naming the market, "summary": text,
     "run": the current run folder or None, "done": steps finished, "runs": runs made}

Each training step runs ``relcast <step> --run RUN`` in its own process group, so that
cancelling (or the session ending) stops it and everything it started. Redoing a step makes
the later ones stale: they must be run again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from relcast.data.panel import RelcastDataError
from relcast.runfolder import RunFolder

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
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NOISE = ("litlogger", "LitLogger")  # Lightning's advertisement line
RUNNING: dict[str, subprocess.Popen] = {}  # session folder -> its running step


class StepCancelled(RuntimeError):
    """The user cancelled the running step (its subprocess was stopped)."""


def user_error(message: str) -> Exception:
    """An error the user can fix, shown as a message rather than a traceback."""
    return RelcastDataError(message)


# ---------------------------------------------------------------------------- lifetime
def runs_base(runs_dir: str | Path | None) -> Path:
    """Where session folders go: ``runs_dir``, else ``<system temp>/relcast-app``."""
    return Path(runs_dir) if runs_dir is not None else Path(tempfile.gettempdir()) / "relcast-app"


def new_session(runs_dir: str | Path | None) -> dict:
    """A fresh session with its own folder under :func:`runs_base`."""
    base = runs_base(runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="relcast-app-", dir=base)
    return {"dir": folder, "data": None, "summary": "", "run": None, "done": [], "runs": 0}


def end_session(session: dict | None) -> None:
    """Called by Gradio when a session ends: stop its step, remove its folder."""
    if not session:
        return
    kill(session["dir"])
    shutil.rmtree(session["dir"], ignore_errors=True)


def kill(key: str) -> bool:
    """Stop the step running for session folder ``key``; False if none was running."""
    proc = RUNNING.pop(key, None)
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


# ---------------------------------------------------------------------------- order
def check_order(session: dict | None, step: str) -> None:
    """Raise a user error unless the step ``step`` needs has been done."""
    need = REQUIRES[step]
    if not session or need not in session.get("done", []):
        raise user_error(f"run step {STEP_NAMES[need]} before {STEP_NAMES[step]}")


def progress_md(session: dict | None, running: str | None = None) -> str:
    """The step bar: done steps ticked, the running one marked, the rest open."""
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


# ---------------------------------------------------------------------------- steps
def render_log(path: Path, header: str, max_lines: int = 200) -> str:
    """The step's output as a user sees a terminal: progress-bar redraws (\\r) collapsed."""
    text = path.read_bytes().decode("utf-8", "replace") if path.exists() else ""
    lines = []
    for raw in _ANSI.sub("", text).split("\n"):
        shown = [part for part in raw.split("\r") if part.strip()]
        if shown and not any(n in shown[-1] for n in _NOISE):
            lines.append(shown[-1].rstrip())
    return "\n".join([header, *lines[-max_lines:]])


def failure_message(path: Path, command: str) -> str:
    """The CLI's one-line ``error: ...`` if it wrote one, else the exception's last line."""
    text = _ANSI.sub("", path.read_text(errors="replace")) if path.exists() else ""
    lines = [ln.split("\r")[-1] for ln in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("error: "):
            return "\n".join([line.removeprefix("error: "), *lines[i + 1 :]]).strip()
    last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
    return f"relcast {command} failed: {last.strip()} (full log: {path})"


def run_step(session: dict, command: str) -> Iterator[str]:
    """Run ``relcast <command> --run RUN`` in a subprocess; yield its log as it grows."""
    run = Path(session["run"])
    logs = run / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"app_{command}.log"
    header = f"$ relcast {command} --run {run}"
    # library deprecation warnings are noise to the user reading the log; the log is a file,
    # but the app shows it as a terminal would (render_log), so it keeps Lightning's live bar
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    env["RELCAST_PROGRESS"] = "bar"
    with open(path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relcast.cli", command, "--run", str(run)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # own process group: cancel stops it as a whole
        )
    RUNNING[session["dir"]] = proc
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            yield render_log(path, header)
    finally:  # also reached when Gradio cancels the event: never leave training behind
        if RUNNING.get(session["dir"]) is proc:  # (a later step may be registered by now)
            del RUNNING[session["dir"]]
        _stop(proc)
    yield render_log(path, header)
    if proc.returncode < 0:
        raise StepCancelled(f"{command} was cancelled")
    if proc.returncode != 0:
        raise user_error(failure_message(path, command))


def step_summary(run: str | Path, step: str) -> str:
    """What a finished step achieved, from run.json."""
    info = RunFolder(run).run_info()["steps"]
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
