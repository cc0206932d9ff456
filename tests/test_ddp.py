"""DDP on CPU (2 processes, gloo) for Stage1 and Stage3 against one-process training.

``tests/ddp_script.py`` runs in a subprocess (Lightning's ``ddp`` would re-launch pytest
itself). It trains both stages twice on the same tiny market with the same seed: in one
process with a batch of ``2b`` and with ``strategy="ddp", devices=2`` and ``b`` per rank.

Why the weights agree only within a tolerance, not bit for bit: rank r's batch k is the
one-process batch k's items at positions r, r + 2, ... (``shard_batches``), so the global
batch is the same; DDP averages the two ranks' mean gradients, which equals the mean over
the whole batch when both halves have the same size (true here: even counts, no masked
stocks), but the float sums run in another order (``(g0 + g1) / 2`` against one sum over
``2b`` items). Those ~1e-7 relative differences pass through a few Adam steps; we measured
max |difference| ~3e-6 (Stage1, MSE loss) and ~2e-8 (Stage3), and allow 1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from relcast.training.windows import shard_batches

SCRIPT = Path(__file__).with_name("ddp_script.py")
STAGES = ("stage1", "stage3")
WEIGHT_TOL = 1e-5
METRIC_TOL = 1e-6


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and (out / "done").exists(), proc.stderr[-4000:]
    return out


def _load(run: Path, stage: str, mode: str) -> tuple[dict, dict[str, np.ndarray]]:
    folder = run / f"{stage}_{mode}"
    info = json.loads((folder / "result.json").read_text())
    seen = {p.stem: np.load(p) for p in sorted(folder.glob("seen_rank*.npy"))}
    return info, seen


def _items(rows: np.ndarray) -> list[tuple[int, int]]:
    return [(int(t), int(n)) for t, n in rows[:, 2:4]]


@pytest.mark.parametrize("stage", STAGES)
def test_every_sample_seen_once_per_epoch_across_ranks(ddp_run, stage):
    info, seen = _load(ddp_run, stage, "ddp")
    single_info, single_seen = _load(ddp_run, stage, "single")
    assert info["world_size"] == 2 and sorted(seen) == ["seen_rank0", "seen_rank1"]
    everything = sorted(map(tuple, info["train_items"]))
    rank0, rank1 = seen["seen_rank0"], seen["seen_rank1"]
    single = single_seen["seen_rank0"]
    orders = []
    for epoch in range(2):
        r0, r1 = rank0[rank0[:, 0] == epoch], rank1[rank1[:, 0] == epoch]
        both = _items(r0) + _items(r1)
        assert len(both) == len(set(both)) == len(everything)  # no repeat, nothing missed
        assert sorted(both) == everything
        assert not set(_items(r0)) & set(_items(r1))
        # same number of steps on both ranks (else DDP hangs in the gradient all-reduce)
        assert len(np.unique(r0[:, 1])) == len(np.unique(r1[:, 1]))
        # DDP step k trains on exactly the one-process batch k
        one = single[single[:, 0] == epoch]
        for k in np.unique(one[:, 1]):
            step = _items(r0[r0[:, 1] == k]) + _items(r1[r1[:, 1] == k])
            assert sorted(step) == sorted(_items(one[one[:, 1] == k]))
        orders.append(_items(r0))
    assert orders[0] != orders[1], "the training order must be reshuffled every epoch"


@pytest.mark.parametrize("stage", STAGES)
def test_ddp_weights_match_one_process(ddp_run, stage):
    initial = torch.load(ddp_run / f"{stage}_single" / "initial.pt")
    single = torch.load(ddp_run / f"{stage}_single" / "final.pt")
    ddp = torch.load(ddp_run / f"{stage}_ddp" / "final.pt")
    assert single.keys() == ddp.keys()
    moved = max(float((single[k].float() - initial[k].float()).abs().max()) for k in single)
    assert moved > 100 * WEIGHT_TOL  # training changed the weights far beyond the tolerance
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=WEIGHT_TOL, rtol=0, msg=key)


@pytest.mark.parametrize("stage", STAGES)
def test_checkpoint_and_log_written_once(ddp_run, stage):
    folder = ddp_run / f"{stage}_ddp"
    checkpoints = list((folder / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 1  # rank 0 writes; rank 1 does not add a second file
    assert [p.name for p in (folder / "logs").iterdir()] == ["version_0"]
    # the DDP best checkpoint holds the same weights as the one-process best checkpoint
    (single_ckpt,) = (ddp_run / f"{stage}_single" / "checkpoints").glob("*.ckpt")
    assert single_ckpt.name == checkpoints[0].name  # same best epoch
    ddp_state = torch.load(checkpoints[0], weights_only=False)["state_dict"]
    single_state = torch.load(single_ckpt, weights_only=False)["state_dict"]
    for key in single_state:
        torch.testing.assert_close(ddp_state[key], single_state[key], atol=WEIGHT_TOL, rtol=0)


@pytest.mark.parametrize("stage", STAGES)
def test_val_rank_ic_gathered_across_ranks(ddp_run, stage):
    info, _ = _load(ddp_run, stage, "ddp")
    single, _ = _load(ddp_run, stage, "single")
    logged = [row["val_rank_ic"] for row in info["history"]]
    assert len(logged) == 2 and np.isfinite(logged).all()
    # the last validation ran on the final weights: the value logged under DDP equals the
    # Rank IC recomputed in one process over every validation date, not one rank's half
    assert logged[-1] == pytest.approx(info["reference_val_rank_ic"], abs=METRIC_TOL)
    assert logged == pytest.approx([row["val_rank_ic"] for row in single["history"]], abs=1e-5)
    train_ddp = [row["train_loss"] for row in info["history"]]
    assert train_ddp == pytest.approx([row["train_loss"] for row in single["history"]], abs=1e-5)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("num_items", [1, 12, 13, 14, 25])
def test_shard_batches_exactly_once_and_equal_steps(world_size, num_items):
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(num_items))
    shards = [shard_batches(order, 4, rank, world_size) for rank in range(world_size)]
    items = torch.cat([b for shard in shards for b in shard]).tolist()
    assert sorted(items) == list(range(num_items))  # exactly once, also for uneven shares
    if num_items >= world_size:  # else some rank has nothing: cannot be even
        assert len({len(shard) for shard in shards}) == 1
        assert all(len(b) > 0 for shard in shards for b in shard)
        # batch k of all ranks together is the one-process batch k of size 4 * world_size
        one = shard_batches(order, 4 * world_size)
        for k in range(len(shards[0]) - 1):
            step = torch.cat([shard[k] for shard in shards]).sort().values
            assert torch.equal(step, one[k].sort().values)
    dropped = [
        shard_batches(order, 4, rank, world_size, drop_last=True) for rank in range(world_size)
    ]
    assert len({len(shard) for shard in dropped}) == 1
    assert all(len(b) == 4 for shard in dropped for b in shard)


def test_random_cross_sections_under_ddp(ddp_run):
    """``stage1.max_stocks`` under DDP: each rank draws its own cross-sections of its own
    dates (every training date once per epoch across ranks), each keeps exactly ``max_stocks``
    traded target stocks plus the index, the draws change every epoch, and validation still
    reads every stock (the logged Rank IC equals one process's over the whole universe)."""
    info, seen = _load(ddp_run, "stage1_subset", "ddp")
    max_stocks = info["max_stocks"]
    assert 0 < max_stocks < 8
    assert info["world_size"] == 2 and sorted(seen) == ["seen_rank0", "seen_rank1"]
    everything = sorted(t for t, _ in info["train_items"])
    rank0, rank1 = seen["seen_rank0"], seen["seen_rank1"]
    index_bit = 1 << 8  # the synthetic market's 9th column is its index
    for epoch in range(2):
        r0, r1 = rank0[rank0[:, 0] == epoch], rank1[rank1[:, 0] == epoch]
        assert sorted(r0[:, 2].tolist() + r1[:, 2].tolist()) == everything
        for drawn in np.concatenate([r0[:, 3], r1[:, 3]]).tolist():
            assert drawn & index_bit, "the index column is always kept"
            assert bin(drawn & (index_bit - 1)).count("1") == max_stocks
        # rank 1 draws with its own generator: its k-th date does not copy rank 0's k-th
        same = min(len(r0), len(r1))
        assert (r0[:same, 3] != r1[:same, 3]).any()
    by_date: dict[int, dict[int, int]] = {}
    for epoch, _, t, drawn in np.concatenate([rank0, rank1]).tolist():
        by_date.setdefault(t, {})[epoch] = drawn
    redrawn = sum(d[0] != d[1] for d in by_date.values())
    assert redrawn > len(by_date) // 2, "a new draw every epoch"
    union = np.bitwise_or.reduce(np.concatenate([rank0[:, 3], rank1[:, 3]]))
    assert union == (1 << 9) - 1  # every stock is drawn at some point
    logged = [row["val_rank_ic"] for row in info["history"]]
    assert len(logged) == 2 and np.isfinite(logged).all()
    assert logged[-1] == pytest.approx(info["reference_val_rank_ic"], abs=METRIC_TOL)
