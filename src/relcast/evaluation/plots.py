"""PNG plots of a run: attention, variable importance, prediction bands, returns, IC, training.

Every plotting function takes plain arrays / frames and an output path, writes one PNG and
returns the path. They use matplotlib's ``Figure`` objects directly (no pyplot, so no global
backend or figure state: safe in the web app's threads and in notebooks; no seaborn), and know
nothing about the run folder layout: :mod:`relcast.evaluation.report` reads it and calls them.

Models keep one colour across plots when the caller passes them in the same order, and the
hybrid models (names starting with ``hybrid``) are drawn with thicker lines, controls
(``control_*``) dotted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "attention_heatmap",
    "attention_influence",
    "cumulative_returns",
    "ic_over_time",
    "metrics_table",
    "prediction_bands",
    "training_curves",
    "variable_importance",
]

DPI = 100
# no "Software: matplotlib ... https://..." text chunk: the report must hold no URLs at all
_PNG_METADATA = {"Software": None}


def _figure(figsize: tuple[float, float]):
    """A bare ``matplotlib.figure.Figure`` (saved through Agg, never shown)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata=_PNG_METADATA)
    return path


def _style(name: str) -> dict:
    """Line style by model family: hybrid models (the design) thick, controls dotted."""
    if name.startswith("control_"):
        return {"linewidth": 1.2, "linestyle": ":"}
    return {"linewidth": 2.2 if name.startswith("hybrid") else 1.2}


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _date_index(dates: Sequence | np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.asarray(dates, dtype="datetime64[ns]"))


def _legend_outside(ax, n: int) -> None:
    if n > 5:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(loc="best", fontsize=8)


# ---------------------------------------------------------------------------- attention
def _target_index(symbols: np.ndarray, target: str | int) -> int:
    if isinstance(target, int | np.integer):
        if not 0 <= int(target) < len(symbols):
            raise ValueError(f"target index {target} out of range for {len(symbols)} symbols")
        return int(target)
    hits = np.flatnonzero(symbols == str(target))
    if not hits.size:
        shown = ", ".join(map(str, symbols[:10])) + (" ..." if len(symbols) > 10 else "")
        raise ValueError(f"target {target!r} is not among the attention symbols ({shown})")
    return int(hits[0])


def attention_influence(
    attention: np.ndarray, symbols: Sequence[str], target: str | int
) -> pd.Series:
    """Time-averaged attention of ``target``'s row: how much it attends to each symbol.

    Args:
        attention: ``[T, N, N]``; row ``i`` holds how stock ``i`` attends to each stock ``j``
            (NaN rows, e.g. masked dates, are ignored).
        symbols: ``[N]`` names of the rows / columns.
        target: symbol name or index.

    Returns a Series indexed by symbol, sorted from most to least attended (the target's own
    weight included), the data of the bar chart in :func:`attention_heatmap`.
    """
    symbols = np.asarray(symbols).astype(str)
    if np.ndim(attention) != 3 or np.shape(attention)[1:] != (len(symbols), len(symbols)):
        raise ValueError(
            f"attention must be [T, N, N] with N = {len(symbols)} symbols, "
            f"got {np.shape(attention)}"
        )
    # the target's row only: never a float64 copy of [T, N, N] (1 GB at 1,000 stocks)
    row = np.asarray(attention[:, _target_index(symbols, target), :], dtype=np.float64)
    with np.errstate(all="ignore"):
        mean = np.nanmean(row, axis=0) if np.isfinite(row).any() else np.full(len(symbols), np.nan)
    return pd.Series(mean, index=symbols, name="attention").sort_values(ascending=False)


