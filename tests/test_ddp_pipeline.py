"""The whole `relcast run` under torchrun (2 CPU processes, gloo) against one process.

Rank 0 owns the run folder and the other rank trains with it (relcast.distributed): the test
records every file each rank writes (tests/ddp_run_script.py) and checks that rank 1 writes
nothing in the run folder, that rank 0 writes exactly what one process writes, and that the
predictions and metrics equal the one-process run's. Every test runs twice: with the
in-memory store and with ``data.store=memmap`` (rank 0 builds ``feature_store/``).

Why equal within 1e-5 (tests/test_ddp.py's tolerance): the config's batch sizes are global
(``relcast.distributed.per_rank``), so both runs train on the same batches; the market
(6 stocks, 262 days) gives an even number of training dates to the full Stage1 and to both
fold models, so the two ranks' halves of every batch have the same size and DDP's average of
their mean gradients is the one-process mean. Dropout is off (each rank would draw its own
masks) and Stage1 runs one epoch: with two epochs, an odd number of validation dates makes the
DDP validation Rank IC differ in the 8th digit, which can flip the choice of the best epoch.
"""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).with_name("ddp_run_script.py")
TOL = 1e-5
SETS = [
    "data.source=synthetic",
    "data.synthetic_stocks=6",
    "data.synthetic_days=262",  # even training-date counts for Stage1 and its 2 fold models
    "data.horizons=2",
    "stage1.d_model=16",
    "stage1.num_heads=2",
    "stage1.num_layers=1",
    "stage1.relationship_dim=4",
    "stage1.max_epochs=1",
    "stage1.batch_dates=16",
    "stage1.dropout=0",
    "stage1.loss=mse",
    "stage2.n_estimators=20",
    "relationships.oof_folds=2",
    "stage3.models=[gru]",
    "stage3.feature_sets=[hybrid]",
    "stage3.hidden_size=8",
    "stage3.gru.num_layers=1",
    "stage3.lookback=8",
    "stage3.max_epochs=1",
    "stage3.batch_size=256",
    "stage3.dropout=0",
    "evaluation.topk=2",
    "trainer.progress=false",
    "trainer.accelerator=cpu",
]
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = "1"
    return env


def relcast_args(out: Path, store: str = "memory") -> list[str]:
    sets = [*SETS, f"data.store={store}"]
    return ["run", "--out", str(out), *[a for s in sets for a in ("--set", s)]]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def launch(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module", params=["memory", "memmap"])
def runs(request, tmp_path_factory) -> dict:
    """One process and torchrun on the same config; ``data.store`` memory or memmap (rank 0
    builds ``feature_store/``, rank 1 maps it read-only)."""
    store = request.param
    root = tmp_path_factory.mktemp(f"ddp_pipeline_{store}")
    single = relcast_args(root / "single", store)
    launch([sys.executable, str(SCRIPT), str(root / "writes_single"), *single])
    launch(
        torchrun("--standalone", "--nproc_per_node=2", str(SCRIPT), str(root / "writes_ddp"))
        + relcast_args(root / "ddp", store)
    )
    return {"root": root, "single": root / "single", "ddp": root / "ddp", "store": store}


def written(log: Path, run: Path) -> collections.Counter:
    """Files written inside ``run`` (relative names; temporary names made comparable)."""
    run_path = os.path.abspath(run) + os.sep
    names = []
    for path in json.loads(log.read_text()):
        if not path.startswith(run_path):
            continue
        rel = path[len(run_path) :]
        base = os.path.basename(rel)
        parts = base.split(".")
        if base.startswith(".") and ("tmp" in base or "update" in base):
            rel = os.path.join(os.path.dirname(rel), f".{parts[1]}.<temporary>")
        elif base.startswith(".") and len(parts) > 3 and parts[2].isdigit():  # .<name>.<pid>.npy
            rel = os.path.join(os.path.dirname(rel), f".{parts[1]}.<scratch>")
        names.append(rel)
    return collections.Counter(names)


def scratch(name: str) -> bool:
    """A process's own scratch file next to the memmap store (Stage3's inputs), unlinked as
    soon as it is mapped: no file of the run, one per rank."""
    return name.startswith("feature_store/.") and name.endswith(".<scratch>")


def _numbers(tree, prefix: str = "") -> dict[str, float]:
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in _numbers(sub, f"{prefix}/{key}").items()
        }
    if isinstance(tree, list):
        return {
            k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{prefix}[{i}]").items()
        }
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix: float(tree)}
    return {}


