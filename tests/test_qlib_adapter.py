"""The qlib adapter (relcast.qlib_adapter) and the qlib folder writer (relcast.data.qlib).

pyqlib 0.9.7 installs in a venv of its own but not beside the lock (its mlflow wants
pyarrow < 26 and graphene python-dateutil < 3; the lock pins 26.0.1 and 4.0.0), so the
project's venv has no qlib: these tests use ``tests/qlib_double.py`` (a ``DatasetH`` double
and the ``qlib.model.base.Model`` base class) for the missing package only. The last test
runs real qlib on the same demo-derived folder wherever qlib is installed.
"""

from __future__ import annotations

import importlib
import pickle
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_RUN
from qlib_double import FrameDataset, fake_qlib_modules, frame_from_arrays

import relcast
from relcast.data.qlib import STOCKS_MARKET, write_qlib
from relcast.qlib_adapter.forecaster import RelcastForecaster

# the tiny run of the CLI tests, one label column, the hybrid GRU alone
EXTRA = ["data.horizons=1", "stage2.enabled=false", "stage3.feature_sets=[hybrid]"]
DEMO_DATES = 400


def _settings(items) -> dict:
    return {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in items)}


@pytest.fixture(scope="module")
def demo_qlib(tmp_path_factory):
    """The last DEMO_DATES dates of the bundled demo market as a qlib folder + universe."""
    root = tmp_path_factory.mktemp("qlib_demo")
    panel = relcast.load_dataset("demo")
    panel = panel.select(start=panel.dates[-DEMO_DATES])
    folder = write_qlib(panel, root / "qlib")
    universe = root / "universe.csv"
    panel.meta.sort_values("symbol").to_csv(universe, index=False)  # qlib orders by name
    return {"panel": panel, "folder": folder, "universe": universe}


@pytest.fixture(scope="module")
def relcast_run(demo_qlib, tmp_path_factory):
    """relcast's own run on the qlib folder (every step) and a qlib-shaped dataset of the
    very features, labels and spans it used."""
    from relcast.config import load_config
    from relcast.run.runner import Pipeline

    config = load_config(
        "small",
        overrides=TINY_RUN + EXTRA,
        values={
            "data.source": str(demo_qlib["folder"]),
            "data.universe": str(demo_qlib["universe"]),
        },
    )
    pipe = Pipeline(config, tmp_path_factory.mktemp("run") / "run")
    for step in ("prepare", "stage1", "stage2", "extract", "stage3", "evaluate"):
        pipe.step(step)  # `relcast run` without its report (plots take seconds)
    f, dates = pipe.ctx.features, pipe.ctx.features.dates
    # qlib's rows: every listed (date, instrument), NaN features in the warm-up
    frame = frame_from_arrays(
        dates, f.symbols, f.values, f.names, pipe.ctx.labels, pipe.ctx.panel.mask
    )
    spans = {k: getattr(pipe.ctx.split, k) for k in ("train", "valid", "test")}
    dataset = FrameDataset(frame, {k: (dates[i[0]], dates[i[-1]]) for k, i in spans.items()})
    return {"pipe": pipe, "dataset": dataset}


@pytest.fixture(scope="module")
def fitted(relcast_run):
    pipe = relcast_run["pipe"]
    model = RelcastForecaster(
        "small",
        _settings(TINY_RUN + EXTRA),
        sectors=dict(zip(pipe.ctx.panel.symbols, pipe.ctx.panel.sectors, strict=True)),
        index_instruments=["SPX"],
    )
    return model.fit(relcast_run["dataset"])


def _daily_rank_ic(table: pd.DataFrame, column: str) -> float:
    per_date = table.groupby("date")[[column, "label"]].corr(method="spearman")
    return float(per_date.xs(column, level=1)["label"].mean())