def attention_heatmap(
    attention: np.ndarray,
    dates: Sequence | np.ndarray,
    symbols: Sequence[str],
    target: str | int,
    path: str | Path,
    max_symbols: int = 25,
) -> Path:
    """Which stocks the target attends to over time (Stage1 attention), and on average.

    Left: image of the target's attention row ``[T, N]`` with symbols on y (most attended on
    top) and dates on x. Right: the time average (:func:`attention_influence`). With more
    than ``max_symbols`` symbols only the most attended ones are shown.
    """
    import matplotlib

    symbols = np.asarray(symbols).astype(str)
    influence = attention_influence(attention, symbols, target)
    t_idx = _target_index(symbols, target)
    name = symbols[t_idx]
    shown = influence.index[: min(max_symbols, len(influence))]
    cols = np.array([np.flatnonzero(symbols == s)[0] for s in shown])
    row = np.asarray(attention[:, t_idx, :], dtype=np.float64)[:, cols].T  # (K, T)
    d = _date_index(dates)

    fig = _figure((11, 0.28 * len(shown) + 2.2))
    # [image | colour bar] | bar chart of the time average (apart, so no labels overlap)
    outer = fig.add_gridspec(1, 2, width_ratios=[4.2, 1.1], wspace=0.22)
    left = outer[0].subgridspec(1, 2, width_ratios=[4, 0.08], wspace=0.02)
    ax = fig.add_subplot(left[0])
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(row), aspect="auto", cmap=cmap, interpolation="nearest")
    labels = [f"{s} (self)" if s == name else s for s in shown]
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ticks = np.unique(np.linspace(0, len(d) - 1, num=min(7, len(d))).round().astype(int))
    ax.set_xticks(ticks, [d[i].strftime("%Y-%m-%d") for i in ticks], fontsize=8, rotation=30)
    ax.set_xlabel("date")
    title = f"Stage1 attention of {name} to each stock (last layer, heads averaged)"
    if len(shown) < len(symbols):
        title += f": top {len(shown)} of {len(symbols)}"
    ax.set_title(title, fontsize=10)
    cbar = fig.colorbar(im, cax=fig.add_subplot(left[1]))
    cbar.set_label("attention weight", fontsize=8)
    cbar.ax.tick_params(labelsize=7)

    bar = fig.add_subplot(outer[1], sharey=ax)
    values = influence.loc[shown].to_numpy()
    colors = ["#999999" if s == name else "#3b6ea5" for s in shown]
    bar.barh(range(len(shown)), np.nan_to_num(values), color=colors)
    uniform = 1.0 / len(symbols)  # what attention spread evenly over every stock would give
    bar.axvline(uniform, color="#c0392b", linestyle="--", linewidth=1.0, label="uniform 1/N")
    bar.legend(fontsize=7, loc="lower right")
    bar.set_xlabel("mean over dates", fontsize=9)
    bar.set_title("average", fontsize=10)
    bar.tick_params(axis="y", labelleft=False)
    bar.tick_params(axis="x", labelsize=8)
    bar.grid(axis="x", alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------- importance
def variable_importance(
    importance: Mapping[str, float],
    path: str | Path,
    top: int = 20,
    title: str = "Variable importance",
) -> Path:
    """Horizontal bars of the ``top`` most important variables (e.g. TFT variable selection)."""
    if not importance:
        raise ValueError("importance is empty: nothing to plot")
    s = pd.Series({str(k): float(v) for k, v in importance.items()}).sort_values(ascending=False)
    s = s.iloc[:top][::-1]  # largest on top
    fig = _figure((8, 0.3 * len(s) + 1.2))
    ax = fig.subplots()
    ax.barh(range(len(s)), s.to_numpy(), color="#3b6ea5")
    ax.set_yticks(range(len(s)), s.index, fontsize=8)
    ax.set_xlabel("importance (mean selection weight)")
    shown = f" (top {len(s)} of {len(importance)})" if len(importance) > len(s) else ""
    ax.set_title(title + shown, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------- predictions
def prediction_bands(
    dates: Sequence | np.ndarray,
    realised: np.ndarray,
    pred: np.ndarray,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
    title: str,
    path: str | Path,
    band_label: str = "prediction interval",
) -> Path:
    """Realised values, point predictions and (if given) the ``lo``-``hi`` interval over time."""
    d = _date_index(dates)
    fig = _figure((10, 3.8))
    ax = fig.subplots()
    if lo is not None and hi is not None:
        lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        ax.fill_between(d, lo, hi, color="#3b6ea5", alpha=0.2, linewidth=0, label=band_label)
        inside = np.isfinite(realised) & (realised >= lo) & (realised <= hi)
        n = np.isfinite(realised).sum()
        if n:
            title += f"  (realised inside: {inside.sum() / n:.0%})"
    ax.plot(d, pred, color="#3b6ea5", linewidth=1.6, label="prediction")
    ax.plot(d, realised, color="#d9822b", linewidth=1.0, marker=".", markersize=3, label="realised")
    ax.axhline(0.0, color="#888888", linewidth=0.6)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("date")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _save(fig, path)


# ---------------------------------------------------------------------------- portfolios
def cumulative_returns(
    returns: Mapping[str, tuple[Sequence, np.ndarray]],
    path: str | Path,
    benchmark: tuple[Sequence, np.ndarray] | None = None,
    title: str = "Cumulative return",
) -> Path:
    """Compounded wealth ``prod(1 + r) - 1`` of each model's daily returns (and a benchmark).

    Args:
        returns: model name -> ``(dates [T], daily_returns [T])``.
        benchmark: ``(dates, daily_returns)`` drawn dashed in black, or None.
    """
    fig = _figure((10, 4.2))
    ax = fig.subplots()
    for (name, (dates, r)), color in zip(returns.items(), _colors(len(returns)), strict=True):
        r = np.nan_to_num(np.asarray(r, dtype=float))
        ax.plot(
            _date_index(dates), np.cumprod(1.0 + r) - 1.0, color=color, label=name, **_style(name)
        )
    if benchmark is not None:
        dates, r = benchmark
        r = np.nan_to_num(np.asarray(r, dtype=float))
        ax.plot(
            _date_index(dates),
            np.cumprod(1.0 + r) - 1.0,
            color="black",
            linestyle="--",
            linewidth=1.4,
            label="benchmark",
        )
    ax.axhline(0.0, color="#888888", linewidth=0.6)
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("date")
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(returns) + (benchmark is not None))
    fig.autofmt_xdate()
    return _save(fig, path)


def ic_over_time(
    daily: Mapping[str, tuple[Sequence, np.ndarray]],
    path: str | Path,
    rolling: int = 20,
    title: str = "Rank IC",
) -> Path:
    """Rolling mean of each model's daily IC (window ``rolling`` dates, NaN dates skipped)."""
    fig = _figure((10, 4.0))
    ax = fig.subplots()
    for (name, (dates, ic)), color in zip(daily.items(), _colors(len(daily)), strict=True):
        s = pd.Series(np.asarray(ic, dtype=float), index=_date_index(dates))
        smooth = s.rolling(rolling, min_periods=max(1, rolling // 2)).mean()
        ax.plot(
            smooth.index,
            smooth.to_numpy(),
            color=color,
            label=f"{name} (mean {np.nanmean(s):+.3f})",
            **_style(name),
        )
    ax.axhline(0.0, color="#888888", linewidth=0.6)
    ax.set_title(f"{title}: {rolling}-date rolling mean", fontsize=10)
    ax.set_xlabel("date")
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(daily))
    fig.autofmt_xdate()
    return _save(fig, path)


# ---------------------------------------------------------------------------- training
def _per_epoch(frame: pd.DataFrame) -> pd.DataFrame:
    """Lightning CSV rows (one metric per row, NaN elsewhere) -> one row per epoch."""
    numeric = frame.drop(columns=["step"], errors="ignore").apply(pd.to_numeric, errors="coerce")
    return numeric.dropna(subset=["epoch"]).groupby("epoch").mean()


def training_curves(curves: Mapping[str, pd.DataFrame], path: str | Path) -> Path:
    """Per stage: train / validation loss by epoch (left axis) and val rank IC (right axis).

    Args:
        curves: stage name -> Lightning ``metrics.csv`` frame (columns ``epoch``, ``step``,
            ``train_loss``, ``val_loss``, ``val_rank_ic``, ...; NaN where a row has no value).
            An optional ``version`` column separates several fits of the same stage (folds,
            seeds): each is drawn as its own line.
    """
    import matplotlib.ticker

    if not curves:
        raise ValueError("no training curves to plot")
    n = len(curves)
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig = _figure((4.2 * ncols, 3.0 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handles = {}  # one legend for the figure: the same three series in every panel
    for ax, (name, frame) in zip(axes.flat, curves.items(), strict=False):
        groups = frame.groupby("version") if "version" in frame else [(None, frame)]
        ic_ax = ax.twinx()
        for version, part in groups:
            e = _per_epoch(part)
            alpha = 1.0 if version is None else 0.75
            for col, color, style in (("train_loss", "#3b6ea5", "-"), ("val_loss", "#d9822b", "-")):
                if col in e and e[col].notna().any():
                    s = e[col].dropna()
                    (h,) = ax.plot(
                        s.index,
                        s.to_numpy(),
                        color=color,
                        linestyle=style,
                        marker=".",
                        alpha=alpha,
                        label=col,
                    )
                    handles[col] = h
            if "val_rank_ic" in e and e["val_rank_ic"].notna().any():
                s = e["val_rank_ic"].dropna()
                (h,) = ic_ax.plot(
                    s.index,
                    s.to_numpy(),
                    color="#2a9d55",
                    linestyle="--",
                    marker=".",
                    alpha=alpha,
                    label="val_rank_ic",
                )
                handles["val_rank_ic"] = h
        suffix = f" ({len(groups)} fits)" if "version" in frame and len(groups) > 1 else ""
        ax.set_title(name + suffix, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("loss", fontsize=9)
        ic_ax.set_ylabel("val rank IC", fontsize=9, color="#2a9d55")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    if handles:
        fig.legend(
            handles.values(),
            handles.keys(),
            loc="lower center",
            ncol=len(handles),
            bbox_to_anchor=(0.5, 1.0),
            fontsize=8,
            frameon=False,
        )
    return _save(fig, path)


# ---------------------------------------------------------------------------- table
def metrics_table(frame: pd.DataFrame, path: str | Path, title: str = "Test metrics") -> Path:
    """A figure of a (formatted) metrics table, rows = models, for slides or the app."""
    fig = _figure((1.1 * (len(frame.columns) + 2), 0.32 * len(frame) + 0.9))
    ax = fig.subplots()
    ax.axis("off")
    table = ax.table(
        cellText=frame.astype(str).to_numpy(),
        rowLabels=list(frame.index),
        colLabels=list(frame.columns),
        loc="center",
        cellLoc="right",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.25)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
