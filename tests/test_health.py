"""Data-health account: every planted problem is masked or repaired and counted exactly."""

import json

import numpy as np
import pandas as pd
import pytest

from relcast.data.health import REASONS, DataHealth
from relcast.data.panel import RelcastDataError
from relcast.data.readers import read_panel

FIELDS = ["open", "high", "low", "close", "volume"]


def clean_bars(num_days: int = 100, seed: int = 1) -> pd.DataFrame:
    """3 symbols; prices stay near 50 (no accidental spikes, repeats or bad bars)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=num_days)
    frames = []
    for sym in ("AAA", "BBB", "CCC"):
        close = 50 + np.cumsum(rng.integers(-4, 5, num_days)) / 8
        open_ = close + rng.integers(-4, 5, num_days) / 8
        frames.append(
            pd.DataFrame(
                {
                    "date": dates.strftime("%Y-%m-%d"),
                    "symbol": sym,
                    "open": open_,
                    "high": np.maximum(open_, close) + 0.25,
                    "low": np.minimum(open_, close) - 0.25,
                    "close": close,
                    "volume": rng.integers(100, 1000, num_days).astype(float),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def plant(bars: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Plant one problem of each kind; returns the table and ``{(symbol, day): reason}``."""
    bars = bars.copy()
    row = {s: bars.index[bars["symbol"] == s][0] for s in ("AAA", "BBB", "CCC")}
    planted = {}

    def at(sym: str, day: int, reason: str) -> int:
        planted[(sym, day)] = reason
        return row[sym] + day

    bars.loc[at("AAA", 10, "nonpositive_price"), "close"] = 0.0
    bars.loc[at("AAA", 20, "inf"), "high"] = np.inf
    bars.loc[at("AAA", 30, "missing_value"), "volume"] = np.nan
    bars.loc[at("BBB", 10, "missing_open"), ["open", "high", "low", "volume"]] = 0.0
    i = at("BBB", 20, "high_below_low")
    bars.loc[i, ["high", "low"]] = [bars.loc[i, "low"] - 1, bars.loc[i, "high"] + 1]
    i = at("BBB", 30, "high_low_range")  # high 1/8 below the close: widened, kept
    bars.loc[i, "high"] = bars.loc[i, ["open", "close"]].max() - 0.125
    bars.loc[at("CCC", 10, "negative_volume"), "volume"] = -5.0
    i = at("CCC", 20, "stale_bar")
    bars.loc[i, FIELDS] = bars.loc[i - 1, FIELDS].to_numpy()
    i = at("CCC", 30, "extreme_jump")  # a one-bar spike x5, consistent high/low
    bars.loc[i, ["open", "high", "low", "close"]] *= 5
    gap = row["CCC"] + 40  # a missing row
    duplicate = bars.loc[[row["CCC"] + 50]]  # an identical repeat
    bars = pd.concat([bars.drop(index=gap), duplicate], ignore_index=True)
    return bars, planted


def test_clean_data_has_an_empty_account(tmp_path):
    path = tmp_path / "bars.csv"
    clean_bars().to_csv(path, index=False)
    panel = read_panel(path)
    assert panel.health.totals() == {} and panel.health.rows == 300 and panel.mask.all()


def test_planted_problems_are_counted_exactly(tmp_path):
    bars, planted = plant(clean_bars())
    path = tmp_path / "bars.csv"
    bars.to_csv(path, index=False)
    panel = read_panel(path)
    health = panel.health
    want = {reason: 1 for reason in planted.values()} | {"gap": 1, "duplicate_bar": 1}
    assert health.totals() == {r: want[r] for r in REASONS if r in want}
    for (sym, day), reason in planted.items():
        assert health.counts[reason] == {sym: 1}
        n = list(panel.symbols).index(sym)
        if REASONS[reason][0] == "masked":
            assert not panel.mask[day, n] and np.isnan(panel.values[day, n]).all()
        else:
            assert panel.mask[day, n]
    assert health.counts["gap"] == {"CCC": 1} and not panel.mask[40, 2]
    assert panel.mask.sum() == 300 - 9  # 8 masked rows + 1 gap; the duplicate adds nothing
    # the repair widens high to max(open, close) and leaves the other fields alone
    i = bars.index[(bars["symbol"] == "BBB")][30]
    b = list(panel.symbols).index("BBB")
    assert panel.field("high")[30, b] == np.float32(max(bars.loc[i, "open"], bars.loc[i, "close"]))
    assert panel.field("close")[30, b] == np.float32(bars.loc[i, "close"])
    assert health.changed_rows() == 9  # 7 masked (suspension not counted), 1 repaired, 1 dropped


