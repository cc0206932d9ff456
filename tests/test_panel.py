import numpy as np
import pandas as pd
import pytest

from relcast import Panel


def _panel():
    dates = pd.date_range("2020-01-01", periods=4, freq="D").to_numpy()
    values = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2) + 1
    mask = np.ones((4, 3), dtype=bool)
    mask[0, 2] = False  # late listing
    mask[2, 1] = False  # suspension
    values[~mask] = np.nan
    meta = pd.DataFrame(
        {"symbol": ["B", "A", "IDX"], "sector": ["tech", "bank", "index"], "is_index": [0, 0, 1]}
    )
    return Panel(dates, np.array(["B", "A", "IDX"]), ("close", "volume"), values, mask, meta)


def test_frame_round_trip_keeps_mask_and_order():
    p = _panel()
    frame = p.to_frame()
    assert len(frame) == p.mask.sum()  # masked cells are absent, not zero
    q = Panel.from_frame(frame, meta=p.meta)
    assert list(q.symbols) == ["B", "A", "IDX"]
    np.testing.assert_array_equal(q.mask, p.mask)
    np.testing.assert_array_equal(q.values, p.values)
    assert q.is_index.tolist() == [False, False, True]


def test_parquet_round_trip_exact(tmp_path):
    p = _panel()
    # a date on which nothing traded survives the round trip through the file metadata
    p.mask[3] = False
    p.values[3] = np.nan
    q = Panel.read_parquet(p.to_parquet(tmp_path / "p.parquet"))
    np.testing.assert_array_equal(q.dates, p.dates)
    np.testing.assert_array_equal(q.symbols, p.symbols)
    np.testing.assert_array_equal(q.mask, p.mask)
    np.testing.assert_array_equal(q.values, p.values)
    pd.testing.assert_frame_equal(q.meta, p.meta)


def test_select_and_field():
    p = _panel()
    s = p.select(symbols=["IDX", "A"], start="2020-01-02")
    assert s.values.shape == (3, 2, 2)
    np.testing.assert_array_equal(s.field("close"), p.field("close")[1:, [2, 1]])
    with pytest.raises(KeyError, match="open"):
        p.field("open")


def test_rejects_inconsistent_shapes():
    p = _panel()
    with pytest.raises(ValueError, match="strictly increasing"):
        Panel(p.dates[::-1], p.symbols, p.fields, p.values, p.mask)
    with pytest.raises(ValueError, match="mask has shape"):
        Panel(p.dates, p.symbols, p.fields, p.values, p.mask[:2])