# ---------------------------------------------------------------------------- the folder
def test_write_qlib_is_read_back_and_uses_qlibs_layout(tmp_path):
    panel = relcast.load_dataset("demo")
    listed = int(np.flatnonzero(panel.symbols == "GOOG")[0])
    first = int(panel.mask[:, listed].argmax())  # GOOG lists inside the span written
    panel = panel.select(start=panel.dates[first - 20], end=panel.dates[first + 80])
    folder = write_qlib(panel, tmp_path / "q")

    back = relcast.read_panel(folder)
    traded = panel.mask.any(axis=0)  # NYX lists after the span: left out, as documented
    assert "NYX" in panel.symbols[~traded] and "NYX" not in back.symbols
    order = [list(back.symbols).index(s) for s in panel.symbols[traded]]
    np.testing.assert_array_equal(back.mask[:, order], panel.mask[:, traded])
    ohlcv = [back.fields.index(n) for n in panel.fields]
    np.testing.assert_array_equal(back.values[:, order][..., ohlcv], panel.values[:, traded])
    # qlib's .bin: the calendar index of the first traded date, then one float32 a date
    goog = np.fromfile(folder / "features" / "goog" / "close.day.bin", dtype="<f4")
    assert goog[0] == 20 and len(goog) == 1 + panel.num_dates - 20
    days = (folder / "calendars" / "day.txt").read_text().split()
    assert days[20] == str(pd.Timestamp(panel.dates[20]).date())
    stocks = (folder / "instruments" / f"{STOCKS_MARKET}.txt").read_text()
    assert "SPX" in (folder / "instruments" / "all.txt").read_text() and "SPX" not in stocks
    assert f"GOOG\t{days[20]}\t{days[-1]}" in stocks
    with pytest.raises(relcast.RelcastDataError, match="not empty"):
        write_qlib(panel, folder)


# ---------------------------------------------------------------------------- the adapter
def _beside_the_run(pred: pd.Series, pipe, model: str) -> pd.DataFrame:
    """The run's horizon-1 forecasts of ``model`` (predictions.parquet) with ``pred`` beside
    them as column ``adapter``."""
    ours = pred.rename("adapter").reset_index()
    ours = ours.rename(columns={"datetime": "date", "instrument": "symbol"})
    run = pd.read_parquet(pipe.dir / "predictions.parquet")
    run = run[(run["model"] == model) & (run["horizon"] == 1)]
    both = run.merge(ours, on=["date", "symbol"], how="left")
    assert len(both) == len(run) > 0 and both["adapter"].notna().all()
    return both


def test_adapter_forecast_is_relcasts_own_run(relcast_run, fitted):
    """Same features, labels and spans: the adapter's test forecast is the run's hybrid GRU
    forecast (predictions.parquet) to float32 precision, so its daily Rank IC is the run's."""
    pipe = relcast_run["pipe"]
    both = _beside_the_run(fitted.predict(relcast_run["dataset"], "test"), pipe, "hybrid_gru")
    np.testing.assert_allclose(both["adapter"], both["pred"], rtol=0, atol=1e-5)
    assert _daily_rank_ic(both, "adapter") == pytest.approx(_daily_rank_ic(both, "pred"), abs=1e-6)
    # the run's Stage1 early-stopped on the same validation Rank IC
    assert fitted.stage1_val_rank_ic_ == pytest.approx(
        pipe.ctx.folder.run_info()["steps"]["stage1"]["best_val_rank_ic"], abs=1e-6
    )


def test_stage1_forecast_is_the_runs_stage1(relcast_run, fitted):
    model = RelcastForecaster(fitted.preset, fitted.settings, forecast="stage1",
                              sectors=fitted.sectors, index_instruments=["SPX"])  # fmt: skip
    model.fit(relcast_run["dataset"])
    assert not hasattr(model, "stage3_")  # no store, no Stage3 for a Stage1 forecast
    pred = model.predict(relcast_run["dataset"], "test")
    both = _beside_the_run(pred, relcast_run["pipe"], "stage1")
    np.testing.assert_allclose(both["adapter"], both["pred"], rtol=0, atol=1e-5)