def test_one_run_folder_and_rank1_writes_nothing(runs):
    root = runs["root"]
    assert sorted(p.name for p in root.iterdir()) == [
        "ddp",
        "single",
        "writes_ddp",
        "writes_single",
    ]
    assert sorted(p.name for p in (root / "writes_ddp").iterdir()) == ["rank0.json", "rank1.json"]
    rank1 = written(root / "writes_ddp" / "rank1.json", runs["ddp"])
    assert [name for name in rank1 if not scratch(name)] == []
    rank0 = written(root / "writes_ddp" / "rank0.json", runs["ddp"])
    single = written(root / "writes_single" / "rank0.json", runs["single"])
    assert rank0 == single  # every file written as often as one process writes it
    assert rank0["predictions.parquet"] == 1 and rank0["stage1/model.safetensors"] == 1
    files = lambda run: sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())  # noqa: E731
    assert files(runs["ddp"]) == files(runs["single"])
    assert not list(runs["ddp"].rglob("*.ckpt"))  # checkpoints dropped once weights are saved


def test_predictions_and_metrics_equal_one_process(runs):
    keys = ["date", "symbol", "model", "horizon"]
    single = pd.read_parquet(runs["single"] / "predictions.parquet").sort_values(keys)
    ddp = pd.read_parquet(runs["ddp"] / "predictions.parquet").sort_values(keys)
    assert len(single) == len(ddp) > 0
    assert (single[keys].to_numpy() == ddp[keys].to_numpy()).all()
    for model in ("stage1", "hybrid_gru"):
        rows = single["model"].to_numpy() == model
        a, b = single["pred"].to_numpy()[rows], ddp["pred"].to_numpy()[rows]
        assert rows.any() and np.isfinite(a).all()
        np.testing.assert_allclose(b, a, atol=TOL * max(1.0, float(np.std(a))), rtol=0)
    m_single = _numbers(json.loads((runs["single"] / "metrics.json").read_text()))
    m_ddp = _numbers(json.loads((runs["ddp"] / "metrics.json").read_text()))
    assert m_single.keys() == m_ddp.keys()
    checked = 0
    for key, value in m_single.items():
        if "second" in key or math.isnan(value):
            continue
        assert m_ddp[key] == pytest.approx(value, abs=TOL, rel=TOL), key
        checked += 1
    assert checked > 100
    steps = json.loads((runs["ddp"] / "run.json").read_text())["steps"]
    assert list(steps) == ["prepare", "stage1", "stage2", "extract", "stage3", "evaluate", "report"]


def test_memmap_store_built_once_and_no_scratch_left(runs):
    """memmap: rank 0 builds ``feature_store/`` at prepare and extracts into a memory map;
    rank 1 reads them and maps only its own Stage3 inputs next to the store (unlinked at
    once). No scratch is left in either run folder: not the market's values (moved into the
    store), not the ``.stage3_hybrid`` inputs, not a temporary of the extraction."""
    if runs["store"] != "memmap":
        pytest.skip("the feature store is data.store=memmap's")
    rank1 = written(runs["root"] / "writes_ddp" / "rank1.json", runs["ddp"])
    assert "feature_store/.stage3_hybrid.<scratch>" in rank1  # Stage3 read the store there
    for run in (runs["single"], runs["ddp"]):
        assert (run / "feature_store" / "meta.json").exists()
        assert (run / "relationships_values.npy").exists()  # the extraction's memory map
        assert not (run / "feature_store.panel.npy").exists()
        hidden = sorted(str(p.relative_to(run)) for p in run.rglob(".*"))
        assert hidden == [".relcast.lock"], run


