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

from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from relcast.data.panel import OHLCV_FIELDS, Panel, release_pages

__all__ = ["REGIME_NAMES", "SyntheticTruth", "synthetic_market", "synthetic_market_file"]

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


@dataclass(frozen=True)
class MarketShape:
    """What a synthetic market plants and how it trades: the arguments of
    :func:`synthetic_market` beyond its size, seed and first day."""

    num_sectors: int = 4
    lead_lag_pairs: int | None = None
    lead_lag_strength: float = 0.35
    regime_switch_prob: float = 0.02
    missing_prob: float = 0.0
    late_listing: int = 0
    freq: str = "D"

    @classmethod
    def of(cls, shape: MarketShape | None = None, **changes) -> MarketShape:
        """``shape`` (default: the defaults) with ``changes``; an unknown name is an error
        naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(
                f"synthetic_market() got unknown argument(s) {unknown}; known: {sorted(known)}"
            )
        return replace(shape or cls(), **changes)


def synthetic_market(
    num_stocks: int = 20,
    num_days: int = 600,
    seed: int = 0,
    *,
    shape: MarketShape | None = None,
    start: str = "2018-01-01",
    **changes,
) -> tuple[Panel, SyntheticTruth]:
    """Generate a panel of ``num_stocks`` stocks plus one index, and the structure planted in it.

    Args:
        num_stocks: stocks (symbols ``S000``, ``S001``, ...); the index ``INDEX`` comes on top.
        num_days: number of bars T: business days for ``freq="D"``, minutes for ``"1min"``.
        seed: everything is a deterministic function of the arguments.
        shape: the market's :class:`MarketShape`; any of its fields can also be given by
            name (``missing_prob=0.05``), on top of ``shape``:
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
    shape = MarketShape.of(shape, **changes)
    plan = _Plan(num_stocks, num_days, seed, shape, block_dates=num_days)
    T, N = num_days, num_stocks
    values = np.empty((T, N + 1, len(OHLCV_FIELDS)), dtype=np.float32)
    mask = np.empty((T, N + 1), dtype=bool)
    returns = np.empty((T, N + 1))
    plan.fill(values, mask, returns)
    truth = SyntheticTruth(
        betas=np.append(plan.betas, 1.0),
        sector_of=np.append(plan.sector_of, -1),
        leader_of=np.append(plan.leader_of, -1),
        lead_lag_strength=float(shape.lead_lag_strength),
        regime=plan.regime,
        market_returns=plan.market,
        returns=returns,
        index_symbol="INDEX",
        idio_vol=np.append(plan.idio_vol, 0.0),
    )
    return plan.panel(values, mask, start), truth


def synthetic_market_file(
    values_path: str | Path,
    num_stocks: int = 20,
    num_days: int = 600,
    seed: int = 0,
    *,
    block_dates: int = 4096,
    start: str = "2018-01-01",
    **changes,
) -> Panel:
    """The panel of :func:`synthetic_market` (the same arguments, the same values bit for bit)
    written a block of ``block_dates`` dates at a time into ``values_path`` (a ``.npy`` file),
    for markets larger than memory: its ``values`` are a memory map of that file (copy-on-write)
    and only ``mask`` (``T x N`` bytes) and per-date or per-stock arrays are in memory. The
    truth is not returned (its ``returns`` would be a ``[T, N]`` array)."""
    from numpy.lib.format import open_memmap

    plan = _Plan(num_stocks, num_days, seed, MarketShape.of(**changes), block_dates=block_dates)
    T, N = num_days, num_stocks
    values = open_memmap(values_path, "w+", np.float32, (T, N + 1, len(OHLCV_FIELDS)))
    mask = np.empty((T, N + 1), dtype=bool)
    plan.fill(values, mask, None, release=partial(release_pages, values))
    values.flush()
    del values  # the file is complete: map it again, copy-on-write
    return plan.panel(np.load(values_path, mmap_mode="c"), mask, start)


