"""Walk-forward evaluation: the whole pipeline once per test block, scored pooled.

``split.walk_forward.first_test`` (e.g. ``2015-01-01``) cuts the data from that day on into
test blocks of ``block_years`` calendar years. Block ``k`` is an ordinary run with date
splits: it validates on the ``block_years`` before its test block and trains on every date
before that (an expanding window), with the same embargoes (``embargo + label_delay`` dates
cut at the end of the training and validation spans), so no model of a block reads a label
of its test block or later. Every stage is fitted again per block: the scalers, Stage1, the
out-of-fold relationship store, Stage2, Stage3, LightGBM and the factor baselines. With
``split.walk_forward.warm_start`` (default) a block's Stage1 and Stage3 networks start from
the previous block's weights (the out-of-fold fold models start from scratch: the previous
full model trained on the labels of the dates they extract).

Run folder::

    config.yaml, run.json          the walk-forward config; blocks done, timings
    blocks/<name>/                 one ordinary run folder per block (its own report aside)
    metrics.json                   pooled over every test block, with per-block rows
    predictions.parquet, backtest.parquet, report.html   pooled

The pooled metrics are the blocks' own forecasts (each block's ``predictions.parquet``, the
rows its evaluation scored) put side by side over the union of the test blocks and scored
once: every IC, Newey-West statistic, paired test and backtest is over the pooled span.
``relcast predict`` and ``update`` use the last block's models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from relcast import distributed
from relcast.config import RelcastConfig, RelcastConfigError
from relcast.features.splits import Split
from relcast.run.context import RunContext, log
from relcast.run.pipeline import STEPS, run_steps
from relcast.runfolder import RunFolder, RunFolderError

BLOCKS = "blocks"
BLOCK_STEPS = tuple(s for s in STEPS if s.name != "report")  # one pooled report at the top


@dataclass(frozen=True)
class Block:
    """One test block: its name and the last (inclusive) date of each span."""

    name: str
    train_end: str
    valid_end: str
    test_end: str


def is_walk_forward(config: RelcastConfig) -> bool:
    return config.split.walk_forward.first_test is not None


def plan_blocks(config: RelcastConfig, dates: np.ndarray) -> list[Block]:
    """The test blocks of ``config`` on the market's ``dates`` (each end is the last trading
    date before a calendar boundary)."""
    wf = config.split.walk_forward
    dates = np.asarray(dates, dtype="datetime64[ns]")
    years = pd.DateOffset(years=wf.block_years)

    def last_before(when: pd.Timestamp) -> str | None:
        i = int(np.searchsorted(dates, np.datetime64(when, "ns"), "left")) - 1
        return None if i < 0 else str(pd.Timestamp(dates[i]).date())

    first, last = pd.Timestamp(wf.first_test), pd.Timestamp(dates[-1])
    if first > last:
        raise RelcastConfigError(
            f"split.walk_forward.first_test={wf.first_test} is after the data's last date "
            f"{last.date()}"
        )
    blocks, start = [], first
    while start <= last:
        stop = start + years
        ends = last_before(start - years), last_before(start), last_before(stop)
        if ends[0] is None or ends[0] == ends[1]:
            raise RelcastConfigError(
                f"split.walk_forward.first_test={wf.first_test}: the block from {start.date()} "
                f"has no training dates before its validation years; use a later first_test"
            )
        span = start.year if wf.block_years == 1 else f"{start.year}-{stop.year - 1}"
        blocks.append(Block(str(span), *ends))
        start = stop
    return blocks


def block_config(config: RelcastConfig, block: Block) -> RelcastConfig:
    """The config of one block's run: ``config`` with the block's date splits."""
    split = config.split.model_copy(
        update={
            # off (a block is one split); its warm-start settings stay
            "walk_forward": config.split.walk_forward.model_copy(update={"first_test": None}),
            "train_end": block.train_end,
            "valid_end": block.valid_end,
            "test_end": block.test_end,
        }
    )
    return config.model_copy(update={"split": split})


def block_contexts(config: RelcastConfig, run_dir: Path, dates: np.ndarray) -> list[RunContext]:
    """One run context per block, each warm-started from the one before (if asked)."""
    warm = config.split.walk_forward.warm_start
    out: list[RunContext] = []
    for block in plan_blocks(config, dates):
        previous = out[-1].dir.resolve() if warm and out else None
        out.append(
            RunContext(
                block_config(config, block), run_dir / BLOCKS / block.name, warm_from=previous
            )
        )
    return out


def run_walk_forward(config: RelcastConfig, run_dir: str | Path, *, force: bool = False) -> dict:
    """Every block's run (finished blocks skipped unless ``force``), then the pooled scores."""
    from relcast.run.source import load_source

    run_dir = Path(run_dir)
    root = RunFolder(run_dir)
    distributed.init(config.trainer.accelerator)
    with root.lock("walk_forward"):
        total = time.perf_counter()
        distributed.on_main("walk_forward", lambda: start_walk_forward(root, config, force))
        dates = load_source(config).dates
        contexts = block_contexts(config, run_dir, dates)
        log(
            f"walk-forward: {len(contexts)} test blocks ({', '.join(c.dir.name for c in contexts)})"
        )
        timings = {}
        for ctx in contexts:
            finished = distributed.broadcast(not force and ctx.done("evaluate"))
            if finished:
                log(f"block {ctx.dir.name}: done already, skipped")
                continue
            log(f"block {ctx.dir.name}: training, then testing on its dates")
            start = time.perf_counter()
            run_steps(ctx, force=force, steps=BLOCK_STEPS)
            timings[ctx.dir.name] = round(time.perf_counter() - start, 1)
        metrics = distributed.on_main("pooled", lambda: _finish(root, contexts, timings, total))
    return metrics or {}


