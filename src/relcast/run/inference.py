"""Inference from a finished run: forecasts for a date, and the incremental daily update.

``update_run`` appends new dates without retraining anything: features for the extended
market (causal, so the stored dates' values are unchanged), Stage1 relationship features for
the new dates only (the model trained on the full training span, the same one the store used
for every date after the training span), then Stage3 forecasts for the new dates.

An update holds the run folder's lock and replaces its files together through
:meth:`RunFolder.commit <relcast.runfolder.RunFolder.commit>`: staged under temporary names,
a journal lists the renames, which are applied, and the journal is removed. A crash before the
journal leaves the previous run untouched; a crash during the renames is finished whenever the
run folder is next opened (by any command).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from relcast.data.continuity import continue_run
from relcast.data.panel import Panel, RelcastDataError, format_names
from relcast.run.context import RunContext
from relcast.runfolder import JOURNAL, RunFolder, RunFolderError
from relcast.runfolder.formats import relationships_npz
from relcast.training.specs import WARMUP_BARS

__all__ = ["JOURNAL", "predict_date", "recover_update", "update_run"]

LIVE_PREDICTIONS = "live_predictions.parquet"


def recover_update(run_dir: Path) -> bool:
    """Finish an interrupted update and drop crash leftovers, unless a writer holds the run."""
    return RunFolder(run_dir).recover_if_free()


def _read_market(data: str, config, date_format: str | None = None) -> Panel:
    """New bars, read with the run's own reader settings (date format, file-name rule, ...)."""
    import relcast

    if data == "demo":
        return relcast.load_dataset("demo")
    d = config.data
    return relcast.read_panel(
        data,
        date_format=date_format or d.date_format,
        symbol_pattern=d.symbol_pattern,
        max_bad_fraction=d.max_bad_fraction,
        strict=d.strict,
    )


def _open(run_dir) -> RunContext:
    """The run's context (a walk-forward run's: its last block's); opening recovers an
    interrupted update."""
    from relcast.run.walk_forward import last_block

    return RunContext.open(last_block(run_dir) or run_dir)


def _relationships_for(ctx: RunContext, features, index: np.ndarray, stored: dict):
    """Relationship values ``[T, N, K]`` on the features' dates: ``stored`` (the run's
    ``relationships.npz``) where it has the date, extracted by the full Stage1 model for the
    dates in ``index`` it lacks."""
    stored_dates, names = stored["dates"], stored["names"]
    T, N = features.mask.shape
    values = np.full((T, N, len(names)), np.nan, dtype=np.float32)
    pos = {int(d): i for i, d in enumerate(stored_dates.astype("int64"))}
    have = np.array([pos.get(int(d), -1) for d in features.dates.astype("int64")])
    values[have >= 0] = stored["values"][have[have >= 0]]
    missing = np.intersect1d(index, np.flatnonzero(have < 0))
    if missing.size:
        rel = ctx.extractor.extract(ctx.stage1_model, features, missing)
        if rel.names != names:
            raise RuntimeError("the extractor's columns differ from the stored ones")
        values[missing] = rel.values
    return values, names, missing


def _seed_forecast(ctx: RunContext, folder: str, inputs, index, stocks, streams) -> dict:
    """One seed's forecasts on ``index``. With ``streams`` (an update) a model that steps
    one date at a time resumes from the state the previous update saved, when it is the
    state after the date before ``index`` with these weights, and puts its new state in
    ``streams[folder]``; otherwise the chunk pass, as the run's evaluation forecast."""
    from relcast.training.stage3 import predict_stage3
    from relcast.training.stream import can_stream, stream_forecast

    model, spec = ctx.stage3_model(folder)
    if streams is None or spec.chunk_length is None or not can_stream(model, inputs):
        return predict_stage3(model, inputs, index=index, stocks=stocks,
                              chunk_length=spec.chunk_length)  # fmt: skip
    weights = ctx.folder.file(ctx.folder.stage3_weights(folder)).read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    state = _stream_state(ctx, folder, int(index[0]) - 1, digest)
    out, streams[folder] = stream_forecast(
        model, inputs, index, stocks=stocks, chunk_length=spec.chunk_length, state=state
    )
    streams[folder].weights = digest
    return out


def _stream_state(ctx: RunContext, folder: str, t: int, weights: str):
    """The saved state of ``folder`` if it is the one after date ``t`` with these weights;
    None otherwise (a damaged file is said, then run without: it only saves time)."""
    import warnings
    import zipfile

    from relcast.training.stream import StreamState

    name = ctx.folder.stage3_stream_state(folder)
    if not ctx.folder.has(name):
        return None
    try:
        state = StreamState.from_bytes(ctx.folder.file(name).read_bytes())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"{ctx.folder.file(name)} is unreadable ({err}); forecasting without it",
                      UserWarning, stacklevel=2)  # fmt: skip
        return None
    return state if state.t == t and state.weights == weights else None


