"""A batch for ``relcast update`` must continue the run (issue #27, class 3): the same
frequency, no skipped trading days (so no batch years ahead), and the neighbour checks see the
stored bar before the first new one. The checks of :mod:`relcast.data.continuity` on arrays;
the CLI path is in tests/test_runfolder.py::test_update_refuses_a_batch_that_does_not_continue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import relcast
from relcast.data.continuity import check_continuation, continue_run, longest_hole
from relcast.data.panel import RelcastDataError
from relcast.data.readers import read_panel


def _bdays(start: str, n: int) -> np.ndarray:
    return pd.bdate_range(start, periods=n).to_numpy("datetime64[ns]")


RUN = _bdays("2024-01-01", 60)  # 2024-01-01 .. 2024-03-22, no holiday


@pytest.mark.parametrize(
    ("batch", "problem"),
    [
        (_bdays("2024-03-26", 3), "1 weekday"),  # skips Monday 25th
        (_bdays("2024-04-01", 3), "5 weekday"),  # skips a week
        (_bdays("2034-03-27", 3), "weekday"),  # ten years ahead
        (np.r_[_bdays("2024-03-25", 2), _bdays("2024-03-28", 2)], "a day of the batch"),
    ],
    ids=["one day", "a week", "ten years ahead", "a hole inside the batch"],
)
def test_a_batch_that_skips_trading_days_is_refused(batch, problem):
    with pytest.raises(RelcastDataError, match=problem):
        check_continuation(RUN, batch, "new.csv")


def test_the_runs_own_holidays_set_the_allowed_hole():
    # a run whose calendar skipped two weekdays (a holiday) accepts a batch after a
    # two-weekday holiday, not after three
    run = np.r_[_bdays("2024-01-01", 30), _bdays("2024-02-14", 20)]  # 12th, 13th missing
    assert longest_hole(run.astype("datetime64[D]")) == 2
    last = pd.Timestamp(run[-1])
    check_continuation(run, _bdays(last + pd.offsets.BDay(3), 2), "new.csv")
    with pytest.raises(RelcastDataError, match="3 weekday"):
        check_continuation(run, _bdays(last + pd.offsets.BDay(4), 2), "new.csv")
    check_continuation(RUN, _bdays("2024-03-25", 5), "new.csv")  # the next days: fine


def test_the_batch_must_have_the_runs_frequency():
    minutes = (RUN[-1] + np.timedelta64(3, "D") + np.array([570, 571], "timedelta64[m]")).astype(
        "datetime64[ns]"
    )
    with pytest.raises(RelcastDataError, match="trained on daily bars"):
        check_continuation(RUN, minutes, "new.csv")
    intraday_run = (RUN[:, None] + np.array([570, 571], "timedelta64[m]")).ravel()
    with pytest.raises(RelcastDataError, match="trained on intraday bars"):
        check_continuation(intraday_run.astype("datetime64[ns]"), _bdays("2024-03-25", 2), "x")


@pytest.mark.parametrize("case", ["stale", "spike up", "spike down", "clean"])
def test_neighbour_checks_see_the_stored_bar_before_the_batch(case, tmp_path):
    # the update masks exactly what read_panel masks when the batch is part of the file
    panel, _ = relcast.synthetic_market(num_stocks=4, num_days=80, seed=3)
    frame = panel.to_frame()
    first_new = panel.dates[70]
    new_rows = frame["date"].eq(first_new) & frame["symbol"].eq(panel.symbols[1])
    last_old = frame["date"].eq(panel.dates[69]) & frame["symbol"].eq(panel.symbols[1])
    fields = ["open", "high", "low", "close", "volume"]
    if case == "stale":
        frame.loc[new_rows, fields] = frame.loc[last_old, fields].to_numpy()
    elif case.startswith("spike"):
        k = 5.0 if case == "spike up" else 0.2
        frame.loc[new_rows, ["open", "high", "low", "close"]] *= k
    frame.to_csv(tmp_path / "all.csv", index=False)
    frame[frame["date"] < first_new].to_csv(tmp_path / "old.csv", index=False)
    frame[frame["date"] >= first_new].to_csv(tmp_path / "new.csv", index=False)
    whole = read_panel(tmp_path / "all.csv")
    old, new = read_panel(tmp_path / "old.csv"), read_panel(tmp_path / "new.csv")
    n = list(new.symbols).index(panel.symbols[1])
    assert new.mask[0, n]  # alone, the batch's first bar looks fine
    masked = continue_run(old, new, "new.csv")
    assert np.array_equal(new.mask, whole.mask[70:])
    reason = {"stale": "stale_bar", "clean": None}.get(case, "extreme_jump")
    for name, where in masked.items():
        assert list(where) == ([n] if name == reason else [])


def test_symbols_the_run_excluded_stay_excluded():
    panel, _ = relcast.synthetic_market(num_stocks=4, num_days=40, seed=1)
    old, new = panel.select(end=panel.dates[29]), panel.select(start=panel.dates[30])
    continue_run(old, new, "new.csv", excluded={str(panel.symbols[2]): "too many bad rows"})
    assert not new.mask[:, 2].any() and np.isnan(new.values[:, 2]).all()
    assert new.mask[:, [0, 1, 3]].any()
