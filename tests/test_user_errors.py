"""A table of user mistakes walked through the real CLI: each ends in ``error: ...`` naming the
file or key, exit code 2 and no traceback. Mistakes that depend only on data and config fail
before any training; the others share one tiny trained run (module scope).

Also here: a forecast depends only on the bars its lookback window reads (feature statistics
are fitted on the training span once and saved with the run), not on how much older history
the data file holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RUN  # the tiny CLI run's settings
from typer.testing import CliRunner

import relcast
from relcast.cli import app

TRAIN_DAYS, TOTAL_DAYS = 260, 2100
FAST = [*TINY_RUN, "stage2.enabled=false", "stage3.feature_sets=[hybrid]"]


def _sets(items) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _cli(args: list[str]):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _assert_clean_error(result, output: str, *expected: str) -> None:
    assert result.exit_code == 2, output + repr(result.exception)
    assert "error:" in output
    assert "Traceback" not in output and "np.str_" not in output
    for text in expected:
        assert text in output, f"{text!r} not in {output!r}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny synthetic market (6 stocks + an index, 2100 dates) and files made from it."""
    root = tmp_path_factory.mktemp("mistakes")
    panel, _ = relcast.synthetic_market(num_stocks=6, num_days=TOTAL_DAYS, seed=3)
    frame = panel.to_frame()

    def csv(name: str, part) -> Path:
        part.to_frame().to_csv(root / name, index=False)
        return root / name

    panel.meta.to_csv(root / "universe.csv", index=False)
    out = {
        "panel": panel,
        "root": root,
        "train": csv("train.csv", panel.select(end=panel.dates[TRAIN_DAYS - 1])),
        "all": csv("all.csv", panel),
        "last200": csv("last200.csv", panel.select(start=panel.dates[-200])),
        "last2000": csv("last2000.csv", panel.select(start=panel.dates[-2000])),
        "last5": csv("last5.csv", panel.select(start=panel.dates[-5])),
        "last30": csv("last30.csv", panel.select(start=panel.dates[-30])),
        "universe": root / "universe.csv",
    }
    # the index has no bars on the last three dates
    last = set(panel.dates[-3:])
    gap = frame[~((frame["symbol"] == "INDEX") & frame["date"].isin(last))]
    gap.to_csv(root / "index_gap.csv", index=False)
    out["index_gap"] = root / "index_gap.csv"
    unknown = frame.copy()
    unknown.loc[unknown["symbol"] == "S005", "symbol"] = "ZZZ"
    unknown.to_csv(root / "unknown.csv", index=False)
    out["unknown"] = root / "unknown.csv"
    return out


@pytest.fixture(scope="module")
def run_dir(files, tmp_path_factory):
    """One tiny run trained on the first 260 dates (hybrid GRU only, no Stage2)."""
    out = tmp_path_factory.mktemp("run") / "run"
    args = ["run", "--data", files["train"], "--universe", files["universe"], "--out", out]
    result, output = _cli([*args, *_sets(FAST)])
    assert result.exit_code == 0, output + repr(result.exception)
    return out


# ---------------------------------------------------------------- before any training


def _write(root: Path, name: str, text: str) -> Path:
    (root / name).write_text(text)
    return root / name


def _universe_marking_index(files, symbols) -> Path:
    meta = files["panel"].meta.copy()
    meta["is_index"] = meta["symbol"].isin([*symbols, "INDEX"])
    path = files["root"] / f"universe_{len(symbols)}.csv"
    meta.to_csv(path, index=False)
    return path


# (name, extra CLI args given a `files` dict, texts the message must hold)
RUN_MISTAKES = [
    ("bad YAML in --set", lambda f: _sets(["stage3.models=[gru"]), ["--set stage3.models"]),
    ("accelerator typo", lambda f: _sets(["trainer.accelerator=gpux"]), ["trainer.accelerator"]),
    ("strategy typo", lambda f: _sets(["trainer.strategy=dpp"]), ["trainer.strategy", "dpp"]),
    ("devices typo", lambda f: _sets(["trainer.devices=two"]), ["trainer.devices"]),
    ("devices zero", lambda f: _sets(["trainer.devices=0"]), ["trainer.devices"]),
    ("no Stage3 model", lambda f: _sets(["stage3.models=[]"]), ["stage3.models"]),
    ("bool for epochs", lambda f: _sets(["stage1.max_epochs=true"]), ["stage1.max_epochs"]),
    ("start not a date", lambda f: _sets(["data.start=yesterday"]), ["data.start"]),
    ("n_drop > topk", lambda f: _sets(["evaluation.n_drop=9"]), ["evaluation.n_drop"]),
    (
        "bad YAML config file",
        lambda f: ["--config", _write(f["root"], "bad.yaml", "stage1: [d_model\n")],
        ["bad.yaml", "not valid YAML"],
    ),
    (
        "bad JSON universe",
        lambda f: ["--universe", _write(f["root"], "u.json", '{"S000": [1,\n')],
        ["u.json", "not valid JSON"],
    ),
    (
        "bad YAML universe",
        lambda f: ["--universe", _write(f["root"], "u.yaml", "S000: [a\n")],
        ["u.yaml", "not valid JSON/YAML"],
    ),
    (
        "empty universe file",
        lambda f: ["--universe", _write(f["root"], "u_empty.csv", "")],
        ["u_empty.csv"],
    ),
    (
        "universe with a header only",
        lambda f: ["--universe", _write(f["root"], "u_header.csv", "symbol,sector\n")],
        ["u_header.csv", "lists no symbol"],
    ),
    (
        "one stock",
        lambda f: ["--universe", _universe_marking_index(f, [f"S00{k}" for k in range(1, 6)])],
        ["1 stock(s) ['S000']", "at least 2"],
    ),
    (
        "all-index universe",
        lambda f: ["--universe", _universe_marking_index(f, list(f["panel"].symbols))],
        ["0 stock(s)", "is_index"],
    ),
    (
        "topk above the stock count",
        lambda f: _sets(["evaluation.topk=8"]),
        ["evaluation.topk=8", "7 stocks"],
    ),
]


