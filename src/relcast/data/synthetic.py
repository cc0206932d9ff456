"""A synthetic market with planted, known structure, so tests can check what models recover.

Daily simple returns of stock n (one column of the panel per stock, plus one index):

    r[t, n] = beta[n] * market[t]                      index beta
            + sector_factor[t, sector[n]]              sector co-movement
            + strength * r[t - 1, leader[n]]           lead-lag (followers only)
            + sigma[n] * eps[t, n]                     idiosyncratic noise

``market`` follows a Markov chain of regimes (0 bull, 1 bear, 2 sideways) with different
drift and volatility. Leaders and followers are disjoint and come from different sectors where
possible, so the only way to predict a follower's next return from today's data is to look at
its leader: a model that sees the leader's same-day return reaches a Rank IC well above 0.1 on
followers, while the follower's own lag-1 autocorrelation stays near 0.

Prices are ``close = start_level * cumprod(1 + r)``; open, high, low and volume are drawn around
it so that ``0 < low <= min(open, close) <= max(open, close) <= high`` and volume rises with
``|r|``. The index symbol's close follows the market factor. Suspensions and late listings are
masked (NaN values, ``mask=False``); the latent price path continues underneath.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from relcast.data.panel import OHLCV_FIELDS, Panel

__all__ = ["REGIME_NAMES", "SyntheticTruth", "synthetic_market"]

REGIME_NAMES = ("bull", "bear", "sideways")
# daily drift and volatility of the market factor in each regime
REGIME_DRIFT = np.array([0.0015, -0.0015, 0.0])
REGIME_VOL = np.array([0.008, 0.012, 0.006])
SECTOR_VOL = 0.007
IDIO_VOL_RANGE = (0.010, 0.020)
BETA_RANGE = (0.5, 1.5)
# A-share sessions for intraday bars: 09:31-11:30 and 13:01-15:00, one bar per minute
_SESSIONS = ((pd.Timedelta("09:31:00"), 120), (pd.Timedelta("13:01:00"), 120))
_BARS_PER_DAY = sum(n for _, n in _SESSIONS)


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """The structure planted by :func:`synthetic_market`.

    Per-symbol arrays have one entry per panel symbol, in panel order (stocks first, the
    index last), so ``truth.leader_of[n]`` describes ``panel.symbols[n]``.

    Attributes:
        betas: ``[N]`` loading on the market factor (1.0 for the index).
        sector_of: ``[N]`` int sector id (-1 for the index).
        leader_of: ``[N]`` int column of the stock whose return at t drives this stock's
            return at t+1, or -1 if none.
        lead_lag_strength: the planted coefficient of that lead-lag term.
        regime: ``[T]`` int market regime per date: 0 bull, 1 bear, 2 sideways.
        market_returns: ``[T]`` simple returns of the market factor (= the index's returns).
        returns: ``[T, N]`` true simple returns per bar (defined even where masked).
        index_symbol: the index's symbol in the panel.
        idio_vol: ``[N]`` std of each stock's idiosyncratic noise (0 for the index).
    """

    betas: np.ndarray
    sector_of: np.ndarray
    leader_of: np.ndarray
    lead_lag_strength: float
    regime: np.ndarray
    market_returns: np.ndarray
    returns: np.ndarray
    index_symbol: str
    idio_vol: np.ndarray

    @property
    def pairs(self) -> np.ndarray:
        """``int [P, 2]``: the planted ``(leader, follower)`` column pairs."""
        followers = np.flatnonzero(self.leader_of >= 0)
        return np.stack([self.leader_of[followers], followers], axis=1)


def synthetic_market(
    num_stocks: int = 20,
    num_days: int = 600,
    seed: int = 0,
    *,
    num_sectors: int = 4,
    lead_lag_pairs: int | None = None,
    lead_lag_strength: float = 0.35,
    regime_switch_prob: float = 0.02,
    missing_prob: float = 0.0,
    late_listing: int = 0,
    freq: str = "D",
    start: str = "2018-01-01",
) -> tuple[Panel, SyntheticTruth]:
    """Generate a panel of ``num_stocks`` stocks plus one index, and the structure planted in it.

    Args:
        num_stocks: stocks (symbols ``S000``, ``S001``, ...); the index ``INDEX`` comes on top.
        num_days: number of bars T: business days for ``freq="D"``, minutes for ``"1min"``.
        seed: everything is a deterministic function of the arguments.
        num_sectors: sectors ``sector_0``..; stocks are assigned round-robin, then shuffled.
        lead_lag_pairs: number of (leader, follower) pairs; default ``num_stocks // 4``.
        lead_lag_strength: coefficient of the follower's return on the leader's previous one.
        regime_switch_prob: daily probability that the market leaves its current regime.
        missing_prob: probability that a stock is suspended on a given bar (masked).
        late_listing: number of stocks that list later (masked before their first bar).
        freq: ``"D"`` (business days) or ``"1min"`` (A-share sessions, 240 bars a day; drift
            and volatilities are scaled down to one minute).
        start: first calendar day.

    Returns:
        ``(panel, truth)``: a :class:`Panel` with fields ``open, high, low, close, volume`` and
        the :class:`SyntheticTruth`.
    """
    num_pairs = num_stocks // 4 if lead_lag_pairs is None else int(lead_lag_pairs)
    _check_args(num_stocks, num_days, num_sectors, num_pairs, missing_prob, late_listing, freq)
    regime_switch_prob = float(np.clip(regime_switch_prob, 0.0, 1.0))
    rng = np.random.default_rng(seed)
    T, N = num_days, num_stocks
    # one minute bar carries 1/240 of a day's variance and drift
    scale = 1.0 if freq == "D" else 1.0 / _BARS_PER_DAY
    vol_scale = np.sqrt(scale)

    # --- market factor with Markov regimes: switch with prob p, to one of the other two
    switches = rng.random(T) < regime_switch_prob
    switches[0] = False
    steps = np.where(switches, rng.integers(1, 3, size=T), 0)
    regime = (rng.integers(0, 3) + np.cumsum(steps)) % 3  # (T,)
    market = REGIME_DRIFT[regime] * scale + REGIME_VOL[regime] * vol_scale * rng.standard_normal(T)

    # --- stocks: beta, sector, idiosyncratic vol
    betas = rng.uniform(*BETA_RANGE, size=N)
    sector_of = rng.permutation(np.arange(N) % num_sectors)
    idio_vol = rng.uniform(*IDIO_VOL_RANGE, size=N)
    sector_factor = SECTOR_VOL * vol_scale * rng.standard_normal((T, num_sectors))
    noise = idio_vol * vol_scale * rng.standard_normal((T, N))
    returns = betas * market[:, None] + sector_factor[:, sector_of] + noise  # (T, N)

    # --- lead-lag: disjoint leaders and followers; leaders never follow, so one shift suffices
    leader_of = _draw_pairs(rng, sector_of, num_pairs)
    followers = np.flatnonzero(leader_of >= 0)
    returns[1:, followers] += lead_lag_strength * returns[:-1, leader_of[followers]]
    returns = np.maximum(returns, -0.5)  # a price never crosses zero

    # --- the index is the last column; its returns are the market factor
    all_returns = np.concatenate([returns, market[:, None]], axis=1)  # (T, N + 1)
    start_level = np.append(np.exp(rng.uniform(np.log(5.0), np.log(200.0), size=N)), 1000.0)
    vol = np.append(np.sqrt((betas * REGIME_VOL.mean()) ** 2 + idio_vol**2), REGIME_VOL.mean())
    values = _ohlcv(rng, all_returns, start_level, vol * vol_scale)  # (T, N + 1, 5)

    # --- masks: suspensions and late listings (stocks only, the index always trades)
    mask = np.ones((T, N + 1), dtype=bool)
    if missing_prob > 0:
        mask[:, :N] &= rng.random((T, N)) >= missing_prob
    if late_listing:
        late = rng.choice(N, size=late_listing, replace=False)
        first = rng.integers(T // 10, max(T // 2, T // 10 + 1), size=late_listing)
        mask[:, late] &= np.arange(T)[:, None] >= first
    values[~mask] = np.nan

    symbols = np.array([f"S{i:03d}" for i in range(N)] + ["INDEX"])
    meta = pd.DataFrame(
        {
            "symbol": symbols,
            "name": [f"Synthetic {i:03d}" for i in range(N)] + ["Synthetic Index"],
            "sector": [f"sector_{s}" for s in sector_of] + ["index"],
            "market": ["SYN"] * (N + 1),
            "is_index": [False] * N + [True],
        }
    )
    panel = Panel(
        dates=_dates(start, T, freq),
        symbols=symbols,
        fields=OHLCV_FIELDS,
        values=values,
        mask=mask,
        meta=meta,
    )
    truth = SyntheticTruth(
        betas=np.append(betas, 1.0),
        sector_of=np.append(sector_of, -1),
        leader_of=np.append(leader_of, -1),
        lead_lag_strength=float(lead_lag_strength),
        regime=regime,
        market_returns=market,
        returns=all_returns,
        index_symbol="INDEX",
        idio_vol=np.append(idio_vol, 0.0),
    )
    return panel, truth


def _check_args(
    num_stocks: int,
    num_days: int,
    num_sectors: int,
    num_pairs: int,
    missing_prob: float,
    late_listing: int,
    freq: str,
) -> None:
    if num_stocks < 1 or num_days < 2:
        raise ValueError(f"need num_stocks >= 1 and num_days >= 2, got {num_stocks}, {num_days}")
    if num_sectors < 1:
        raise ValueError(f"num_sectors must be >= 1, got {num_sectors}")
    if num_pairs < 0 or 2 * num_pairs > num_stocks:
        raise ValueError(
            f"lead_lag_pairs={num_pairs} needs {2 * num_pairs} distinct stocks but there are "
            f"{num_stocks}; use at most num_stocks // 2 pairs"
        )
    if not 0.0 <= missing_prob < 1.0:
        raise ValueError(f"missing_prob must be in [0, 1), got {missing_prob}")
    if not 0 <= late_listing <= num_stocks:
        raise ValueError(f"late_listing must be in [0, num_stocks], got {late_listing}")
    if freq not in ("D", "1min"):
        raise ValueError(f"freq must be 'D' (business days) or '1min', got {freq!r}")


def _draw_pairs(rng: np.random.Generator, sector_of: np.ndarray, num_pairs: int) -> np.ndarray:
    """``leader_of [N]``: disjoint leaders/followers, from different sectors where possible."""
    N = len(sector_of)
    leader_of = np.full(N, -1, dtype=np.int64)
    if num_pairs == 0:
        return leader_of
    order = rng.permutation(N)
    leaders, rest = order[:num_pairs], order[num_pairs:]
    # for each leader, prefer a follower from another sector (so sector alone cannot explain it)
    cross = sector_of[rest][None, :] != sector_of[leaders][:, None]  # (P, N - P)
    taken = np.zeros(len(rest), dtype=bool)
    for p, leader in enumerate(leaders):  # P <= N / 2 small steps, not a hot path
        candidates = np.flatnonzero(cross[p] & ~taken)
        k = candidates[0] if len(candidates) else np.flatnonzero(~taken)[0]
        taken[k] = True
        leader_of[rest[k]] = leader
    return leader_of


def _ohlcv(
    rng: np.random.Generator, returns: np.ndarray, start_level: np.ndarray, vol: np.ndarray
) -> np.ndarray:
    """Bars ``[T, N, 5]`` (open, high, low, close, volume) from simple returns ``[T, N]``."""
    close = start_level * np.cumprod(1.0 + returns, axis=0)  # (T, N)
    prev_close = np.vstack([start_level[None, :], close[:-1]])
    # overnight gap: part of the move happens at the open
    gap = 0.3 * vol * rng.standard_normal(returns.shape)
    open_ = prev_close * np.exp(gap)
    high = np.maximum(open_, close) * np.exp(0.5 * vol * np.abs(rng.standard_normal(returns.shape)))
    low = np.minimum(open_, close) * np.exp(-0.5 * vol * np.abs(rng.standard_normal(returns.shape)))
    # turnover rises with the size of the move relative to the stock's usual move
    base = np.exp(rng.uniform(np.log(1e5), np.log(1e7), size=returns.shape[1]))
    activity = np.abs(returns) / vol + 0.3 * rng.standard_normal(returns.shape)
    volume = np.round(base * np.exp(0.5 * activity))
    return np.stack([open_, high, low, close, volume], axis=-1).astype(np.float32)


def _dates(start: str, num_bars: int, freq: str) -> np.ndarray:
    """``datetime64[ns] [T]``: business days, or A-share minute bars on business days."""
    if freq == "D":
        return pd.bdate_range(start, periods=num_bars).to_numpy(dtype="datetime64[ns]")
    days = pd.bdate_range(start, periods=-(-num_bars // _BARS_PER_DAY))
    minutes = np.concatenate(
        [(first + pd.to_timedelta(np.arange(n), unit="min")).to_numpy() for first, n in _SESSIONS]
    )  # (240,) offsets within a day
    stamps = days.to_numpy(dtype="datetime64[ns]")[:, None] + minutes[None, :]
    return stamps.reshape(-1)[:num_bars]
