"""The ``relcast`` command line. Heavy imports (torch, Lightning) happen inside commands."""

from __future__ import annotations

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


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _guard(func):
    """Turn the errors users cause (bad data, bad config, missing artefacts) into messages."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from relcast.config import RelcastConfigError
        from relcast.data.panel import RelcastDataError
        from relcast.persist import RunFolderError

        try:
            return func(*args, **kwargs)
        except (RelcastConfigError, RelcastDataError, RunFolderError, FileNotFoundError) as exc:
            _fail(str(exc))

    return wrapper


@app.command()
@_guard
def run(
    data: Annotated[
        str, typer.Option(help="'demo', 'synthetic', or a CSV/Parquet/folder/qlib path")
    ] = "demo",
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
    from relcast.pipeline import Pipeline

    overrides = [f"data.source={data}", *(set_ or [])]
    if universe is not None:
        overrides.append(f"data.universe={universe}")
    if seeds is not None:
        overrides.append(f"evaluation.seeds={seeds}")
    cfg = load_config(preset, config, overrides)
    if out.exists() and (out / "run.json").exists() and not force:
        existing = Pipeline.open(out)
        if existing.config != cfg:
            _fail(f"{out} holds a run with a different config; use another --out or --force")
    pipe = Pipeline(cfg, out)
    metrics = pipe.run(force=force)
    from relcast.evaluation.report import metrics_table_text

    typer.echo(metrics_table_text(metrics))
    typer.echo(f"\nrun folder: {out}\nreport: {out / 'report.html'}")


def _step(run_dir: Path, step: str) -> None:
    from relcast.pipeline import Pipeline

    pipe = Pipeline.open(run_dir)
    getattr(pipe, step)()


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
    from relcast.evaluation.report import metrics_table_text
    from relcast.pipeline import Pipeline

    typer.echo(metrics_table_text(Pipeline.open(run).evaluate()))


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
    panel = relcast.read_panel(
        data,
        universe=universe,
        date_format=cfg.date_format,
        symbol_pattern=cfg.symbol_pattern,
        max_bad_fraction=cfg.max_bad_fraction,
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
    from relcast.inference import predict_date

    frame = predict_date(run, data, date)
    _emit(frame, out)


@app.command()
@_guard
def update(
    run: RunDir,
    data: Annotated[str, typer.Option(help="new bars only: dates after the run's last date")],
) -> None:
    """Append new dates: features and Stage1 relationship features for the new dates only,
    then Stage3 forecasts. No retraining; atomic writes."""
    from relcast.inference import update_run

    frame = update_run(run, data)
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
def app_command(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 7860,
) -> None:
    """Start the Gradio workflow app (needs the app extra: pip install "relcast\\[app]")."""
    try:
        from relcast.app import launch
    except ImportError as exc:
        _fail(f"the app needs the 'app' extra ({exc}); install with: pip install 'relcast[app]'")
    launch(port=port)


def main() -> None:
    app(prog_name="relcast")


if __name__ == "__main__":
    sys.exit(main())
