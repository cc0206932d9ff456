"""prepare: load the market, split it chronologically, write the panel, the split, the data
health account and the training-span scalers (and, ``data.store: memmap``, the store)."""

from __future__ import annotations

import time

from relcast import distributed
from relcast.config import RelcastConfigError, check_trainer
from relcast.data.panel import RelcastDataError
from relcast.features.normalize import scalers_to_dict
from relcast.run.context import NORMALIZATION, RunContext, log, writes
from relcast.run.source import check_universe, load_source
from relcast.runfolder import data_fingerprint, data_paths
from relcast.store.settings import StoreSettings
from relcast.training.specs import WARMUP_BARS


def data_files(ctx: RunContext) -> list:
    """The files of the market the config names (for its fingerprint)."""
    return data_paths(ctx.config.data.source, ctx.config.data.universe)


@writes("prepare")
def prepare(ctx: RunContext) -> None:
    """Load the market, split it chronologically and write the panel + split."""
    from relcast.features.splits import chronological_split, split_by_end_dates
    from relcast.training.stage1 import encode_sectors

    cfg = ctx.config
    start = time.perf_counter()
    # bad data fails here, before anything is written
    panel = load_source(cfg, ctx.store.values_path())
    need = cfg.stage3.lookback + WARMUP_BARS + 3 * cfg.embargo
    if panel.num_dates < need:
        raise RelcastDataError(
            f"{cfg.data.source}: {panel.num_dates} dates, but lookback "
            f"{cfg.stage3.lookback} + {WARMUP_BARS} warm-up bars + embargoes need at least "
            f"{need}; use more data or a shorter stage3.lookback"
        )
    check_universe(panel, cfg)
    # a device this machine lacks fails now, not later (as Lightning sees it under torchrun)
    check_trainer(distributed.trainer_settings(cfg.trainer))
    ends = {k: getattr(cfg.split, k) for k in ("train_end", "valid_end", "test_end")}
    try:
        if ends["train_end"] is not None or ends["valid_end"] is not None:  # dates win
            split = split_by_end_dates(panel.dates, **ends, embargo=ctx.embargo)
        else:
            split = chronological_split(
                panel.dates,
                valid_frac=cfg.split.valid_frac,
                test_frac=cfg.split.test_frac,
                embargo=ctx.embargo,  # a label at t reads close[t + delay + H]
            )
    except ValueError as exc:
        if any(ends.values()):  # a config mistake
            raise RelcastConfigError(
                f"split.train_end/valid_end/test_end on {cfg.data.source}: {exc}"
            ) from None
        raise RelcastDataError(f"{cfg.data.source}: cannot split: {exc}") from None
    ctx.folder.write("config.yaml", cfg.to_yaml().encode())
    ctx.folder.write("panel.parquet", ctx.store.write_panel(panel))
    # forecasts `update` made from the panel this one replaces would mix with the new ones
    ctx.folder.file("live_predictions.parquet").unlink(missing_ok=True)
    if panel.health is not None:  # what the reader masked or repaired, by reason and symbol
        ctx.folder.write_json("data_health.json", panel.health.to_dict())
        if panel.health.totals():
            counts = panel.health.totals().items()
            log("data health: " + ", ".join(f"{r} {n}" for r, n in counts))
    ctx.folder.save_split(split)
    ctx.forget()
    r = cfg.relationships
    sectors, _ = encode_sectors(panel.sectors, panel.num_symbols)
    settings = StoreSettings(
        train_end=int(split.train[-1]),
        horizons=cfg.data.horizons,
        label_delay=cfg.data.label_delay,
        regime_window=r.regime_window if r.regime else None,
        alpha158=cfg.data.alpha158,
        sector_ids=sectors,
    )
    # fitted once on the training span and saved: predict/update scale new data with them
    scalers = ctx.store.build(panel, settings, ctx.features_for)
    ctx.folder.write_json(NORMALIZATION, scalers_to_dict(scalers))
    ctx.forget()  # every later read goes through the store
    ctx.mark(
        "prepare",
        time.perf_counter() - start,
        dates=panel.num_dates,
        symbols=panel.num_symbols,
        fingerprint=data_fingerprint(data_files(ctx), panel),
    )
    log(f"prepared {panel!r}")


def check_resumable(ctx: RunContext) -> None:
    """Refuse to resume a run whose config or input data changed since ``prepare``."""
    from relcast.config import load_config
    from relcast.runfolder import RunFolderError, data_changes

    if load_config(file=ctx.dir / "config.yaml") != ctx.config:
        raise RunFolderError(
            f"{ctx.dir} holds a run with a different config; use another --out or --force"
        )
    recorded = ctx.info()["steps"]["prepare"].get("fingerprint")
    change = data_changes(recorded, data_files(ctx), lambda: load_source(ctx.config))
    if change:
        raise RunFolderError(
            f"the data of {ctx.dir} changed since it was prepared ({change}); its "
            "results belong to the old data: rerun with --force to redo every step, "
            "or use another --out"
        )