class _Plan:
    """Everything :func:`synthetic_market` draws except its ``[T, N]`` arrays, and the generator
    states that draw those a block of dates at a time, so the market can be written block by
    block with the numbers a single draw of each array gives (the random stream is the same:
    the big arrays are drawn once here to step over them, keeping only the states)."""

    def __init__(
        self, num_stocks: int, num_days: int, seed: int, shape: MarketShape, block_dates: int
    ) -> None:
        num_sectors, freq, late_listing = shape.num_sectors, shape.freq, shape.late_listing
        lead_lag_pairs, missing_prob = shape.lead_lag_pairs, shape.missing_prob
        lead_lag_strength, regime_switch_prob = shape.lead_lag_strength, shape.regime_switch_prob
        num_pairs = num_stocks // 4 if lead_lag_pairs is None else int(lead_lag_pairs)
        _check_args(num_stocks, num_days, num_sectors, num_pairs, missing_prob, late_listing, freq)
        regime_switch_prob = float(np.clip(regime_switch_prob, 0.0, 1.0))
        rng = np.random.default_rng(seed)
        T, N = num_days, num_stocks
        self.T, self.N, self.freq = T, N, freq
        self.block = max(1, int(block_dates))
        self.strength, self.missing_prob = lead_lag_strength, missing_prob
        self.states: dict[str, list[dict]] = {}
        # one minute bar carries 1/240 of a day's variance and drift
        scale = 1.0 if freq == "D" else 1.0 / _BARS_PER_DAY
        self.vol_scale = vol_scale = np.sqrt(scale)

        # --- market factor with Markov regimes: switch with prob p, to one of the other two
        switches = rng.random(T) < regime_switch_prob
        switches[0] = False
        steps = np.where(switches, rng.integers(1, 3, size=T), 0)
        self.regime = (rng.integers(0, 3) + np.cumsum(steps)) % 3  # (T,)
        self.market = REGIME_DRIFT[self.regime] * scale + REGIME_VOL[
            self.regime
        ] * vol_scale * rng.standard_normal(T)

        # --- stocks: beta, sector, idiosyncratic vol
        self.betas = rng.uniform(*BETA_RANGE, size=N)
        self.sector_of = rng.permutation(np.arange(N) % num_sectors)
        self.idio_vol = rng.uniform(*IDIO_VOL_RANGE, size=N)
        self.sector_factor = SECTOR_VOL * vol_scale * rng.standard_normal((T, num_sectors))
        self._step_over(rng, "noise", N)  # idiosyncratic noise [T, N]

        # --- lead-lag: disjoint leaders and followers; leaders never follow
        self.leader_of = _draw_pairs(rng, self.sector_of, num_pairs)
        self.followers = np.flatnonzero(self.leader_of >= 0)
        self.start_level = np.append(
            np.exp(rng.uniform(np.log(5.0), np.log(200.0), size=N)), 1000.0
        )
        vol = np.append(
            np.sqrt((self.betas * REGIME_VOL.mean()) ** 2 + self.idio_vol**2), REGIME_VOL.mean()
        )
        self.vol = vol * vol_scale  # (N + 1,) the bars' scale of moves
        for name in ("gap", "high", "low"):  # OHLC around the close
            self._step_over(rng, name, N + 1)
        self.base = np.exp(rng.uniform(np.log(1e5), np.log(1e7), size=N + 1))  # volume level
        self._step_over(rng, "activity", N + 1)

        # --- masks: suspensions and late listings (stocks only, the index always trades)
        if missing_prob > 0:
            self._step_over(rng, "missing", N, uniform=True)
        self.late, self.first = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if late_listing:
            self.late = rng.choice(N, size=late_listing, replace=False)
            self.first = rng.integers(T // 10, max(T // 2, T // 10 + 1), size=late_listing)

    def _step_over(self, rng: np.random.Generator, name: str, width: int, uniform=False) -> None:
        """Record the generator's state at each block of a ``[T, width]`` draw and step over it."""
        states = self.states[name] = []
        for a in range(0, self.T, self.block):
            states.append(rng.bit_generator.state)
            rows = min(self.T, a + self.block) - a
            rng.random((rows, width)) if uniform else rng.standard_normal((rows, width))

    def _draw(self, name: str, k: int, shape: tuple[int, int], uniform=False) -> np.ndarray:
        rng = np.random.default_rng()
        rng.bit_generator.state = self.states[name][k]
        return rng.random(shape) if uniform else rng.standard_normal(shape)

    def fill(self, values, mask, returns=None, release=None) -> None:
        """Write ``values [T, N + 1, 5]``, ``mask [T, N + 1]`` and (if given) the true simple
        returns ``[T, N + 1]`` block by block; ``release()`` after each block."""
        T, N, f = self.T, self.N, self.followers
        leaders = self.leader_of[f]
        last_r = None  # the previous block's last returns (before the floor at -0.5)
        growth = np.ones(N + 1)  # cumprod(1 + r) up to the previous block
        last_close = self.start_level
        for k, a in enumerate(range(0, T, self.block)):
            b = min(T, a + self.block)
            noise = self.idio_vol * self.vol_scale * self._draw("noise", k, (b - a, N))
            r = (
                self.betas * self.market[a:b, None]
                + self.sector_factor[a:b][:, self.sector_of]
                + noise
            )
            lagged = (
                r[:-1, leaders]
                if last_r is None
                else np.vstack([last_r[None, leaders], r[:-1, leaders]])
            )
            last_r = r[-1].copy()
            r[(1 if a == 0 else 0) :, f] += self.strength * lagged  # a price never crosses zero:
            r = np.concatenate([np.maximum(r, -0.5), self.market[a:b, None]], axis=1)  # (t, N + 1)
            if returns is not None:
                returns[a:b] = r
            growth_blk = np.cumprod(np.vstack([growth[None, :], 1.0 + r]), axis=0)[1:]
            growth = growth_blk[-1]
            close = self.start_level * growth_blk
            prev_close = np.vstack([last_close[None, :], close[:-1]])
            last_close = close[-1]
            shape = r.shape
            # overnight gap: part of the move happens at the open
            open_ = prev_close * np.exp(0.3 * self.vol * self._draw("gap", k, shape))
            vol = self.vol
            high = np.maximum(open_, close) * np.exp(
                0.5 * vol * np.abs(self._draw("high", k, shape))
            )
            low = np.minimum(open_, close) * np.exp(
                -0.5 * vol * np.abs(self._draw("low", k, shape))
            )
            # turnover rises with the size of the move relative to the stock's usual move
            activity = np.abs(r) / vol + 0.3 * self._draw("activity", k, shape)
            volume = np.round(self.base * np.exp(0.5 * activity))
            block = np.stack([open_, high, low, close, volume], axis=-1).astype(np.float32)
            ok = np.ones(shape, dtype=bool)
            if self.missing_prob > 0:
                ok[:, :N] &= self._draw("missing", k, (b - a, N), uniform=True) >= self.missing_prob
            if len(self.late):
                ok[:, self.late] &= np.arange(a, b)[:, None] >= self.first
            block[~ok] = np.nan
            values[a:b] = block
            mask[a:b] = ok
            if release is not None:
                release()

    def panel(self, values: np.ndarray, mask: np.ndarray, start: str) -> Panel:
        N = self.N
        symbols = np.array([f"S{i:03d}" for i in range(N)] + ["INDEX"])
        meta = pd.DataFrame(
            {
                "symbol": symbols,
                "name": [f"Synthetic {i:03d}" for i in range(N)] + ["Synthetic Index"],
                "sector": [f"sector_{s}" for s in self.sector_of] + ["index"],
                "market": ["SYN"] * (N + 1),
                "is_index": [False] * N + [True],
            }
        )
        dates = _dates(start, self.T, self.freq)
        return Panel(
            dates=dates, symbols=symbols, fields=OHLCV_FIELDS, values=values, mask=mask, meta=meta
        )


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
