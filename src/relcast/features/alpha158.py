"""qlib's Alpha158 feature set, vectorised over ``[T, N]`` arrays.

The formulas are those of qlib's ``Alpha158DL.get_feature_config`` (default config) and the
semantics of its operators (``Std`` is pandas' sample std, ``ddof=1``; ``Slope``/``Rsquare``/
``Resi`` regress the window on ``x = 1..d``; ``Quantile`` interpolates linearly; ``Rank`` is the
average-tie percentile of the last value in its window; ``IdxMax``/``IdxMin`` give the 1-based
position of the first extreme counted from the window's oldest bar):

- KBAR (9): ``KMID (C-O)/O``, ``KLEN (H-L)/O``, ``KMID2 (C-O)/(H-L+e)``, ``KUP (H-max(O,C))/O``,
  ``KUP2 (H-max(O,C))/(H-L+e)``, ``KLOW (min(O,C)-L)/O``, ``KLOW2 (min(O,C)-L)/(H-L+e)``,
  ``KSFT (2C-H-L)/O``, ``KSFT2 (2C-H-L)/(H-L+e)``, with ``e = 1e-12``.
- PRICE (3 or 4): ``OPEN0 O/C``, ``HIGH0 H/C``, ``LOW0 L/C`` and ``VWAP0 VWAP/C`` when the panel
  has a ``vwap`` field, or ``amount`` (then ``VWAP = amount / volume``); left out otherwise.
- ROLLING (29 per window d in 5, 10, 20, 30, 60): ``ROC C[t-d]/C``, ``MA mean(C)/C``,
  ``STD std(C)/C``, ``BETA slope(C)/C``, ``RSQR R^2(C)``, ``RESI resid(C)/C``, ``MAX max(H)/C``,
  ``MIN min(L)/C``, ``QTLU q80(C)/C``, ``QTLD q20(C)/C``, ``RANK``, ``RSV (C-min L)/(max H-min
  L+e)``, ``IMAX idxmax(H)/d``, ``IMIN idxmin(L)/d``, ``IMXD (idxmax H - idxmin L)/d``,
  ``CORR corr(C, log(V+1))``, ``CORD corr(C/C[t-1], log(V/V[t-1]+1))``, ``CNTP``/``CNTN`` share
  of up / down bars, ``CNTD = CNTP - CNTN``, ``SUMP``/``SUMN``/``SUMD`` gains / losses / their
  difference over the summed absolute change (+e), ``VMA mean(V)/(V+e)``, ``VSTD std(V)/(V+e)``,
  ``WVMA std(|r|V)/(mean(|r|V)+e)`` with ``r = C/C[t-1]-1``, ``VSUMP``/``VSUMN``/``VSUMD`` the
  same as ``SUMP``/... on volume.

Where this differs from qlib, on purpose:

- A rolling value is NaN until its whole window exists (qlib's operators use
  ``min_periods=1`` and give partial-window values after a listing); each feature reports
  the warm-up bars :func:`relcast.features.build.build_features` waits for.
- Values that are not finite (a flat window in ``RSQR``/``CORR``, a zero-volume bar in
  ``CORD``'s log volume ratio) are NaN here. ``build_features`` puts them at the
  cross-sectional median (0 after its z-score), like qlib's ``Fillna`` after its normaliser.
- A window variance below ``FLAT * mean(|x|)^2`` is taken as 0: it is rounding noise of the
  running sums, and a flat (suspended) window must not look like a trend.

Every output at t uses inputs at ``<= t`` only. Rolling means, variances, correlations and
the regression come from running sums computed once per series for all windows;
quantiles, ranks and arg-extremes from sliding windows, in blocks of stocks to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from relcast.data.panel import Panel
from relcast.features.indicators import ffill, fill_leading, lag_rows, rolling_max, rolling_min

WINDOWS = (5, 10, 20, 30, 60)
KBAR = ("KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2")
ROLLING = (
    "ROC", "MA", "STD", "BETA", "RSQR", "RESI", "MAX", "MIN", "QTLU", "QTLD", "RANK", "RSV",
    "IMAX", "IMIN", "IMXD", "CORR", "CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD",
    "VMA", "VSTD", "WVMA", "VSUMP", "VSUMN", "VSUMD",
)  # fmt: skip
EPS = 1e-12  # qlib's guard in denominators
FLAT = 1e-10  # window variance <= FLAT * mean(|x|)^2 counts as zero
BLOCK_CELLS = 4_000_000  # float64 cells of one block of sliding windows (~32 MB)


def alpha158_names(windows: Sequence[int] = WINDOWS, vwap: bool = False) -> list[str]:
    """Feature names in output order (158 with vwap and the default windows, 157 without)."""
    price = ["OPEN0", "HIGH0", "LOW0"] + (["VWAP0"] if vwap else [])
    return [*KBAR, *price, *(f"{op}{d}" for op in ROLLING for d in windows)]


def alpha158_features(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    vwap: np.ndarray | None = None,
    windows: Sequence[int] = WINDOWS,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Raw Alpha158 features of every stock: ``(features, warmup)``.

    Inputs are ``[T, N]``, forward-filled over suspensions (leading NaN before listing), volume
    0 on suspended bars, as :func:`relcast.features.build.build_features` prepares them.
    ``features[name]`` is ``float32 [T, N]`` (NaN where undefined); ``warmup[name]`` is the number
    of earlier bars it needs. Names follow :func:`alpha158_names` (grouped by operator).
    """
    o, h, lo, c, v = (np.asarray(a, dtype=np.float64) for a in (open_, high, low, close, volume))
    windows = tuple(int(d) for d in windows)
    if not windows or min(windows) < 2:
        raise ValueError(f"alpha158 windows must be integers >= 2, got {windows}")
    f: dict[str, np.ndarray] = {}
    warm: dict[str, int] = {}

    def put(name: str, value: np.ndarray, bars: int) -> None:
        f[name] = np.where(np.isfinite(value), value, np.nan).astype(np.float32)
        warm[name] = bars

    with np.errstate(divide="ignore", invalid="ignore"):
        span = h - lo + EPS
        top, bottom = np.maximum(o, c), np.minimum(o, c)
        for name, num in (("KMID", c - o), ("KLEN", h - lo), ("KUP", h - top),
                          ("KLOW", bottom - lo), ("KSFT", 2 * c - h - lo)):  # fmt: skip
            put(name, num / o, 0)
            if name != "KLEN":
                put(name + "2", num / span, 0)
        for name, price in (("OPEN0", o), ("HIGH0", h), ("LOW0", lo), ("VWAP0", vwap)):
            if price is not None:
                put(name, np.asarray(price, dtype=np.float64) / c, 0)

        # per-bar series the rolling operators read
        dc = c - lag_rows(c, 1)  # (T, N) close change, NaN on a stock's first bar
        dv = v - lag_rows(v, 1)
        ret = c / lag_rows(c, 1)
        log_v = np.log(v + 1.0)
        log_dv = np.log(v / lag_rows(v, 1) + 1.0)  # inf/NaN after a zero-volume bar
        log_dv[~np.isfinite(log_dv)] = np.nan
        wv = np.abs(ret - 1.0) * v
        up = np.where(np.isnan(dc), np.nan, dc > 0)
        down = np.where(np.isnan(dc), np.nan, dc < 0)

        S = _RunningSums(
            c=c, v=v, wv=wv, log_v=log_v, ret=ret, log_dv=log_dv, up=up, down=down,
            dc_up=np.maximum(dc, 0.0), dc_down=np.maximum(-dc, 0.0), dc_abs=np.abs(dc),
            dv_up=np.maximum(dv, 0.0), dv_down=np.maximum(-dv, 0.0), dv_abs=np.abs(dv),
        )  # fmt: skip
        for d in windows:  # computed window by window, listed operator by operator below
            put(f"ROC{d}", lag_rows(c, d) / c, d)
            put(f"MA{d}", S.mean("c", d) / c, d - 1)
            put(f"STD{d}", S.std("c", d) / c, d - 1)
            slope, rsq, resi = S.regression("c", d)
            put(f"BETA{d}", slope / c, d - 1)
            put(f"RSQR{d}", rsq, d - 1)
            put(f"RESI{d}", resi / c, d - 1)
            hi_d, lo_d = rolling_max(h, d), rolling_min(lo, d)
            put(f"MAX{d}", hi_d / c, d - 1)
            put(f"MIN{d}", lo_d / c, d - 1)
            stats = _order_stats(c, h, lo, d)
            put(f"QTLU{d}", stats["q80"] / c, d - 1)
            put(f"QTLD{d}", stats["q20"] / c, d - 1)
            put(f"RANK{d}", stats["rank"], d - 1)
            put(f"RSV{d}", (c - lo_d) / (hi_d - lo_d + EPS), d - 1)
            put(f"IMAX{d}", stats["imax"] / d, d - 1)
            put(f"IMIN{d}", stats["imin"] / d, d - 1)
            put(f"IMXD{d}", (stats["imax"] - stats["imin"]) / d, d - 1)
            put(f"CORR{d}", S.corr("c", "log_v", d), d - 1)
            put(f"CORD{d}", S.corr("ret", "log_dv", d), d)
            cntp, cntn = S.mean("up", d), S.mean("down", d)
            put(f"CNTP{d}", cntp, d)
            put(f"CNTN{d}", cntn, d)
            put(f"CNTD{d}", cntp - cntn, d)
            for prefix, x in (("SUM", "dc"), ("VSUM", "dv")):
                gain, loss = S.sum(x + "_up", d), S.sum(x + "_down", d)
                total = S.sum(x + "_abs", d) + EPS
                put(f"{prefix}P{d}", gain / total, d)
                put(f"{prefix}N{d}", loss / total, d)
                put(f"{prefix}D{d}", (gain - loss) / total, d)
            put(f"VMA{d}", S.mean("v", d) / (v + EPS), d - 1)
            put(f"VSTD{d}", S.std("v", d) / (v + EPS), d - 1)
            put(f"WVMA{d}", S.std("wv", d) / (S.mean("wv", d) + EPS), d)
    order = alpha158_names(windows, vwap=vwap is not None)
    return {name: f[name] for name in order}, warm