def start_walk_forward(root: RunFolder, config: RelcastConfig, force: bool) -> None:
    """Write the walk-forward's config and run.json (a folder holding another config is
    refused): the run folder its blocks are written into."""
    from relcast.config import load_config

    if not force and root.has("config.yaml"):
        if load_config(file=root.file("config.yaml")) != config:
            raise RunFolderError(
                f"{root.path} holds a run with a different config; use another --out or --force"
            )
    root.write("config.yaml", config.to_yaml().encode())
    info = root.run_info()
    info["walk_forward"] = True
    root.write_json("run.json", info)


def _finish(root: RunFolder, contexts: list[RunContext], timings: dict, total: float) -> dict:
    from relcast.evaluation.report import build_report

    start = time.perf_counter()
    metrics = score_pooled(contexts, root)
    info = root.run_info()
    info["steps"]["blocks"] = {
        "names": [c.dir.name for c in contexts],
        "seconds": {**info["steps"].get("blocks", {}).get("seconds", {}), **timings},
    }
    info["steps"]["evaluate"] = {"seconds": round(time.perf_counter() - start, 2)}
    root.write_json("run.json", info)
    build_report(root.path)
    log(f"walk-forward finished in {time.perf_counter() - total:.0f}s -> {root.path}")
    return metrics


def pooled_split(contexts: list[RunContext]) -> Split:
    """The union of the blocks' test dates as one split's test span (train and valid: the
    first block's, all before it)."""
    first = contexts[0].split
    test = np.unique(np.concatenate([c.split.test for c in contexts]))
    return Split(
        train=first.train, valid=first.valid, test=test, embargo=first.embargo, dates=first.dates
    )


def pooled_forecasts(contexts: list[RunContext], window: slice):
    """Every block's scored forecasts (its ``predictions.parquet``) on the pooled window,
    with each seed's own forecast (``seed_predictions.parquet``) for the seeds' spread."""
    from relcast.run.steps.evaluate import SEED_MARK, SEED_PREDICTIONS, Forecasts

    last = contexts[-1]
    dates, symbols = last.panel.dates, last.panel.symbols
    W, N, H = window.stop - window.start, len(symbols), last.labels.shape[2]
    out = Forecasts(window=window)
    levels = last.config.stage3.quantiles or []

    def cells(table: pd.DataFrame):
        t = np.searchsorted(dates, table["date"].to_numpy(dtype="datetime64[ns]")) - window.start
        n = pd.Index(symbols).get_indexer(table["symbol"].astype(str))
        return t, n, table["horizon"].to_numpy() - 1

    seeds: dict[str, dict[int, np.ndarray]] = {}
    for ctx in contexts:
        if ctx.folder.has(SEED_PREDICTIONS):
            table = pd.read_parquet(ctx.folder.file(SEED_PREDICTIONS))
            t, n, h = cells(table)
            for label, rows in table.groupby("model", sort=False).groups.items():
                name, k = str(label).rsplit(SEED_MARK, 1)
                rows = np.asarray(rows)
                runs = seeds.setdefault(name, {})
                run = runs.setdefault(int(k), np.full((W, N, H), np.nan, dtype=np.float32))
                run[t[rows], n[rows], h[rows]] = table["pred"].to_numpy()[rows]
        table = pd.read_parquet(ctx.folder.file("predictions.parquet"))
        t, n, h = cells(table)
        for name, rows in table.groupby("model", sort=False).groups.items():
            rows = np.asarray(rows)
            point = out.point.setdefault(name, np.full((W, N, H), np.nan, dtype=np.float32))
            point[t[rows], n[rows], h[rows]] = table["pred"].to_numpy()[rows]
            q = [f"q{level:g}" for level in levels]
            if q and q[0] in table and np.isfinite(table[q[0]].to_numpy()[rows]).any():
                band = out.quantiles.setdefault(
                    name, np.full((W, N, H, len(q)), np.nan, dtype=np.float32)
                )
                band[t[rows], n[rows], h[rows]] = table[q].to_numpy()[rows]
    out.seed_runs = {
        name: [runs[k] for k in sorted(runs)]
        for name, runs in seeds.items()
        if name in out.point and len(runs) > 1
    }
    return out


def score_pooled(contexts: list[RunContext], root: RunFolder) -> dict:
    """Score the blocks' forecasts pooled over every test block, with per-block rows beside
    (``metrics["blocks"][name]``: that block's own metrics.json models)."""
    from relcast.evaluation.scoring import scoring_window
    from relcast.run.steps.evaluate import score_and_save

    split = pooled_split(contexts)
    forecasts = pooled_forecasts(contexts, scoring_window(split))
    metrics, _ = score_and_save(contexts[-1], forecasts, split, root)
    blocks = {c.dir.name: c.folder.load_metrics() for c in contexts}
    metrics["walk_forward"] = {
        name: {"spans": m.get("split", {}), "models": m.get("models", {})}
        for name, m in blocks.items()
    }
    root.save_metrics(metrics)
    return metrics


def last_block(run_dir: str | Path) -> Path | None:
    """The last block's run folder of a walk-forward run folder (None: not one)."""
    info = RunFolder(run_dir).run_info() if RunFolder(run_dir).has("run.json") else {}
    names = info.get("steps", {}).get("blocks", {}).get("names")
    if not info.get("walk_forward") or not names:
        return None
    return RunFolder(run_dir).file(f"{BLOCKS}/{names[-1]}")  # a name inside the folder