@pytest.mark.parametrize("name, extra, expected", RUN_MISTAKES, ids=[m[0] for m in RUN_MISTAKES])
def test_run_mistakes_fail_cleanly_before_training(files, tmp_path, name, extra, expected):
    out = tmp_path / "out"
    args = ["run", "--data", files["train"], "--out", out, *_sets(FAST)]
    result, output = _cli([*args, *extra(files)])
    _assert_clean_error(result, output, *expected)
    assert "Stage1" not in output  # found at prepare or config load: nothing was trained
    assert not (out / "stage1").exists()


def test_gpu_on_a_machine_without_one_fails_at_prepare(files, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["run", "--data", files["train"], "--out", tmp_path / "out"]
    result, output = _cli([*args, *_sets([*FAST, "trainer.accelerator=gpu"])])
    _assert_clean_error(result, output, "accelerator='gpu'")
    assert not (tmp_path / "out" / "stage1").exists()


def test_config_file_data_source_is_used(tmp_path):
    """`run --config f.yaml` reads the file's data.source (not the demo); a flag still wins."""
    f = _write(tmp_path, "run.yaml", "data:\n  source: /nonexistent/from_file.csv\n")
    result, output = _cli(["run", "--config", f, "--out", tmp_path / "out"])
    _assert_clean_error(result, output, "from_file.csv")
    result, output = _cli(
        ["run", "--config", f, "--data", "/nonexistent/flag.csv", "--out", tmp_path / "out"]
    )
    _assert_clean_error(result, output, "flag.csv")


def test_data_paths_are_not_yaml(tmp_path):
    """`--data 'prices #2.csv'` names that file; YAML would have read `prices`."""
    result, output = _cli(["run", "--data", tmp_path / "prices #2.csv", "--out", tmp_path / "o"])
    _assert_clean_error(result, output, "prices #2.csv")


def test_app_without_gradio_shows_the_install_hint():
    import importlib.util

    if importlib.util.find_spec("gradio") is not None:
        pytest.skip("gradio is installed here")
    result, output = _cli(["app"])
    _assert_clean_error(result, output, "pip install 'relcast[app]'")


def test_debug_shows_the_traceback(tmp_path):
    from relcast.config import RelcastConfigError

    args = ["run", "--out", tmp_path / "o", *_sets(["stage3.models=[]"])]
    result = CliRunner().invoke(app, ["--debug", *map(str, args)])
    assert isinstance(result.exception, RelcastConfigError)  # raised, not turned into a message
    assert result.exit_code != 2


# ---------------------------------------------------------------- with a trained run


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    return work


WEIGHTS = Path("stage3") / "hybrid_gru" / "model.safetensors"


def _tamper_corrupt_weights(run: Path) -> None:
    path = run / WEIGHTS
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _tamper_delete_weights(run: Path) -> None:
    (run / WEIGHTS).unlink()


def _tamper_bad_json(run: Path) -> None:
    (run / WEIGHTS).with_suffix(".json").write_text('{"kind": "gru", ')


def _tamper_json_sizes(run: Path) -> None:
    path = (run / WEIGHTS).with_suffix(".json")
    info = json.loads(path.read_text())
    info["config"]["hidden_size"] = 13
    path.write_text(json.dumps(info))


def _tamper_panel(run: Path) -> None:
    (run / "panel.parquet").write_bytes(b"not a parquet file at all")


def _tamper_normalization(run: Path) -> None:
    (run / "normalization.json").write_text('{"index": {"names": [], "mean": [1]}}')


PREDICT_MISTAKES = [
    ("date not a date", None, lambda f: ["--date", "notadate"], ["--date 'notadate'"]),
    ("history shorter than lookback", None, lambda f: ["--data", f["last5"]],
     ["last5.csv", "stage3.lookback=8"]),
    ("no full window", None, lambda f: ["--data", f["last30"]], ["last30.csv", "no forecast"]),
    ("unknown symbol", None, lambda f: ["--data", f["unknown"]], ["['ZZZ']"]),
    ("corrupt weights", _tamper_corrupt_weights, lambda f: [], ["model.safetensors", "damaged"]),
    ("deleted weights", _tamper_delete_weights, lambda f: [],
     ["model.safetensors", "relcast stage3 --run"]),
    ("edited model.json", _tamper_bad_json, lambda f: [], ["model.json", "not valid JSON"]),
    ("model.json sizes", _tamper_json_sizes, lambda f: [], ["model.json", "does not describe"]),
    ("garbage panel.parquet", _tamper_panel, lambda f: [], ["panel.parquet", "damaged"]),
    ("damaged normalization.json", _tamper_normalization, lambda f: [],
     ["normalization.json", "damaged"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, tamper, extra, expected", PREDICT_MISTAKES, ids=[m[0] for m in PREDICT_MISTAKES]
)
def test_predict_mistakes_fail_cleanly(run_dir, files, tmp_path, name, tamper, extra, expected):
    run = _copy(run_dir, tmp_path)
    if tamper is not None:
        tamper(run)
    args = ["predict", "--run", run, "--data", files["all"], *extra(files)]
    result, output = _cli(args)
    _assert_clean_error(result, output, *expected)


def test_stage3_retrains_corrupt_weights(run_dir, files, tmp_path):
    """`relcast stage3` resumes saved models but trains a damaged one again."""
    run = _copy(run_dir, tmp_path)
    _tamper_corrupt_weights(run)
    result, output = _cli(["stage3", "--run", run])
    assert result.exit_code == 0, output + repr(result.exception)
    assert "cannot be read" in output
    result, output = _cli(["predict", "--run", run, "--data", files["all"]])
    assert result.exit_code == 0, output
    assert "hybrid_gru" in output


def test_missing_index_bars_warn(run_dir, files):
    from relcast.run.inference import predict_date

    with pytest.warns(UserWarning, match=r"index symbol\(s\) \['INDEX'\] have no bar on 3"):
        predict_date(run_dir, str(files["index_gap"]))


# ---------------------------------------------------------------- features from the run's stats


def test_forecast_depends_only_on_the_window_it_reads(run_dir, files):
    """Same run, same date: 200 or 2,000 dates of history give the same forecast. The
    200-date file starts long after the training end, so it holds no training date at all."""
    from relcast.run.inference import predict_date
    from relcast.run.runner import Pipeline

    pipe = Pipeline.open(run_dir)
    assert (run_dir / "normalization.json").exists()
    first_200 = files["panel"].dates[-200]
    assert first_200 > pipe.ctx.train_end
    long = predict_date(run_dir, str(files["last2000"]))
    short = predict_date(run_dir, str(files["last200"]))
    assert len(long) == len(short) > 0
    merged = long.merge(short, on=["date", "symbol", "model", "horizon"])
    assert len(merged) == len(long)
    np.testing.assert_allclose(merged["pred_x"], merged["pred_y"], atol=1e-6, rtol=0)
    for q in ("q0.1", "q0.9"):
        np.testing.assert_allclose(merged[f"{q}_x"], merged[f"{q}_y"], atol=1e-6, rtol=0)


def test_saved_statistics_are_the_training_spans(run_dir, files):
    """normalization.json holds the index statistics of the training dates only, and the
    run's features are scaled with them."""
    from relcast.features.build import build_features
    from relcast.features.normalize import TrainSpanScaler
    from relcast.run.runner import Pipeline

    pipe = Pipeline.open(run_dir)
    names, saved = pipe.ctx.feature_scalers["index"]
    refit: dict = {}
    build_features(pipe.ctx.panel, train_end=pipe.ctx.train_end, scalers=refit)
    np.testing.assert_array_equal(saved.mean_, refit["index"][1].mean_)
    np.testing.assert_array_equal(saved.std_, refit["index"][1].std_)
    # fitting on a longer file (more dates before its training end) gives other numbers:
    # that was the bug; the saved ones never change
    longer: dict = {}
    build_features(files["panel"], train_end=files["panel"].dates[-1], scalers=longer)
    assert not np.allclose(longer["index"][1].mean_, saved.mean_)
    assert isinstance(saved, TrainSpanScaler) and names == pipe.ctx.features.groups["index"]


def test_check_names_a_bad_universe_file(files):
    bad = _write(files["root"], "check_u.json", "[{")
    result, output = _cli(["check", "--data", files["train"], "--universe", bad])
    _assert_clean_error(result, output, "check_u.json", "not valid JSON")


def test_predict_and_update_read_new_bars_with_the_runs_reader_settings(monkeypatch):
    """A run on day-first files must read its new bars day-first too (not the defaults)."""
    import relcast
    from relcast.config import load_config
    from relcast.run import inference

    cfg = load_config(
        overrides=["data.date_format=dayfirst", "data.symbol_pattern=NASDAQ_{symbol}_30Y"]
    )
    seen = {}
    monkeypatch.setattr(relcast, "read_panel", lambda path, **kw: seen.update(kw) or "panel")
    assert inference._read_market("new_bars/", cfg) == "panel"
    assert seen["date_format"] == "dayfirst"
    assert seen["symbol_pattern"] == "NASDAQ_{symbol}_30Y"
