"""Walk-forward evaluation (split.walk_forward): blocks, no look-ahead across blocks, warm
starts, resume, pooled scores, and predict/update on the last block."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli_sets
from typer.testing import CliRunner

import relcast
from relcast.cli import app
from relcast.config import RelcastConfigError, load_config

FIRST_TEST = "2020-01-01"
DAYS = 1100  # 2018-01-01 .. 2022-03-18: test blocks 2020, 2021 and 2022 (a part year)
WALK = [
    f"split.walk_forward.first_test={FIRST_TEST}",
    "data.horizons=1",
    "stage2.enabled=false",
    "stage1.max_epochs=1",
    "stage3.feature_sets=[own]",
    "stage3.max_epochs=4",
    "split.walk_forward.warm_epochs=2",
    "evaluation.seeds=2",
]


def _reversal_from(panel, first: str, strength: float = 0.6):
    """``panel`` whose stocks' daily returns revert (``r_t = e_t - strength * r_{t-1}``) from
    ``first`` on, and are the synthetic market's own before: a signal that only the labels of
    ``first`` and later can teach."""
    close = panel.field("close").astype(np.float64)  # (T, N + 1)
    ret = np.diff(np.log(close), axis=0)  # (T - 1, N + 1)
    start = int(np.searchsorted(panel.dates, np.datetime64(pd.Timestamp(first), "ns"))) - 1
    stocks = ~panel.is_index
    for t in range(start, len(ret)):
        ret[t, stocks] = ret[t, stocks] - strength * ret[t - 1, stocks]
    new = np.exp(np.concatenate([np.log(close[:1]), np.log(close[:1]) + np.cumsum(ret, 0)]))
    scale = (new / close)[..., None]
    values = panel.values.astype(np.float64).copy()
    for k, name in enumerate(panel.fields):
        if name in ("open", "high", "low", "close"):
            values[..., k] *= scale[..., 0]
    return dataclasses.replace(panel, values=values.astype(np.float32))


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf_market")
    panel, _ = relcast.synthetic_market(num_stocks=10, num_days=DAYS, seed=5)
    panel = _reversal_from(panel, FIRST_TEST)
    path = root / "market.csv"
    panel.to_frame().to_csv(path, index=False)
    panel.meta.to_csv(root / "universe.csv", index=False)
    history = panel.select(end=panel.dates[-6])
    history.to_frame().to_csv(root / "history.csv", index=False)
    panel.select(start=panel.dates[-5]).to_frame().to_csv(root / "new.csv", index=False)
    return {
        "panel": panel,
        "all": path,
        "history": root / "history.csv",
        "new": root / "new.csv",
        "universe": root / "universe.csv",
    }


def _run(market, out: Path, data: str = "all", extra=()):
    args = ["run", "--data", str(market[data]), "--universe", str(market["universe"])]
    return CliRunner().invoke(app, [*args, "--out", str(out), *cli_sets([*WALK, *extra])])


@pytest.fixture(scope="module")
def walk(market, tmp_path_factory):
    out = tmp_path_factory.mktemp("wf") / "run"
    result = _run(market, out, data="history")
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_blocks_are_calendar_years_with_an_expanding_training_window():
    from relcast.run.walk_forward import block_config, plan_blocks

    cfg = load_config(overrides=[f"split.walk_forward.first_test={FIRST_TEST}"])
    dates = pd.bdate_range("2018-01-01", periods=DAYS).to_numpy()
    blocks = plan_blocks(cfg, dates)
    assert [b.name for b in blocks] == ["2020", "2021", "2022"]
    assert [(b.train_end, b.valid_end, b.test_end) for b in blocks] == [
        ("2018-12-31", "2019-12-31", "2020-12-31"),
        ("2019-12-31", "2020-12-31", "2021-12-31"),
        ("2020-12-31", "2021-12-31", "2022-03-18"),  # the data's last date
    ]
    one = block_config(cfg, blocks[1]).split
    assert (one.train_end, one.valid_end, one.test_end) == (
        "2019-12-31",
        "2020-12-31",
        "2021-12-31",
    )
    assert one.walk_forward.first_test is None  # a block is one ordinary split
    two_years = load_config(
        overrides=[
            f"split.walk_forward.first_test={FIRST_TEST}",
            "split.walk_forward.block_years=2",
        ]
    )
    longer = pd.bdate_range("2016-01-01", periods=1600).to_numpy()  # .. 2022-02
    two = plan_blocks(two_years, longer)
    assert [(b.name, b.train_end, b.valid_end) for b in two] == [
        ("2020-2021", "2017-12-29", "2019-12-31"),
        ("2022-2023", "2019-12-31", "2021-12-31"),
    ]
    early = load_config(overrides=["split.walk_forward.first_test=2018-06-01"])
    with pytest.raises(RelcastConfigError, match="no training dates"):
        plan_blocks(early, dates)
    with pytest.raises(RelcastConfigError, match="walk_forward.first_test sets every block"):
        load_config(
            overrides=[
                f"split.walk_forward.first_test={FIRST_TEST}",
                "split.train_end=2019-01-01",
                "split.valid_end=2019-06-01",
            ]
        )


def test_no_block_learns_from_its_test_block_or_later(walk, market):
    """The reversal starts with the first test block. A block whose models read a label of
    its own test block would find it there at once (Rank IC about 0.5); the first block,
    whose every span ends before it, cannot; the third, which trains on 2020, does. (The
    second trains up to 2019 but stops early on 2020: that choice alone carries a little.)"""
    out, _ = walk
    panel = market["panel"]
    ic = {}
    for name in ("2020", "2021", "2022"):
        folder = out / "blocks" / name
        metrics = json.loads((folder / "metrics.json").read_text())
        ic[name] = metrics["models"]["lightgbm"]["rank_ic"]
        split = metrics["split"]  # first and last date of each span
        seen = max(pd.Timestamp(split[span][-1]) for span in ("train", "valid"))
        first_test = pd.Timestamp(split["test"][0])
        # a label at t reads close[t + H]: the last one seen ends before the test block
        t = int(np.searchsorted(panel.dates, np.datetime64(seen, "ns")))
        assert pd.Timestamp(panel.dates[t + 1]) < first_test, name
    assert abs(ic["2020"]) < 0.1 and ic["2021"] < 0.3, ic
    assert ic["2022"] > 0.3, ic  # learned once 2020's labels are in its training span


def test_warm_start_takes_the_previous_blocks_weights(walk):
    out, _ = walk
    inits = {}
    for name in ("2020", "2021", "2022"):
        for model in ("stage1", "stage3/stage3_own_gru"):
            info = json.loads((out / "blocks" / name / model / "model.json").read_text())
            inits[name, model] = info["spec"]["init"]
    assert inits["2020", "stage1"] is None and inits["2020", "stage3/stage3_own_gru"] is None
    for name, before in (("2021", "2020"), ("2022", "2021")):
        assert inits[name, "stage1"] == str(
            (out / "blocks" / before / "stage1" / "model.safetensors").resolve()
        )
        assert inits[name, "stage3/stage3_own_gru"].endswith(
            f"blocks/{before}/stage3/stage3_own_gru/model.safetensors"
        )


def test_warm_blocks_train_within_the_warm_epoch_budget(walk):
    """The first block trains from scratch for its max_epochs (4: early stopping would need
    patience + 1 = 5); the warm blocks fine-tune for at most ``warm_epochs`` = 2."""
    out, _ = walk
    epochs = {}
    for name in ("2020", "2021", "2022"):
        steps = json.loads((out / "blocks" / name / "run.json").read_text())["steps"]
        epochs[name] = steps["stage3"]["models"]["stage3_own_gru"]["epochs"]
    assert epochs["2020"] == 4 and epochs["2021"] <= 2 and epochs["2022"] <= 2, epochs


def test_warm_fold_models_keep_the_scratch_blocks_epoch_count(tmp_path):
    """Fold models start from scratch in every block, so a warm block (whose full Stage1 only
    fine-tunes, its best epoch count small) gives them the count its scratch block used."""
    from relcast.run.context import RunContext
    from relcast.run.steps.extract import fold_epochs
    from relcast.runfolder import RunFolder

    before = RunFolder(tmp_path / "before")
    before.path.mkdir(parents=True)
    info = before.run_info()
    info["steps"] = {"stage1": {"best_epoch": 9}, "extract": {"fold_epochs": 7}}
    before.write_json("run.json", info)
    before.write("stage1/model.safetensors", b"weights")
    cfg = load_config(overrides=["relationships.oof_epochs=best"])
    warm = RunContext(cfg, tmp_path / "warm", warm_from=before.path)
    assert warm.stage1_spec.init is not None
    assert fold_epochs(warm) == 7
    cold = RunContext(cfg, tmp_path / "before")
    assert cold.stage1_spec.init is None and fold_epochs(cold) == 9
    fixed = load_config(overrides=["relationships.oof_epochs=4"])
    assert fold_epochs(RunContext(fixed, tmp_path / "w2", warm_from=before.path)) == 4


def test_a_warm_start_begins_at_the_saved_weights(tmp_path):
    """With a zero learning rate nothing moves: the trained model is the warm start."""
    import torch
    from safetensors.torch import save_file

    from relcast.features.build import build_features
    from relcast.features.labels import forward_returns
    from relcast.features.splits import chronological_split
    from relcast.training.specs import Stage3Spec, TrainerSpec
    from relcast.training.stage3 import build_model, fit_stage3
    from relcast.training.stage3_inputs import assemble_inputs

    panel, _ = relcast.synthetic_market(num_stocks=5, num_days=200, seed=1)
    split = chronological_split(panel.dates, 0.2, 0.2, embargo=1)
    features = build_features(panel, train_end=int(split.train[-1]), windows=(5, 10))
    inputs = assemble_inputs(features)
    spec = Stage3Spec(lookback=5, hparams={"hidden_size": 8}, max_epochs=1, lr=0.0, quantiles=None)
    torch.manual_seed(123)
    start = build_model("gru", inputs, 1, None, 5, spec.hparams)
    save_file(
        {k: v.contiguous() for k, v in start.state_dict().items()}, tmp_path / "w.safetensors"
    )
    trainer = TrainerSpec(out_dir=tmp_path / "logs", progress=False)
    warm = fit_stage3(
        "gru", inputs, forward_returns(panel, 1), split,
        dataclasses.replace(spec, init=str(tmp_path / "w.safetensors")), trainer,
    )  # fmt: skip
    cold = fit_stage3("gru", inputs, forward_returns(panel, 1), split, spec, trainer)
    for key, value in start.state_dict().items():
        torch.testing.assert_close(warm.model.state_dict()[key], value)
    assert any(
        not torch.equal(cold.model.state_dict()[k], v) for k, v in start.state_dict().items()
    )


def test_pooled_metrics_cover_every_test_block(walk):
    out, _ = walk
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["walk_forward"]) == ["2020", "2021", "2022"]
    assert metrics["split"]["test"][0] == "2020-01-01"
    predictions = pd.read_parquet(out / "predictions.parquet")
    pooled = predictions[predictions["model"] == "lightgbm"]
    for name in ("2020", "2021", "2022"):  # the blocks' own rows, side by side
        own = pd.read_parquet(out / "blocks" / name / "predictions.parquet")
        own = own[own["model"] == "lightgbm"]
        merged = own.merge(pooled, on=["date", "symbol", "horizon"], suffixes=("", "_pooled"))
        assert len(merged) == len(own) > 0
        np.testing.assert_array_equal(merged["pred"], merged["pred_pooled"])
    # the pooled Rank IC is the mean of the pooled daily ICs: between the blocks' own
    per_block = [
        metrics["walk_forward"][b]["models"]["lightgbm"]["rank_ic"]
        for b in ("2020", "2021", "2022")
    ]
    assert min(per_block) <= metrics["models"]["lightgbm"]["rank_ic"] <= max(per_block)
    assert (out / "report.html").exists()


def test_pooled_seed_spread_comes_from_each_seeds_own_forecasts(walk):
    """The pooled row scores the seeds' ensemble and gives the single seeds' spread over the
    pooled span (scoring checks the ensemble is the mean of the pooled seeds)."""
    out, _ = walk
    metrics = json.loads((out / "metrics.json").read_text())
    row = metrics["models"]["stage3_own_gru"]
    assert row["seeds"]["n"] == 2 and row["seeds"]["rank_ic_std"] > 0
    seeds = pd.read_parquet(out / "blocks" / "2021" / "seed_predictions.parquet")
    assert set(seeds["model"]) == {"stage3_own_gru@seed0", "stage3_own_gru@seed1"}
    one = pd.read_parquet(out / "blocks" / "2021" / "predictions.parquet")
    one = one[one["model"] == "stage3_own_gru"].set_index(["date", "symbol", "horizon"])
    mean = seeds.groupby(["date", "symbol", "horizon"])["pred"].mean()
    np.testing.assert_allclose(mean.loc[one.index], one["pred"], rtol=1e-5, atol=1e-7)


def test_rerun_skips_finished_blocks_and_predict_update_use_the_last(walk, market, tmp_path):
    import shutil

    from relcast.run.inference import predict_date, update_run

    out, _ = walk
    work = tmp_path / "run"
    shutil.copytree(out, work)
    before = json.loads((work / "metrics.json").read_text())
    result = _run(market, work, data="history")
    assert result.exit_code == 0, result.output
    assert result.output.count("done already, skipped") == 3
    after = json.loads((work / "metrics.json").read_text())
    assert after["models"]["lightgbm"] == before["models"]["lightgbm"]
    frame = predict_date(work, str(market["history"]))
    stored = pd.read_parquet(work / "blocks" / "2022" / "predictions.parquet")
    assert frame["date"].max() == market["panel"].dates[-6]
    assert set(frame["model"]) == {"stage3_own_gru"} and len(stored)
    new = update_run(work, str(market["new"]))
    assert len(set(new["date"])) == 5
    last = pd.read_parquet(work / "blocks" / "2022" / "live_predictions.parquet")
    assert len(last) == len(new)
    with pytest.raises(RelcastConfigError, match="walk-forward run folder"):
        from relcast.run.runner import Pipeline

        Pipeline.open(work).step("evaluate")