def _forecast_frame(
    ctx: RunContext, features, rel, index: np.ndarray, streams: dict | None = None
) -> pd.DataFrame:
    """The forecasts on ``index`` of every Stage3 model of the run (each its seeds' mean);
    ``streams``: see :func:`_seed_forecast`."""
    from relcast.evaluation.scoring import seed_ensemble

    frames = []
    for name, _, feature_set in ctx.stage3_names():
        if not ctx.has_stage3(name):
            continue
        model, _ = ctx.stage3_model(name)
        inputs = ctx.stage3_inputs(feature_set, features=features, relationships=rel)
        stocks = list(ctx.panel.symbols[ctx.target])
        runs = []  # with evaluation.seeds K: the seeds' ensemble, the forecast evaluate scored
        for folder in ctx.seed_folders(name):
            if ctx.has_stage3(folder):
                runs.append(_seed_forecast(ctx, folder, inputs, index, stocks, streams))
        out = {key: seed_ensemble([r[key] for r in runs]) for key in ("point", "pred")}
        q = model.config.quantiles
        for h in range(out["point"].shape[2]):
            t, n = np.nonzero(np.isfinite(out["point"][index, :, h]))
            frame = pd.DataFrame(
                {
                    "date": features.dates[index[t]],
                    "symbol": features.symbols[n],
                    "model": name,
                    "horizon": h + 1,
                    "pred": out["point"][index[t], n, h],
                }
            )
            if q is not None:
                for k, level in enumerate(q):
                    frame[f"q{level:g}"] = out["pred"][index[t], n, h, k]
            frames.append(frame)
    if not frames:
        raise RelcastDataError(
            "no forecast: no complete lookback window ends on the requested dates"
        )
    return pd.concat(frames, ignore_index=True)


def _stored_relationships(ctx: RunContext) -> dict:
    return ctx.folder.load_relationships()


def predict_date(run_dir, data: str, date: str | None = None) -> pd.DataFrame:
    """Stage3 forecasts at ``date`` (default: the last date of ``data``) from saved models."""
    ctx = _open(run_dir)
    panel = _read_market(data, ctx.config)
    panel = _as_trained(panel, ctx.panel)
    if date is None:
        t = panel.num_dates - 1
    else:
        try:
            when = np.datetime64(pd.Timestamp(date), "ns")
        except (ValueError, TypeError):
            raise RelcastDataError(
                f"--date {date!r} is not a date; write it as YYYY-MM-DD, e.g. 2020-01-31"
            ) from None
        t = int(np.searchsorted(panel.dates, when))
        if t >= panel.num_dates or panel.dates[t] != when:
            raise RelcastDataError(f"{data}: date {date} is not a trading date of the data")
    _check_stage3_weights(ctx)
    lookback = ctx.config.stage3.lookback
    if t + 1 < lookback:
        raise RelcastDataError(
            f"{data}: {t + 1} date(s) up to {pd.Timestamp(panel.dates[t]).date()}, but the "
            f"run's Stage3 models read a window of stage3.lookback={lookback} dates (plus "
            "the indicators' warm-up before it); pass more history"
        )
    features = ctx.features_for(panel)
    window = np.arange(max(0, t - lookback + 1), t + 1)
    _warn_missing_index(panel, window, data)
    # the Stage3 chunk that forecasts t may start up to its chunk's steps - 1 dates back (the
    # recurrent state runs from there): relationships for those dates as well, so that the
    # forecast equals the one of the run's evaluation or of an update. Each model tiles as
    # it was trained (its saved spec)
    chunk = max(
        [ctx.stage3_model(name)[1].chunk_steps or lookback for name, _, _ in ctx.stage3_names()]
    )
    context = np.arange(max(0, t - chunk + 1), t + 1)
    stored = _stored_relationships(ctx)
    rel, names, _ = _relationships_for(ctx, features, context, stored)
    frame = _forecast_frame(ctx, features, (rel, names), np.array([t]))
    if frame.empty:
        raise RelcastDataError(
            f"{data}: no forecast for {pd.Timestamp(panel.dates[t]).date()}: no stock has "
            f"{lookback} dates of complete features ending there (indicators need up to "
            f"{WARMUP_BARS} bars of history before the window, and a stock must trade on the "
            "date); pass more history or another --date"
        )
    return frame


def _check_stage3_weights(ctx: RunContext) -> None:
    """Every Stage3 model of the run's config has its weights (else say how to get them)."""
    missing = [
        ctx.folder.file(ctx.folder.stage3_weights(name))
        for name, _, _ in ctx.stage3_names()
        if not ctx.has_stage3(name)
    ]
    if missing:
        raise RunFolderError(
            f"missing Stage3 weights {[str(p) for p in missing]}: the run's config lists "
            f"these models; train them again with `relcast stage3 --run {ctx.dir}`"
        )


