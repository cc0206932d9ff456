"""The whole `relcast run` under torchrun (2 CPU processes, gloo) against one process.

Rank 0 owns the run folder and the other rank trains with it (relcast.distributed): the test
records every file each rank writes (tests/ddp_run_script.py) and checks that rank 1 writes
nothing in the run folder, that rank 0 writes exactly what one process writes, and that the
predictions and metrics equal the one-process run's.

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


def relcast_args(out: Path) -> list[str]:
    return ["run", "--out", str(out), *[a for s in SETS for a in ("--set", s)]]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def launch(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp_pipeline")
    launch(
        [sys.executable, str(SCRIPT), str(root / "writes_single"), *relcast_args(root / "single")]
    )
    launch(
        torchrun("--standalone", "--nproc_per_node=2", str(SCRIPT), str(root / "writes_ddp"))
        + relcast_args(root / "ddp")
    )
    return {"root": root, "single": root / "single", "ddp": root / "ddp"}


def written(log: Path, run: Path) -> collections.Counter:
    """Files written inside ``run`` (relative names; temporary names made comparable)."""
    run_path = os.path.abspath(run) + os.sep
    names = []
    for path in json.loads(log.read_text()):
        if not path.startswith(run_path):
            continue
        rel = path[len(run_path) :]
        base = os.path.basename(rel)
        if base.startswith(".") and ("tmp" in base or "update" in base):
            rel = os.path.join(os.path.dirname(rel), f".{base.split('.')[1]}.<temporary>")
        names.append(rel)
    return collections.Counter(names)


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
    assert written(root / "writes_ddp" / "rank1.json", runs["ddp"]) == {}
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


def test_resume_under_torchrun_skips_done_steps(runs, tmp_path):
    """A second launch on the finished folder trains and rewrites nothing (rank 0 only takes
    the folder's lock, whose file records the holder)."""

    def stamps() -> dict[Path, int]:
        files = [p for p in runs["ddp"].rglob("*") if p.is_file() and p.name != ".relcast.lock"]
        return {p: p.stat().st_mtime_ns for p in files}

    before = stamps()
    proc = launch(
        torchrun("--standalone", "--nproc_per_node=2", str(SCRIPT), str(tmp_path / "writes"))
        + relcast_args(runs["ddp"])
    )
    assert "stage1: done already, skipped" in proc.stdout
    assert proc.stdout.count("done already") == 6  # said once (by rank 0), for every step
    assert stamps() == before
    assert written(tmp_path / "writes" / "rank1.json", runs["ddp"]) == {}


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
            + relcast_args(out),
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
    assert sorted(sum(writes, collections.Counter()).items()) == sorted(
        written(runs["root"] / "writes_single" / "rank0.json", runs["single"]).items()
    )
    assert sorted(len(w) == 0 for w in writes) == [False, True]  # one rank wrote everything
    keys = ["date", "symbol", "model", "horizon"]
    single = pd.read_parquet(runs["single"] / "predictions.parquet").sort_values(keys)
    nodes = pd.read_parquet(out / "predictions.parquet").sort_values(keys)
    np.testing.assert_allclose(nodes["pred"], single["pred"], atol=TOL, rtol=0)