def test_too_many_bad_rows_in_one_symbol_is_fatal(tmp_path):
    bars, _ = plant(clean_bars())
    path = tmp_path / "bars.csv"
    bars.to_csv(path, index=False)
    # CCC has 3 bad rows of 99 (negative volume, stale, spike; a gap is no bad row)
    read_panel(path, max_bad_fraction=0.031)
    with pytest.raises(RelcastDataError, match=r"3 of 99 rows of symbol CCC are bad"):
        read_panel(path, max_bad_fraction=0.02)


def test_account_round_trip_and_table(tmp_path):
    bars, _ = plant(clean_bars())
    bars.to_csv(tmp_path / "bars.csv", index=False)
    health = read_panel(tmp_path / "bars.csv").health
    path = health.save(tmp_path / "data_health.json")
    data = json.loads(path.read_text())
    assert data["totals"]["high_low_range"] == 1 and data["actions"]["high_low_range"] == "repaired"
    again = DataHealth.from_dict(data)
    assert again.counts == health.counts and again.rows == health.rows
    text = health.table()
    assert "extreme_jump" in text and "masked" in text and "CCC 1" in text


def test_health_survives_select():
    bars = clean_bars(num_days=10)
    health = DataHealth("x", rows=30, counts={"gap": {"AAA": 2}})
    from relcast.data.readers import frame_to_panel

    bars["date"] = pd.to_datetime(bars["date"])
    panel = frame_to_panel(bars, None, health)
    assert panel.select(symbols=["AAA"], start="2020-01-03").health is health


def test_relcast_check_prints_the_account(tmp_path):
    from typer.testing import CliRunner

    from relcast.cli import app

    bars, _ = plant(clean_bars())
    bars.to_csv(tmp_path / "bars.csv", index=False)
    result = CliRunner().invoke(app, ["check", "--data", str(tmp_path / "bars.csv")])
    assert result.exit_code == 0, result.output
    assert "stale_bar" in result.output and "high_low_range" in result.output
    assert "repaired" in result.output
    result = CliRunner().invoke(
        app, ["check", "--data", str(tmp_path / "bars.csv"), "--set", "data.max_bad_fraction=0"]
    )
    assert result.exit_code == 2 and "max_bad_fraction" in result.output


def test_run_prepare_writes_data_health_and_date_split(tmp_path):
    from relcast.config import load_config
    from relcast.evaluation.report import _data_health_html
    from relcast.run.runner import Pipeline

    bars, _ = plant(clean_bars(num_days=260))
    bars.to_csv(tmp_path / "bars.csv", index=False)
    sets = [
        f"data.source={tmp_path / 'bars.csv'}",
        "split.train_end=2020-08-31",
        "split.valid_end=2020-10-30",
        "trainer.progress=false",
        "evaluation.topk=1",
        "evaluation.n_drop=0",
    ]
    pipe = Pipeline(load_config("small", overrides=sets), tmp_path / "run")
    pipe.step("prepare")
    health = json.loads((tmp_path / "run" / "data_health.json").read_text())
    assert health["totals"]["stale_bar"] == 1 and health["by_symbol"]["stale_bar"] == {"CCC": 1}
    dates = pd.DatetimeIndex(pipe.ctx.panel.dates)
    split, gap = pipe.ctx.split, pipe.config.embargo + pipe.config.data.label_delay
    assert dates[split.train[-1] + gap] == pd.Timestamp("2020-08-31")
    assert dates[split.valid[0]] == pd.Timestamp("2020-09-01")
    assert dates[split.test[0]] == pd.Timestamp("2020-11-02")
    section = "".join(_data_health_html(tmp_path / "run" / "data_health.json"))
    assert "Data health" in section and "stale_bar" in section and "CCC 1" in section