def _warn_missing_index(panel: Panel, index: np.ndarray, data: str) -> None:
    """Warn when a market index has no bar on dates to forecast: its features then carry
    its last close forward, which changes the forecasts."""
    import warnings

    which = np.flatnonzero(panel.is_index)
    absent = ~panel.mask[np.ix_(index, which)]  # (dates, indices)
    if absent.any():
        t = index[absent.any(axis=1)]
        warnings.warn(
            f"{data}: index symbol(s) {format_names(panel.symbols[which[absent.any(axis=0)]])} "
            f"have no bar on {len(t)} date(s) used for the forecast (first: "
            f"{pd.Timestamp(panel.dates[t[0]]).date()}); their last close is carried forward, "
            "which changes the forecasts: add the index bars for those dates",
            UserWarning,
            stacklevel=3,
        )


def _as_trained(panel: Panel, trained: Panel) -> Panel:
    """The new data on the trained universe: its symbols, order, fields and metadata."""
    _check_symbols(trained, panel)
    panel = panel.reindex(panel.dates, trained.symbols)
    values = (
        panel.values if panel.fields == trained.fields else _align_fields(panel, trained.fields)
    )
    return Panel(panel.dates, trained.symbols, trained.fields, values, panel.mask, trained.meta)


def _check_symbols(old: Panel, new: Panel) -> None:
    unknown = sorted(set(new.symbols) - set(old.symbols))
    if unknown:
        raise RelcastDataError(
            f"symbols not in the trained universe: {format_names(unknown)}; Stage1 has one "
            "identity embedding per trained symbol, so new symbols need a new `relcast run`"
        )


def update_run(run_dir, data: str, date_format: str | None = None) -> pd.DataFrame:
    """Append the new dates of ``data`` to the run (a walk-forward run: its last block) and
    forecast them (no retraining); ``date_format``: how the new bars write dates (default:
    the run's ``data.date_format``)."""
    from relcast.run.walk_forward import last_block

    run_dir = last_block(run_dir) or run_dir
    with RunFolder(run_dir).lock("update"):
        return _update(run_dir, data, date_format)


def _update(run_dir, data: str, date_format: str | None = None) -> pd.DataFrame:
    ctx = _open(run_dir)
    old = ctx.panel
    new = _read_market(data, ctx.config, date_format)
    if new.num_dates == 0:
        raise RelcastDataError(f"{data}: no dates to add")
    if new.dates[0] <= old.dates[-1]:
        overlap = new.dates[new.dates <= old.dates[-1]]
        raise RelcastDataError(
            f"{data}: {len(overlap)} date(s) not after the run's last date "
            f"{pd.Timestamp(old.dates[-1]).date()} (first: {pd.Timestamp(overlap[0])}); "
            "pass only new bars, in order"
        )
    new = _as_trained(new, old)
    health = ctx.folder.read_json("data_health.json") if ctx.folder.has("data_health.json") else {}
    continue_run(old, new, data, excluded=health.get("excluded", {}))  # or refuse the batch
    combined = Panel(
        dates=np.concatenate([old.dates, new.dates]),
        symbols=old.symbols,
        fields=old.fields,
        values=np.concatenate([old.values, new.values]),
        mask=np.concatenate([old.mask, new.mask]),
        meta=old.meta,
    )
    features = ctx.features_for(combined)
    added = np.arange(old.num_dates, combined.num_dates)
    _check_stage3_weights(ctx)
    _warn_missing_index(combined, added, data)
    stored = _stored_relationships(ctx)  # read once
    rel, names, _ = _relationships_for(ctx, features, added, stored)
    streams: dict = {}  # each streaming model's state after the last new date
    forecasts = _forecast_frame(ctx, features, (rel, names), added, streams)

    fold_of = stored["fold_of"]
    fold_of = np.concatenate([fold_of, np.full(len(added), -1, dtype=fold_of.dtype)])
    mask = np.isfinite(rel).all(axis=-1) & features.mask
    live = ctx.dir / LIVE_PREDICTIONS
    history = pd.read_parquet(live) if live.exists() else None
    table = forecasts if history is None else pd.concat([history, forecasts], ignore_index=True)
    out = io.BytesIO()
    table.to_parquet(out, index=False)
    from relcast.relationships.store import RelationshipStore

    store = RelationshipStore(
        combined.dates, combined.symbols, list(names), rel, mask, fold_of, features=features
    )
    files = {
        "panel.parquet": combined.to_parquet,
        "relationships.npz": relationships_npz(names, rel, mask, fold_of, combined.dates),
        "data_with_relationships.parquet": store.write_parquet,
        LIVE_PREDICTIONS: out.getvalue(),
    }
    for folder, state in streams.items():
        files[ctx.folder.stage3_stream_state(folder)] = state.to_bytes()
    if not ctx.config.relationships.table:  # the run keeps no table to bring up to date
        del files["data_with_relationships.parquet"]
    ctx.folder.commit(files)
    return forecasts


def _align_fields(new: Panel, fields: tuple[str, ...]) -> np.ndarray:
    missing = [f for f in fields if f not in new.fields]
    if missing:
        raise RelcastDataError(f"new data lacks fields {missing} that the run was trained with")
    return np.stack([new.field(f) for f in fields], axis=-1)
