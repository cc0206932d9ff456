"""Feature building: ``relcast.features.build.build_features`` vs a pandas groupby/rolling version.

Two shapes: a broad daily universe (500 stocks x 2500 days) and intraday bars (50 stocks x
60,000 one-minute bars, ``synthetic_market(..., freq="1min")``). The peer is what one
would write with pandas: a long ``(date, symbol)`` frame, ``groupby("symbol")`` with
``rolling`` / ``ewm`` / ``shift`` per indicator (log returns, moving-average ratios, EMA
12/26, RSI 14 (Wilder), MACD 12/26/9, Bollinger 20 %B and width, ATR 14, volatility,
volume ratios), then a per-date cross-sectional z-score (``groupby("date").transform``).
It computes fewer columns than relcast (which also adds index and calendar features, OBV,
stochastics, ...), so the ratio favours pandas; both counts are reported.

Each side runs in a fresh process; time is wall (and CPU) seconds of the call on ready
inputs (the panel for relcast, the long frame for pandas), memory the peak RSS above the
baseline.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import MB, PeakRSS, format_table, ratio, run_isolated, write_result

NAME = "features_throughput"
FULL = [
    dict(label="daily 500 x 2500", num_stocks=500, num_days=2500, freq="D"),
    dict(label="1min 50 x 60000", num_stocks=50, num_days=60_000, freq="1min"),
]
QUICK = [
    dict(label="daily 40 x 300", num_stocks=40, num_days=300, freq="D"),
    dict(label="1min 5 x 3000", num_stocks=5, num_days=3000, freq="1min"),
]


def _panel(case: dict[str, Any]):
    import relcast

    panel, _ = relcast.synthetic_market(
        case["num_stocks"], case["num_days"], seed=0, freq=case["freq"], missing_prob=0.01
    )
    return panel


def run_relcast(case: dict[str, Any]) -> dict[str, Any]:
    """``build_features`` on the panel."""
    from relcast.features.build import build_features

    panel = _panel(case)
    with PeakRSS() as peak:
        t0, c0 = time.perf_counter(), time.process_time()
        features = build_features(panel)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return _row("relcast", case, panel, seconds, cpu, peak, len(features.names))


def pandas_features(df, windows=(5, 10, 20, 60)):
    """The straightforward pandas version: per-symbol indicators, per-date z-scores."""
    import pandas as pd

    df = df.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)
    g = df.groupby("symbol", sort=False)
    out = pd.DataFrame({"date": df["date"], "symbol": df["symbol"]})
    close, high, low, volume = df["close"], df["high"], df["low"], df["volume"]
    logc = np.log(close)

    def per_symbol(series, op):  # groupby(symbol) of a derived column, aligned back
        return op(series.groupby(df["symbol"], sort=False)).reset_index(level=0, drop=True)

    out["ret1"] = logc - g["close"].shift(1).pipe(np.log)
    for w in windows:
        out[f"ret{w}"] = logc - np.log(g["close"].shift(w))
        out[f"ma{w}"] = close / per_symbol(close, lambda s, w=w: s.rolling(w).mean()) - 1
        out[f"vol{w}"] = per_symbol(out["ret1"], lambda s, w=w: s.rolling(w).std())
        if w <= 20:
            mean_v = per_symbol(volume, lambda s, w=w: s.rolling(w).mean())
            out[f"volume_ratio{w}"] = np.log((volume + 1) / (mean_v + 1))
    ema12 = per_symbol(close, lambda s: s.ewm(span=12, adjust=False).mean())
    ema26 = per_symbol(close, lambda s: s.ewm(span=26, adjust=False).mean())
    out["ema12"], out["ema26"] = close / ema12 - 1, close / ema26 - 1
    macd = ema12 - ema26
    signal = per_symbol(macd, lambda s: s.ewm(span=9, adjust=False).mean())
    out["macd"], out["macd_signal"], out["macd_hist"] = (
        macd / close, signal / close, (macd - signal) / close
    )  # fmt: skip
    delta = close - g["close"].shift(1)
    gain = per_symbol(delta.clip(lower=0), lambda s: s.ewm(alpha=1 / 14, adjust=False).mean())
    loss = per_symbol((-delta).clip(lower=0), lambda s: s.ewm(alpha=1 / 14, adjust=False).mean())
    out["rsi14"] = (100 - 100 / (1 + gain / loss) - 50) / 50
    mid = per_symbol(close, lambda s: s.rolling(20).mean())
    std = per_symbol(close, lambda s: s.rolling(20).std(ddof=0))
    out["bb_pctb"] = (close - (mid - 2 * std)) / (4 * std)
    out["bb_width"] = 4 * std / mid
    prev = g["close"].shift(1)
    tr = pd.concat([high - low, (high - prev).abs(), (low - prev).abs()], axis=1).max(axis=1)
    out["atr14"] = per_symbol(tr, lambda s: s.ewm(alpha=1 / 14, adjust=False).mean()) / close
    cols = [c for c in out.columns if c not in ("date", "symbol")]
    by_date = out.groupby("date", sort=False)[cols]
    out[cols] = (out[cols] - by_date.transform("mean")) / by_date.transform("std")
    return out


def run_pandas(case: dict[str, Any]) -> dict[str, Any]:
    """The pandas version on the long frame of the same panel."""
    panel = _panel(case)
    df = panel.to_frame()
    df = df[~df["symbol"].isin(panel.symbols[panel.is_index])].dropna(subset=["close"])
    with PeakRSS() as peak:
        t0, c0 = time.perf_counter(), time.process_time()
        out = pandas_features(df)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return _row("pandas", case, panel, seconds, cpu, peak, out.shape[1] - 2)


def _row(side, case, panel, seconds, cpu, peak, num_features) -> dict[str, Any]:
    cells = int(panel.mask.sum())
    return {
        "case": case["label"],
        "side": side,
        "bars": cells,
        "features": num_features,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "bars_per_s": cells / seconds,
        "feature_values_per_s": cells * num_features / seconds,
        "peak_rss_mb": peak.delta / MB,
    }


def run(quick: bool = False, results_dir=None) -> dict[str, Any]:
    """Time both sides on each case, print the table, write the JSON."""
    rows, ratios = [], {}
    for case in QUICK if quick else FULL:
        ours = run_isolated(run_relcast, case, isolate=not quick)
        theirs = run_isolated(run_pandas, case, isolate=not quick)
        rows += [ours, theirs]
        ratios[case["label"]] = {
            "speedup_seconds": ratio(theirs["seconds"], ours["seconds"]),
            "speedup_cpu_seconds": ratio(theirs["cpu_seconds"], ours["cpu_seconds"]),
            "speedup_feature_values_per_s": ratio(
                ours["feature_values_per_s"], theirs["feature_values_per_s"]
            ),
            "peak_rss_relcast_over_pandas": ratio(ours["peak_rss_mb"], theirs["peak_rss_mb"]),
        }
    result = {"cases": QUICK if quick else FULL, "rows": rows, "ratios": ratios}
    write_result(NAME, result, results_dir)
    print(f"\n## {NAME}: build_features vs pandas groupby/rolling\n")
    print(format_table(rows))
    print()
    print(format_table([{"case": k, **v} for k, v in ratios.items()]))
    return result


if __name__ == "__main__":
    run()