def test_predict_is_indexed_like_qlib_and_survives_qlibs_pickle(relcast_run, fitted):
    dataset = relcast_run["dataset"]
    pred = fitted.predict(dataset, "test")
    rows = dataset.prepare("test", col_set="feature", data_key="infer").index
    assert pred.index.equals(rows) and list(pred.index.names) == ["datetime", "instrument"]
    is_index = pred.index.get_level_values("instrument") == "SPX"
    assert pred[is_index].isna().all() and pred[~is_index].notna().all()  # context only
    # qlib saves the fitted model with pickle (R.save_objects) and predicts with the copy
    again = pickle.loads(pickle.dumps(fitted)).predict(dataset, "test")
    pd.testing.assert_series_equal(again, pred)
    # a later segment given as a slice; an unknown instrument gets NaN, not an error
    first, last = dataset.segments["test"]
    rows_of = dataset.frame.index.get_level_values
    extra = dataset.frame[(rows_of("datetime") >= first) & (rows_of("instrument") == "AAPL")]
    extra = extra.rename(index={"AAPL": "NEWCO"}, level="instrument")
    bigger = FrameDataset(pd.concat([dataset.frame, extra]), dataset.segments)
    out = fitted.predict(bigger, slice(first, last))
    newco = out.index.get_level_values("instrument") == "NEWCO"
    assert newco.any() and out[newco].isna().all()
    pd.testing.assert_series_equal(out[~newco], pred, check_names=False)


def test_fit_refuses_a_dataset_without_a_valid_segment(relcast_run):
    dataset = relcast_run["dataset"]
    lonely = FrameDataset(dataset.frame, {"train": dataset.segments["train"]})
    with pytest.raises(relcast.RelcastDataError, match="no segment 'valid'"):
        RelcastForecaster().fit(lonely)


# ---------------------------------------------------------------------------- qlib's Model
def test_model_without_qlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "qlib", None)  # as if pyqlib were not installed
    monkeypatch.delitem(sys.modules, "relcast.qlib_adapter.model", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'relcast\[qlib\]'"):
        importlib.import_module("relcast.qlib_adapter.model")


def test_relcast_model_is_a_qlib_model(monkeypatch, relcast_run, fitted):
    if importlib.util.find_spec("qlib") is None:
        for name, module in fake_qlib_modules().items():
            monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "relcast.qlib_adapter.model", raising=False)
    from qlib.model.base import Model

    from relcast.qlib_adapter.model import RelcastModel

    model = RelcastModel(**{k: getattr(fitted, k) for k in ("preset", "settings", "sectors")},
                         index_instruments=fitted.index_instruments)  # fmt: skip
    assert isinstance(model, Model)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict(relcast_run["dataset"])
    model.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_")})
    pd.testing.assert_series_equal(
        model.predict(relcast_run["dataset"]), fitted.predict(relcast_run["dataset"], "test")
    )
    monkeypatch.delitem(sys.modules, "relcast.qlib_adapter.model", raising=False)


# ---------------------------------------------------------------------------- real qlib
def _real_qlib():
    qlib = pytest.importorskip("qlib", reason="pyqlib is not installed beside the lock")
    if not hasattr(qlib, "init"):
        pytest.skip("the qlib double is loaded, not qlib")
    return qlib


def test_real_datasetH_gives_the_same_forecast(relcast_run, fitted):
    """qlib's own DatasetH + DataHandlerLP over the same frame: the same forecast."""
    _real_qlib()
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.data.dataset.loader import StaticDataLoader
    from qlib.data.dataset.processor import DropnaLabel

    from relcast.qlib_adapter.model import RelcastModel

    fake = relcast_run["dataset"]
    handler = DataHandlerLP(
        data_loader=StaticDataLoader(config=fake.frame), learn_processors=[DropnaLabel()]
    )
    dataset = DatasetH(handler, segments={k: tuple(v) for k, v in fake.segments.items()})
    model = RelcastModel(fitted.preset, fitted.settings, sectors=fitted.sectors,
                         index_instruments=fitted.index_instruments)  # fmt: skip
    model.fit(dataset)
    pred = model.predict(dataset)  # qlib's default segment: test
    assert pred.index.equals(dataset.prepare("test", col_set="feature").index)
    pd.testing.assert_series_equal(pred, fitted.predict(fake, "test"), atol=1e-5)