def test_resume_under_torchrun_skips_done_steps(runs, tmp_path):
    """A second launch on the finished folder trains and rewrites nothing (rank 0 only takes
    the folder's lock, whose file records the holder)."""

    def stamps() -> dict[Path, int]:
        files = [p for p in runs["ddp"].rglob("*") if p.is_file() and p.name != ".relcast.lock"]
        return {p: p.stat().st_mtime_ns for p in files}

    before = stamps()
    proc = launch(
        torchrun("--standalone", "--nproc_per_node=2", str(SCRIPT), str(tmp_path / "writes"))
        + relcast_args(runs["ddp"], runs["store"])
    )
    assert "stage1: done already, skipped" in proc.stdout
    assert proc.stdout.count("done already") == 6  # said once (by rank 0), for every step
    assert stamps() == before
    assert written(tmp_path / "writes" / "rank1.json", runs["ddp"]) == {}  # not even scratch


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_node_rehearsal_on_localhost(runs, tmp_path):
    """Two `torchrun --nnodes=2` launches (one process each) meet at a c10d rendezvous, as two
    machines sharing the run folder would; the run equals the one-process run."""
    out = tmp_path / "two_nodes"
    endpoint = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen(
            torchrun(
                "--nnodes=2",
                f"--node_rank={node}",
                "--nproc_per_node=1",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint={endpoint}",
                "--rdzv_id=relcast-test",
                str(SCRIPT),
                str(tmp_path / f"writes_node{node}"),
            )  # fmt: skip
            + relcast_args(out, runs["store"]),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stdout[-2000:] + stderr[-6000:]
    writes = [written(log, out) for log in sorted(tmp_path.glob("writes_node*/rank*.json"))]
    writes = [collections.Counter({k: n for k, n in w.items() if not scratch(k)}) for w in writes]
    single = written(runs["root"] / "writes_single" / "rank0.json", runs["single"])
    assert sorted(sum(writes, collections.Counter()).items()) == sorted(
        (k, n) for k, n in single.items() if not scratch(k)
    )
    assert sorted(len(w) == 0 for w in writes) == [False, True]  # one rank wrote everything
    keys = ["date", "symbol", "model", "horizon"]
    single = pd.read_parquet(runs["single"] / "predictions.parquet").sort_values(keys)
    nodes = pd.read_parquet(out / "predictions.parquet").sort_values(keys)
    np.testing.assert_allclose(nodes["pred"], single["pred"], atol=TOL, rtol=0)


def test_walk_forward_under_torchrun_equals_one_process(tmp_path):
    """A walk-forward run (two test blocks, the second warm-started) under torchrun: rank 1
    writes nothing in the run folder, the pooled predictions and metrics equal one process's
    (within the DDP tolerance), and a second launch skips both finished blocks."""
    walk = [
        "data.synthetic_days=702",  # 2018-01 .. 2020-09: test blocks from 2019-07 and 2020-07
        "split.walk_forward.first_test=2019-07-01",
        "split.walk_forward.warm_epochs=1",
    ]

    def args(out: Path) -> list[str]:
        sets = [*SETS, "data.store=memory", *walk]
        return ["run", "--out", str(out), *[a for s in sets for a in ("--set", s)]]

    launch([sys.executable, str(SCRIPT), str(tmp_path / "writes_single"), *args(tmp_path / "one")])
    launch(
        torchrun("--standalone", "--nproc_per_node=2", str(SCRIPT), str(tmp_path / "writes_ddp"))
        + args(tmp_path / "ddp"),
        timeout=400,
    )
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    blocks = json.loads((ddp / "run.json").read_text())["steps"]["blocks"]["names"]
    assert len(blocks) == 2 and all((ddp / "blocks" / b / "metrics.json").exists() for b in blocks)
    rank1 = written(tmp_path / "writes_ddp" / "rank1.json", ddp)
    assert [name for name in rank1 if not scratch(name)] == []
    keys = ["date", "symbol", "model", "horizon"]
    a = pd.read_parquet(one / "predictions.parquet").sort_values(keys)
    b = pd.read_parquet(ddp / "predictions.parquet").sort_values(keys)
    assert len(a) == len(b) > 0 and (a[keys].to_numpy() == b[keys].to_numpy()).all()
    for model in ("lightgbm", "reversal_1d"):  # fitted on rank 0 only: the same numbers
        rows = a["model"].to_numpy() == model
        x, y = a["pred"].to_numpy()[rows], b["pred"].to_numpy()[rows]
        assert rows.any() and np.isfinite(x).all(), model
        np.testing.assert_allclose(y, x, atol=TOL * max(1.0, float(np.std(x))), rtol=0)
    # the networks train data-parallel; the blocks' training spans do not split evenly over
    # two ranks (the sampler pads one), so they differ in the last digits of the gradients
    for model in ("stage1", "hybrid_gru"):
        rows = a["model"].to_numpy() == model
        x, y = a["pred"].to_numpy()[rows], b["pred"].to_numpy()[rows]
        assert rows.any() and np.isfinite(y).all(), model
        assert np.corrcoef(x, y)[0, 1] > 0.99, model
    again = launch(
        torchrun("--standalone", "--nproc_per_node=2", str(SCRIPT), str(tmp_path / "writes_2"))
        + args(ddp),
        timeout=400,
    )
    assert again.stdout.count("done already, skipped") >= 2  # both blocks (said by rank 0)
