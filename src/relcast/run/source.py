"""The market a config names (``data.source``: demo, synthetic or a path) and the checks that
depend only on the data and the config, done before anything is trained."""

from __future__ import annotations

from pathlib import Path

from relcast.config import RelcastConfig, RelcastConfigError
from relcast.data.panel import Panel, RelcastDataError, format_names


def load_source(config: RelcastConfig, values_path: str | Path | None = None) -> Panel:
    """The market named by ``config.data``: ``demo``, ``synthetic`` or a path.

    ``values_path`` (``data.store: memmap``): the market's values are written there and the
    panel's ``values`` are a memory map of that file: the synthetic market a block of dates
    at a time, a long Parquet file a block of symbols at a time (other layouts are read
    whole, then copied; :func:`relcast.data.blockread.read_panel_to_memmap`).
    """
    import relcast

    source = config.data.source
    if source == "demo":
        panel = relcast.load_dataset("demo")
    elif source == "synthetic":
        args = dict(
            num_stocks=config.data.synthetic_stocks,
            num_days=config.data.synthetic_days,
            seed=config.trainer.seed,
            freq=config.data.synthetic_freq,
        )
        if values_path is not None:
            from relcast.data.synthetic import synthetic_market_file

            panel = synthetic_market_file(values_path, **args)
        else:
            panel, _ = relcast.synthetic_market(**args)
    else:
        if config.data.universe is not None:
            check_universe_file(config.data.universe)
        args = dict(
            universe=config.data.universe,
            date_format=config.data.date_format,
            symbol_pattern=config.data.symbol_pattern,
            max_bad_fraction=config.data.max_bad_fraction,
            strict=config.data.strict,
        )
        if values_path is not None:  # a long Parquet file is read a block of symbols at a time
            from relcast.data.blockread import read_panel_to_memmap

            panel = read_panel_to_memmap(source, values_path, **args)
        else:
            panel = relcast.read_panel(source, **args)
    if config.data.start or config.data.end:
        panel = panel.select(start=config.data.start, end=config.data.end)
    return panel


def check_universe_file(path: str) -> None:
    """A universe file that does not parse, or lists no symbol, is refused naming the file."""
    import json

    import pandas as pd
    import yaml

    from relcast.data.universe import read_universe

    try:
        meta = read_universe(path)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RelcastDataError(f"{path}: the universe file is not valid JSON/YAML: {exc}") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise RelcastDataError(
            f"{path}: the universe file is not a readable CSV ({exc}); it needs a header row "
            "symbol,name,sector,market,is_index and one row per symbol"
        ) from None
    if len(meta) == 0:
        raise RelcastDataError(
            f"{path}: the universe file lists no symbol; add one row per symbol "
            "(symbol,name,sector,market,is_index) or leave out --universe"
        )


def check_universe(panel: Panel, config: RelcastConfig) -> None:
    """Errors that depend only on the data and the config, found before any training."""
    where = config.data.source
    if config.data.universe:
        where += f" (universe {config.data.universe})"
    stocks = panel.symbols[~panel.is_index]
    if len(stocks) < 2:
        indices = panel.symbols[panel.is_index]
        raise RelcastDataError(
            f"{where}: {len(stocks)} stock(s) {format_names(stocks)} besides "
            f"{len(indices)} index symbol(s) {format_names(indices)}; relcast compares stocks "
            "with each other at every date and needs at least 2 (check the is_index column "
            "of the universe file)"
        )
    if config.evaluation.topk > len(stocks):
        raise RelcastConfigError(
            f"evaluation.topk={config.evaluation.topk} but {where} has {len(stocks)} stocks; "
            f"use --set evaluation.topk={max(1, len(stocks) // 2)}"
        )