def test_real_qlib_features_from_the_demo_folder(demo_qlib, tmp_path, monkeypatch):
    """The whole qlib path on the demo-derived folder: qlib's expression engine computes
    features and the label from the .bin files, relcast and qlib's LightGBM fit on the same
    DatasetH, and qlib's calc_ic scores both (printed; their values are not asserted)."""
    qlib = _real_qlib()
    from qlib.contrib.eva.alpha import calc_ic
    from qlib.contrib.model.gbdt import LGBModel
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.workflow import R

    from relcast.qlib_adapter.model import RelcastModel

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses ./mlruns else
    monkeypatch.chdir(tmp_path)  # qlib's experiment lock lands under the cwd, whatever the uri
    experiments = {
        "class": "MLflowExpManager",
        "module_path": "qlib.workflow.expm",
        "kwargs": {"uri": f"file:{tmp_path / 'mlruns'}", "default_exp_name": "t"},
    }
    qlib.init(provider_uri=str(demo_qlib["folder"]), region="us", exp_manager=experiments)
    days = [str(pd.Timestamp(d).date()) for d in demo_qlib["panel"].dates]
    a, b = int(0.7 * len(days)), int(0.85 * len(days))  # 2 dates apart: the label's reach
    names = ["RET1", "RET5", "MA5", "MA20", "STD20", "VMA5"]
    exprs = ["$close/Ref($close,1)-1", "$close/Ref($close,5)-1", "Mean($close,5)/$close",
             "Mean($close,20)/$close", "Std($close/Ref($close,1)-1,20)",
             "Mean($volume,5)/($volume+1e-12)"]  # fmt: skip
    handler = DataHandlerLP(
        instruments=STOCKS_MARKET, start_time=days[0], end_time=days[-1],
        data_loader={"class": "QlibDataLoader", "kwargs": {"config": {
            "feature": (exprs, names),
            "label": (["Ref($close, -2)/Ref($close, -1) - 1"], ["LABEL0"]),
        }}},
        infer_processors=[
            {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature",
             "fit_start_time": days[0], "fit_end_time": days[a - 1], "clip_outlier": True}},
            {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
        ],
        learn_processors=[{"class": "DropnaLabel"},
                          {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}],
    )  # fmt: skip
    segments = {"train": (days[0], days[a - 1]), "valid": (days[a + 2], days[b - 1]),
                "test": (days[b + 2], days[-3])}  # fmt: skip
    dataset = DatasetH(handler, segments=segments)
    label = dataset.prepare("test", col_set="label", data_key=DataHandlerLP.DK_R).iloc[:, 0]
    settings = {**_settings(TINY_RUN), "data.label_delay": 1}
    with R.start(experiment_name="relcast_beside_lightgbm"):  # LGBModel logs to a recorder
        relcast_pred = RelcastModel("small", settings).fit(dataset).predict(dataset)
        lgb = LGBModel(num_boost_round=50, early_stopping_rounds=10, num_threads=1)
        lgb.fit(dataset)
        lgb_pred = lgb.predict(dataset)
    assert relcast_pred.index.equals(lgb_pred.index)
    assert relcast_pred.notna().mean() > 0.95  # every stock once its window is complete
    for name, pred in (("relcast", relcast_pred), ("lightgbm", lgb_pred)):
        ic, ric = calc_ic(pred, label.reindex(pred.index))
        print(f"{name}: test IC {ic.mean():.4f}, Rank IC {ric.mean():.4f} ({len(ic)} dates)")
