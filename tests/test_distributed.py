"""relcast.distributed: the trainer settings each process gives Lightning under a launcher,
global batch sizes, and the precision switch (trainer.precision) on a tiny CPU fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import relcast
from relcast import distributed
from relcast.config import RelcastConfigError, TrainerSettings, load_config

TORCHRUN_VARS = ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def torchrun_env(monkeypatch):
    """The variables torchrun sets for rank 3 of 2 nodes x 2 processes (no process group)."""
    env = {"TORCHELASTIC_RUN_ID": "t", "WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1",
           "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def no_launcher(monkeypatch):
    for key in (*TORCHRUN_VARS, "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)


def test_one_process_without_launcher(no_launcher):
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert not distributed.launched() and not distributed.init()
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.per_rank(16) == 16
    settings = TrainerSettings(devices=1)
    assert distributed.trainer_settings(settings) == settings
    assert distributed.on_main("step", lambda: 7) == 7


def test_ddp_on_several_devices_without_launcher_is_refused(no_launcher):
    with pytest.raises(RelcastConfigError, match="torchrun --nproc_per_node=2"):
        distributed.trainer_settings(TrainerSettings(strategy="ddp", devices=2))
    spawn = TrainerSettings(strategy="ddp_spawn", devices=2)  # starts its own workers: fine
    assert distributed.trainer_settings(spawn) == spawn


def test_under_torchrun_every_process_is_one_ddp_device(torchrun_env):
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (3, 4, False)
    assert distributed.local_world_size() == 2
    assert distributed.per_rank(16) == 4  # the config's batch is the global one
    got = distributed.trainer_settings(TrainerSettings(accelerator="cpu", precision="bf16-mixed"))
    assert (got.strategy, got.devices, got.num_nodes) == ("ddp", 2, 2)
    assert (got.accelerator, got.precision) == ("cpu", "bf16-mixed")  # the rest unchanged
    with pytest.raises(RelcastConfigError, match="already runs in 4 processes"):
        distributed.trainer_settings(TrainerSettings(strategy="ddp_spawn"))


def test_precision_reaches_lightning_and_bf16_mixed_trains_on_cpu(tmp_path, no_launcher):
    from relcast.features.build import build_features
    from relcast.features.labels import forward_returns
    from relcast.features.splits import chronological_split
    from relcast.models.cross_sectional import Stage1Config
    from relcast.run.context import RunContext
    from relcast.training.specs import Stage1Spec, TrainerSpec
    from relcast.training.stage1 import fit_stage1

    cfg = load_config(None, None, ["trainer.precision=bf16-mixed", "trainer.accelerator=cpu"], {})
    kwargs = RunContext(cfg, tmp_path / "run").trainer.lightning_kwargs()
    assert kwargs["precision"] == "bf16-mixed"

    panel, _ = relcast.synthetic_market(num_stocks=6, num_days=120, seed=1)
    labels = forward_returns(panel, 1)
    split = chronological_split(panel.dates, 0.2, 0.1, embargo=1)
    features = build_features(panel, train_end=int(split.train[-1]), windows=(5, 10))
    config = Stage1Config(
        num_features=features.values.shape[2], num_stocks=len(features.symbols), horizons=1,
        d_model=16, num_heads=2, num_layers=1, relationship_dim=4,
    )  # fmt: skip
    dtypes = {}
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        torch.manual_seed(0)
        result = fit_stage1(
            features, labels, split, config, Stage1Spec(max_epochs=2, batch_dates=16, loss="mse"),
            TrainerSpec(
                out_dir=tmp_path / precision, progress=False, precision=precision,
                callbacks=(_dtype_recorder(dtypes, precision),), accelerator="cpu",
            ),
        )  # fmt: skip
        results[precision] = result
        assert all(np.isfinite(row["train_loss"]) for row in result.history)
    assert dtypes == {"32-true": torch.float32, "bf16-mixed": torch.bfloat16}
    # bf16 rounding changes the trained weights a little, not the model's shape or sanity
    a = results["32-true"].model.state_dict()
    b = results["bf16-mixed"].model.state_dict()
    assert a.keys() == b.keys() and all(
        v.dtype == torch.float32 for v in b.values() if v.is_floating_point()
    )
    assert any(not torch.equal(a[k], b[k]) for k in a)


def _dtype_recorder(dtypes: dict, precision: str):
    """A callback that records the dtype of a Linear layer's output during training."""
    import lightning

    class Recorder(lightning.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            linear = next(m for m in pl_module.model.modules() if isinstance(m, torch.nn.Linear))

            def hook(module, inputs, output) -> None:
                if module.training:
                    dtypes.setdefault(precision, output.dtype)

            self.handle = linear.register_forward_hook(hook)

        def on_train_end(self, trainer, pl_module) -> None:
            self.handle.remove()

    return Recorder()
