"""The ``relcast`` command line. Heavy imports (torch, Lightning) happen inside commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="relcast",
    help="Three-stage hybrid stock forecasting: Stage1 cross-sectional Transformer -> "
    "Stage2 residual boost -> Stage3 temporal models (TFT/LSTM/GRU/TCN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RunDir = Annotated[Path, typer.Option("--run", "--out", help="run folder")]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config key, e.g. --set stage1.d_model=128 (repeatable)"),
]


_DEBUG = {"on": bool(os.environ.get("RELCAST_DEBUG"))}


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the full traceback of an error")
    ] = False,
) -> None:
    """Options for every command (RELCAST_DEBUG=1 works too)."""
    _DEBUG["on"] = debug or bool(os.environ.get("RELCAST_DEBUG"))


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def user_error_message(exc: BaseException) -> str | None:
    """The message of an error the user caused (bad data, config, files), else ``None``.

    relcast's own errors name the file or key already; the validation errors of the
    libraries a user's files reach (YAML, JSON, safetensors, Arrow, Lightning's trainer
    settings) get a word on what failed. Libraries not imported yet cannot have raised.
    """
    from relcast.config import RelcastConfigError
    from relcast.data.panel import RelcastDataError
    from relcast.runfolder import RunFolderError

    ours = (RelcastConfigError, RelcastDataError, RunFolderError)
    files = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
    if isinstance(exc, ours + files):
        return str(exc)
    mods = sys.modules
    kinds: list[tuple[type, str]] = []
    if "pydantic" in mods:
        kinds.append((mods["pydantic"].ValidationError, "invalid settings"))
    if "yaml" in mods:
        kinds.append((mods["yaml"].YAMLError, "not valid YAML"))
    kinds.append((__import__("json").JSONDecodeError, "not valid JSON"))
    if "safetensors" in mods:
        kinds.append((mods["safetensors"].SafetensorError, "unreadable weights file"))
    if "pyarrow" in mods:
        kinds.append((mods["pyarrow"].ArrowException, "unreadable Parquet/Arrow data"))
    if "pandas" in mods:
        errors = mods["pandas"].errors
        kinds.append(((errors.EmptyDataError, errors.ParserError), "unreadable CSV"))
    for kind, what in kinds:
        if isinstance(exc, kind):
            return f"{what}: {exc}"
    if _raised_by_lightning(exc):  # e.g. a device or strategy this machine cannot run
        return f"trainer settings (trainer.accelerator/devices/strategy): {exc}"
    return None


def _raised_by_lightning(exc: BaseException) -> bool:
    """An error raised inside Lightning's own code by its checks of the trainer settings."""
    import traceback

    if type(exc).__name__ == "MisconfigurationException":
        return True
    if not isinstance(exc, ValueError | TypeError | RuntimeError) or exc.__traceback__ is None:
        return False
    last = traceback.extract_tb(exc.__traceback__)[-1].filename.replace("\\", "/")
    return "/lightning/" in last or "/pytorch_lightning/" in last


