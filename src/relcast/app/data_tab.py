"""Tab 1, Data: the bundled demo, an uploaded CSV/Parquet (+ optional universe file) or a
synthetic market; a summary of what was read."""

from __future__ import annotations

import shutil
from pathlib import Path

from relcast.app.run_plots import safe_name
from relcast.app.session import progress_md
from relcast.app.ui import Shared, friendly
from relcast.data.panel import RelcastDataError

SOURCES = ("Bundled demo", "Upload CSV/Parquet", "Synthetic market")


def load_data(
    session: dict,
    source: str,
    data_file: str | None,
    universe_file: str | None,
    stocks: float,
    days: float,
) -> tuple[list[str], str]:
    """Read the chosen market; returns config overrides naming it, and its summary.

    Uploaded files are copied into the session folder first: the user's files are never
    touched, and errors name the user's file, not the copy.
    """
    import relcast
    from relcast.data.datasets import describe_panel

    if source == SOURCES[0]:
        panel = relcast.load_dataset("demo")
        overrides = ["data.source=demo"]
        title = "Bundled demo: US large caps + S&P 500 (offline)"
    elif source == SOURCES[1]:
        if not data_file:
            raise RelcastDataError("choose a CSV or Parquet file to upload first")
        inputs = Path(session["dir"]) / "inputs"
        inputs.mkdir(exist_ok=True)
        # plain copy names: they travel through ``data.source=PATH`` overrides (YAML values)
        data = Path(shutil.copy(data_file, inputs / safe_name(Path(data_file).name)))
        universe = None
        if universe_file:
            universe = Path(
                shutil.copy(
                    universe_file, inputs / ("universe_" + safe_name(Path(universe_file).name))
                )
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


def build(shared: Shared) -> None:
    """The tab's widgets and handlers (inside the app's ``gr.Blocks``)."""
    import gradio as gr

    with gr.Tab("1 Data", id="data"):
        source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Market data", elem_id="source")
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
            stocks = gr.Slider(3, 100, value=20, step=1, label="Stocks", elem_id="synthetic-stocks")
            days = gr.Slider(150, 3000, value=800, step=10, label="Days", elem_id="synthetic-days")
        load_btn = gr.Button("Load data", variant="primary", elem_id="load-data")
        summary = gr.Textbox(
            label="What was read", lines=10, max_lines=24, interactive=False, elem_id="data-summary"
        )

    def on_source(choice):
        return (
            gr.update(visible=choice == SOURCES[1]),
            gr.update(visible=choice == SOURCES[2]),
        )

    source.change(on_source, source, [upload_row, synth_row])

    @friendly
    def on_load(session, choice, data_path, universe_path, n_stocks, n_days):
        session = session or shared.new_session()
        overrides, text = load_data(session, choice, data_path, universe_path, n_stocks, n_days)
        session.update(data=overrides, summary=text, run=None, done=["data"])
        return session, text, progress_md(session)

    load_btn.click(
        on_load,
        [shared.state, source, data_file, universe_file, stocks, days],
        [shared.state, summary, shared.progress],
    )