def panel_vwap(panel: Panel) -> np.ndarray | None:
    """VWAP ``[T, N]`` of a panel: its ``vwap`` field, else ``amount / volume``; None without
    either. Forward-filled over bars that did not trade (or traded no volume), like prices."""
    mask = panel.mask
    if "vwap" in panel.fields:
        value = np.where(mask, panel.field("vwap"), np.nan)
    elif "amount" in panel.fields and "volume" in panel.fields:
        vol = np.asarray(panel.field("volume"), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.where(mask & (vol > 0), panel.field("amount") / vol, np.nan)
    else:
        return None
    return ffill(np.asarray(value, dtype=np.float64))


# --------------------------------------------------------------------------- rolling helpers


class _RunningSums:
    """Window sums of named ``[T, N]`` series from running sums computed once per series.

    ``sum(key, d)`` is NaN unless all ``d`` values exist. Keys are a series name or a derived
    series: ``("c", x)`` x centred on its first value (keeps the sums small), ``("cc", x, y)``
    the product of two centred series, ``("abs", x)``, ``("k", x)`` centred x times the row
    index. Every window length reuses the same running sums.
    """

    def __init__(self, **series: np.ndarray) -> None:
        self.series = series
        self._running: dict = {}

    def _make(self, key) -> np.ndarray:
        if isinstance(key, str):
            return self.series[key]
        kind, *names = key
        x = self.series[names[0]]
        if kind == "abs":
            return np.abs(x)
        x = x - fill_leading(x)[0][:1]  # centred
        if kind == "c":
            return x
        if kind == "k":
            return np.arange(len(x), dtype=np.float64)[:, None] * x
        y = self.series[names[1]]
        return x * (y - fill_leading(y)[0][:1])  # "cc"

    def sum(self, key, d: int) -> np.ndarray:
        if key not in self._running:
            x = self._make(key)
            finite = ~np.isnan(x)
            self._running[key] = (
                np.cumsum(np.where(finite, x, 0.0), axis=0),
                np.cumsum(finite, axis=0, dtype=np.int32),
            )
        total, count = self._running[key]
        out, n = total.copy(), count.copy()
        out[d:] -= total[:-d]
        n[d:] -= count[:-d]
        out[n < d] = np.nan
        return out

    def mean(self, key, d: int) -> np.ndarray:
        return self.sum(key, d) / d

    def var(self, name: str, d: int) -> np.ndarray:
        """Population variance over the last ``d`` bars; 0 where it is rounding noise."""
        mean = self.mean(("c", name), d)
        var = self.mean(("cc", name, name), d) - mean * mean
        scale = self.mean(("abs", name), d)
        return np.where(var <= FLAT * scale * scale, 0.0, var)

    def std(self, name: str, d: int) -> np.ndarray:
        """Sample standard deviation (``ddof=1``, pandas) over the last ``d`` bars."""
        return np.sqrt(self.var(name, d) * d / (d - 1))

    def corr(self, x: str, y: str, d: int) -> np.ndarray:
        """Pearson correlation over the last ``d`` bars; NaN if one side is flat."""
        cov = self.mean(("cc", x, y), d) - self.mean(("c", x), d) * self.mean(("c", y), d)
        vx, vy = self.var(x, d), self.var(y, d)
        return np.where((vx == 0) | (vy == 0), np.nan, cov / np.sqrt(vx * vy))

    def regression(self, name: str, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Least squares of the last ``d`` values on ``x = 1..d``: ``(slope, R^2, residual
        at t)``; ``R^2`` is NaN for a flat window (qlib divides 0 by 0 there too)."""
        k = np.arange(len(self.series[name]), dtype=np.float64)[:, None]  # (T, 1) row index
        w1 = self.sum(("c", name), d)
        # sum of j * y_j with j = 1..d: the row-index-weighted sum shifted to the window start
        wj = self.sum(("k", name), d) - (k - d) * w1
        mean_j, var_j = (d + 1) / 2.0, (d * d - 1) / 12.0
        mean_y = w1 / d
        cov = wj / d - mean_j * mean_y
        slope = cov / var_j
        centred = self._make(("c", name))
        resi = centred - (mean_y + slope * (d - mean_j))
        var_y = self.var(name, d)
        rsq = np.where(var_y == 0, np.nan, cov * cov / (var_j * var_y))
        return slope, rsq, resi


def _order_stats(close: np.ndarray, high: np.ndarray, low: np.ndarray, d: int) -> dict:
    """Window order statistics ``[T, N]``: ``q80``/``q20`` of close (linear interpolation),
    ``rank`` (percentile of the last close, ties averaged), ``imax``/``imin`` (1-based position
    of the first max high / min low from the window's oldest bar). NaN unless the window is full.
    """
    T, N = close.shape
    out = {k: np.full((T, N), np.nan) for k in ("q80", "q20", "rank", "imax", "imin")}
    if T < d:
        return out
    block = max(1, BLOCK_CELLS // (T * d))
    quantiles = []
    for q in (0.8, 0.2):
        pos = q * (d - 1)
        lo_i = int(np.floor(pos))
        quantiles.append((lo_i, min(lo_i + 1, d - 1), pos - lo_i))
    for a in range(0, N, block):  # blocks of stocks bound the memory of the windows
        cols = slice(a, a + block)
        win = sliding_window_view(close[:, cols], d, axis=0)  # (T - d + 1, b, d)
        full = ~np.isnan(win).any(axis=-1)  # (T - d + 1, b)
        srt = np.sort(win, axis=-1)
        for key, (i, j, frac) in zip(("q80", "q20"), quantiles, strict=True):
            value = srt[..., i] + (srt[..., j] - srt[..., i]) * frac
            out[key][d - 1 :, cols] = np.where(full, value, np.nan)
        last = win[..., -1:]
        rank = (win < last).sum(axis=-1) + ((win == last).sum(axis=-1) + 1) / 2.0
        out["rank"][d - 1 :, cols] = np.where(full, rank / d, np.nan)
        for key, x, pick in (("imax", high, np.argmax), ("imin", low, np.argmin)):
            win = sliding_window_view(x[:, cols], d, axis=0)
            full = ~np.isnan(win).any(axis=-1)
            out[key][d - 1 :, cols] = np.where(full, pick(win, axis=-1) + 1.0, np.nan)
    return out