def _guard(func):
    """The one place where errors users cause become ``error: ...`` and exit 2 (no
    traceback; ``--debug`` shows it). Anything else is a bug and keeps its traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs below
            message = user_error_message(exc)
            if message is None or _DEBUG["on"]:
                raise
            _fail(message)

    return wrapper


@app.command()
@_guard
def run(
    data: Annotated[
        str | None,
        typer.Option(
            help="'demo', 'synthetic', or a CSV/Parquet/folder/qlib path "
            "[default: the config's data.source, else demo]"
        ),
    ] = None,
    universe: Annotated[
        Path | None, typer.Option(help="universe file: symbol,name,sector,market,is_index")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="small | medium | large")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    set_: Sets = None,
    out: Annotated[Path, typer.Option(help="run folder to write")] = Path("runs/latest"),
    seeds: Annotated[
        int | None, typer.Option(help="train each Stage3 model K times; report mean/std")
    ] = None,
    force: Annotated[bool, typer.Option(help="redo steps already done in --out")] = False,
) -> None:
    """Run the whole pipeline: prepare, Stage1, Stage2, extract, Stage3, evaluate, report."""
    from relcast.config import load_config
    from relcast.run.runner import Pipeline

    # flags given on the command line win over the file and --set; flags not given change
    # nothing (the file's data.source holds). Their values are taken literally, not as YAML.
    universe_text = None if universe is None else str(universe)
    flags = {"data.source": data, "data.universe": universe_text, "evaluation.seeds": seeds}
    values = {key: value for key, value in flags.items() if value is not None}
    cfg = load_config(preset, config, set_ or [], values)
    # a folder holding another config is refused by Pipeline.run, once it holds the folder's
    # lock: a folder in use says so first (checked here, a run starting meanwhile could mix)
    pipe = Pipeline(cfg, out)
    metrics = pipe.run(force=force)
    from relcast import distributed
    from relcast.evaluation.metrics_table import metrics_table_text

    if not distributed.is_main():
        return  # under torchrun, rank 0 speaks for the run
    typer.echo(metrics_table_text(metrics))
    typer.echo(f"\nrun folder: {out}\nreport: {out / 'report.html'}")


def _step(run_dir: Path, step: str) -> None:
    from relcast.run.runner import Pipeline

    Pipeline.open(run_dir).step(step)


@app.command()
@_guard
def stage1(run: RunDir) -> None:
    """Train Stage1 (and Stage2 if enabled) on a prepared run folder."""
    _step(run, "stage1")
    _step(run, "stage2")


@app.command()
@_guard
def extract(run: RunDir) -> None:
    """Extract relationship features for every date (out-of-fold on the training span)."""
    _step(run, "extract")


@app.command()
@_guard
def stage3(run: RunDir) -> None:
    """Train the Stage3 models of the config on the stored relationship features."""
    _step(run, "stage3")


@app.command()
@_guard
def evaluate(run: RunDir) -> None:
    """Score every model and baseline on the test span (metrics.json, backtests)."""
    from relcast.evaluation.metrics_table import metrics_table_text
    from relcast.run.runner import Pipeline

    typer.echo(metrics_table_text(Pipeline.open(run).step("evaluate")))


@app.command()
@_guard
def report(run: RunDir) -> None:
    """Rebuild report.html and the plots of a run folder."""
    from relcast.evaluation.report import build_report
    from relcast.runfolder import RunFolder

    with RunFolder(run).lock("report"):  # one writer; recovers an interrupted update first
        typer.echo(str(build_report(run)))


@app.command()
@_guard
def check(
    data: Annotated[str, typer.Option(help="a CSV/Parquet file, per-symbol folder or qlib dir")],
    universe: Annotated[
        Path | None, typer.Option(help="universe file: symbol,name,sector,market,is_index")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file (its data.* keys)")] = None,
    set_: Sets = None,
) -> None:
    """Read market data and print its data-health account: what was masked or repaired,
    by reason and symbol. Nothing is trained or written."""
    import relcast
    from relcast.config import load_config

    cfg = load_config(None, config, set_ or []).data
    if universe is not None:
        from relcast.run.source import check_universe_file

        check_universe_file(str(universe))
    panel = relcast.read_panel(
        data,
        universe=universe,
        date_format=cfg.date_format,
        symbol_pattern=cfg.symbol_pattern,
        max_bad_fraction=cfg.max_bad_fraction,
        strict=cfg.strict,
    )
    typer.echo(repr(panel))
    typer.echo(panel.health.table())


@app.command()
@_guard
def predict(
    run: RunDir,
    data: Annotated[str, typer.Option(help="market data including the history (or 'demo')")],
    date: Annotated[str | None, typer.Option(help="forecast origin date (default: latest)")] = None,
    out: Annotated[Path | None, typer.Option(help="write predictions to this CSV/Parquet")] = None,
) -> None:
    """Forecasts for the latest (or a given) date from the saved models; no training."""
    from relcast.run.inference import predict_date

    frame = predict_date(run, data, date)
    _emit(frame, out)


@app.command()
@_guard
def update(
    run: RunDir,
    data: Annotated[str, typer.Option(help="new bars only: dates after the run's last date")],
    date_format: Annotated[
        str | None,
        typer.Option(
            help="dates of the new bars: dayfirst, monthfirst or e.g. '%d/%m/%y' "
            "[default: the run's data.date_format]"
        ),  # fmt: skip
    ] = None,
) -> None:
    """Append new dates: features and Stage1 relationship features for the new dates only,
    then Stage3 forecasts. No retraining; atomic writes."""
    from relcast.config import load_config
    from relcast.run.inference import update_run

    if date_format is not None:  # checked as the config checks it
        load_config(None, None, [f"data.date_format={json.dumps(date_format)}"])
    frame = update_run(run, data, date_format=date_format)
    _emit(frame, None)


def _emit(frame, out: Path | None) -> None:
    if out is None:
        with __import__("pandas").option_context("display.width", 160, "display.max_rows", 60):
            typer.echo(frame.to_string(index=False))
    elif out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)


@app.command(name="app")
@_guard
def app_command(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 7860,
) -> None:
    """Start the Gradio workflow app (needs the app extra: pip install "relcast\\[app]")."""
    import importlib.util

    # the app imports gradio only when it starts, so ask before importing anything
    if importlib.util.find_spec("gradio") is None:
        _fail(
            "the app needs gradio, which is not installed; install with: pip install 'relcast[app]'"
        )
    try:
        from relcast.app.main import launch
    except ImportError as exc:
        _fail(f"the app needs the 'app' extra ({exc}); install with: pip install 'relcast[app]'")
    launch(port=port)


def main() -> None:
    app(prog_name="relcast")


if __name__ == "__main__":
    sys.exit(main())
