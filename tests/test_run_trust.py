"""A run folder is untrusted input (issue #27, class 1): every name it holds stays inside it,
no write follows a symlink, it is recognised by relcast's format marker and version, recovery
deletes only what relcast recorded as its own, and only a real launcher's secondary rank skips
the lock. These tests use hand-made folders (no training), so they run in seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hold_lock
from typer.testing import CliRunner

from relcast.cli import app
from relcast.runfolder import (
    JOURNAL,
    LOCK,
    RUN_FORMAT,
    RunFolder,
    RunFolderBusy,
    RunFolderError,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run_folder(path: Path) -> RunFolder:
    """A folder relcast made (its run.json with the format marker), nothing trained."""
    folder = RunFolder(path)
    folder.write_json("run.json", folder.run_info())
    return folder


@pytest.fixture
def outside(tmp_path):
    """A user's file outside the run folder, and what it holds."""
    victim = tmp_path / "home" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("the user's thesis")
    return victim


# ----------------------------------------------------------------------------- journal
def _journals(run: Path, victim: Path) -> dict[str, list]:
    """update.journal contents that try to rename a file out of (or into) the folder."""
    staged = ".panel.parquet.77.0badcafe.update"
    (run / "stage3").mkdir(exist_ok=True)
    (run / "elsewhere").symlink_to(victim.parent, target_is_directory=True)
    return {
        "relative escape": [["payload.txt", "../home/victim.txt"]],
        "staged name, escaping final": [[staged, "../home/victim.txt"]],
        "absolute final": [[staged, str(victim)]],
        "absolute staged": [[str(victim), "panel.parquet"]],
        "through a symlinked folder": [
            ["elsewhere/.victim.txt.77.0badcafe.update", "elsewhere/victim.txt"]
        ],
        "not a staged file": [["config.yaml", "panel.parquet"]],
        "staged for another name": [[".config.yaml.77.0badcafe.update", "panel.parquet"]],
        "not a list of pairs": {"payload.txt": "../home/victim.txt"},
    }


@pytest.mark.parametrize(
    "case",
    [
        "relative escape",
        "staged name, escaping final",
        "absolute final",
        "absolute staged",
        "through a symlinked folder",
        "not a staged file",
        "staged for another name",
        "not a list of pairs",
    ],
)
def test_a_crafted_journal_renames_nothing(case, tmp_path, outside):
    run = tmp_path / "run"
    folder = _run_folder(run)
    journal = _journals(run, outside)[case]
    for name in ("payload.txt", ".panel.parquet.77.0badcafe.update", "config.yaml"):
        (run / name).write_text("attacker's bytes")
    (outside.parent / ".victim.txt.77.0badcafe.update").write_text("attacker's bytes")
    (run / JOURNAL).write_text(json.dumps(journal))
    before = sorted(p.name for p in run.iterdir() if p.name != LOCK)
    with pytest.raises(RunFolderError, match="was not written by relcast"):
        folder.recover_if_free()
    assert outside.read_text() == "the user's thesis"
    assert sorted(p.name for p in run.iterdir() if p.name != LOCK) == before  # no rename
    # the CLI: a read-only command on such a folder exits 2, no traceback, no rename
    result = CliRunner().invoke(app, ["predict", "--run", str(run), "--data", "demo"])
    assert result.exit_code == 2, result.output
    assert outside.read_text() == "the user's thesis"


@pytest.mark.parametrize(
    "name", ["../x.json", "/tmp/x.json", "stage3/../../x.json", "linked/x.json", "a/linked/x"]
)
def test_every_name_stays_inside_the_folder(name, tmp_path, outside):
    run = tmp_path / "run"
    folder = _run_folder(run)
    (run / "linked").symlink_to(outside.parent, target_is_directory=True)
    (run / "a").mkdir()
    (run / "a" / "linked").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(RunFolderError):
        folder.write(name, b"x")
    with pytest.raises(RunFolderError):
        folder.file(name)
    assert sorted(p.name for p in outside.parent.iterdir()) == ["victim.txt"]


def test_a_stage3_model_name_from_a_crafted_config_cannot_write_outside(tmp_path, outside):
    import torch

    folder = _run_folder(tmp_path / "run")
    with pytest.raises(RunFolderError):
        folder.save_weights("stage3/../../home/model.safetensors", torch.nn.Linear(1, 1), {}, "x")
    assert sorted(p.name for p in outside.parent.iterdir()) == ["victim.txt"]


# ----------------------------------------------------------------------------- symlinks
def test_a_symlinked_lock_is_never_followed(tmp_path, outside):
    run = tmp_path / "run"
    _run_folder(run)
    (run / LOCK).symlink_to(outside)
    with pytest.raises(RunFolderError, match="symlink"):
        with RunFolder(run).lock("report"):
            pass
    assert outside.read_text() == "the user's thesis"
    result = CliRunner().invoke(app, ["report", "--run", str(run)])
    assert result.exit_code == 2, result.output
    assert outside.read_text() == "the user's thesis"


@pytest.mark.parametrize("name", ["metrics.json", "split.json", "stage1/model.json"])
def test_a_write_replaces_a_symlink_instead_of_following_it(name, tmp_path, outside):
    run = tmp_path / "run"
    folder = _run_folder(run)
    (run / name).parent.mkdir(exist_ok=True)
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(outside)
    with folder.lock("evaluate"):
        folder.write_json(name, {"kind": "relcast run folder", "format": 1, "steps": {}})
    assert outside.read_text() == "the user's thesis"
    assert not (run / name).is_symlink()


def test_written_files_are_readable_by_others(tmp_path):
    import numpy as np
    import pandas as pd

    from relcast.relationships.store import RelationshipStore

    old = os.umask(0o022)
    try:
        folder = _run_folder(tmp_path / "run")
        folder.write("panel.parquet", b"x")
        store = RelationshipStore(
            np.array(["2024-01-02"], dtype="datetime64[ns]"),
            np.array(["A"]),
            ["r"],
            np.zeros((1, 1, 1), np.float32),
            np.ones((1, 1), bool),
            np.zeros(1, np.int64),
        )
        store.write_parquet(folder.file("data_with_relationships.parquet"))
        assert pd.read_parquet(folder.file("data_with_relationships.parquet")).shape[0] == 1
        for name in ("panel.parquet", "data_with_relationships.parquet", "run.json"):
            assert (folder.file(name).stat().st_mode & 0o777) == 0o644, name
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- the lock
@pytest.mark.parametrize(
    "variables",
    [
        {"RANK": "1"},
        {"LOCAL_RANK": "1"},
        {"NODE_RANK": "1"},
        {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "23456"},
    ],
    ids=["RANK", "LOCAL_RANK", "NODE_RANK", "kubeflow pod"],
)
def test_rank_variables_without_a_launcher_never_switch_the_lock_off(
    variables, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    _run_folder(run)
    holder = hold_lock(run, "update")
    try:
        for key, value in variables.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(RunFolderBusy):
            with RunFolder(run).lock("update", timeout=0):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_secondary_rank_of_another_job_does_not_skip_the_lock(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _run_folder(run)
    holder = hold_lock(run, "update")  # a plain process holds it (not rank 0 of our job)
    job = {"WORLD_SIZE": "2", "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2", "RANK": "1",
           "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29512",
           "TORCHELASTIC_RUN_ID": "other"}  # fmt: skip
    try:
        for key, value in job.items():
            monkeypatch.setenv(key, value)
        from relcast.runfolder import lock as lock_module

        monkeypatch.setattr(lock_module.time, "monotonic", _fast_clock())
        with pytest.raises(RunFolderBusy):
            with RunFolder(run).lock("update", timeout=0):
                pass
    finally:
        holder.kill()
        holder.wait()


def _fast_clock():
    """A monotonic clock that runs a minute per call (the secondary rank's wait ends at once)."""
    now = [0.0]

    def tick() -> float:
        now[0] += 60.0
        return now[0]

    return tick


# ----------------------------------------------------------------------------- recognition
def test_a_folder_with_someone_elses_run_json_is_not_a_run_folder(tmp_path):
    drafts = tmp_path / "drafts"
    drafts.mkdir()
    (drafts / "run.json").write_text(json.dumps({"name": "my experiment", "format": 3}))
    (drafts / ".chapter1.tmp").write_text("draft")
    (drafts / "sub").mkdir()
    (drafts / "sub" / ".notes.md.tmp").write_text("draft")
    (drafts / "sub" / ".panel.parquet.4242.0badcafe.tmp").write_text("draft")
    (drafts / LOCK).write_text(json.dumps({"pid": 4242}))
    before = sorted(str(p) for p in drafts.rglob("*"))
    assert not RunFolder(drafts).is_run_folder()
    for args in (
        ["predict", "--run", str(drafts), "--data", "demo"],
        ["report", "--run", str(drafts)],
        ["run", "--data", "demo", "--out", str(drafts)],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert sorted(str(p) for p in drafts.rglob("*")) == before, args
    assert not RunFolder(drafts).leftovers({4242})


def test_a_run_folder_of_another_format_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    info = {"kind": "relcast run folder", "format": RUN_FORMAT + 1, "steps": {}}
    (run / "run.json").write_text(json.dumps(info))
    assert RunFolder(run).format_of() == RUN_FORMAT + 1
    with pytest.raises(RunFolderError, match="another relcast version"):
        with RunFolder(run).lock("run"):
            pass


# ----------------------------------------------------------------------------- recovery
def test_recovery_deletes_only_what_relcast_recorded(tmp_path):
    run = tmp_path / "run"
    folder = _run_folder(run)
    (run / "stage3" / "gru").mkdir(parents=True)
    user = [".notes.tmp", "stage3/gru/.draft.tmp", ".metrics.json.4242.0badcafe.tmp",
            "stage3/gru/.model.safetensors.4242.0badcafe.tmp", "my.update"]  # fmt: skip
    for name in user:
        (run / name).write_text("the user's")
    with folder.lock("run"):  # nobody died holding the lock: nothing is an orphan
        pass
    assert all((run / n).exists() for n in user)
    # a holder with pid 4242 died holding the lock: its temporary files are orphans
    (run / LOCK).write_text(json.dumps({"pid": 4242, "command": "stage3", "since": "x"}))
    with folder.lock("run"):
        pass
    gone = {".metrics.json.4242.0badcafe.tmp", "stage3/gru/.model.safetensors.4242.0badcafe.tmp"}
    assert [n for n in user if not (run / n).exists()] == sorted(gone, key=user.index)
    assert json.loads((run / LOCK).read_text() or "{}").get("pending") is None


def test_a_killed_memmap_prepares_spill_folders_are_removed(tmp_path):
    run = tmp_path / "run"
    folder = _run_folder(run)
    spill = {".blockread.4242.0badcafe.tmp": True, ".blockread-k2j4_x9a": True,  # ours
             ".blockread.4243.0badcafe.tmp": False,  # a pid relcast did not record
             "stage1/.blockread-k2j4_x9a": False}  # fmt: skip
    for name in spill:
        (run / name).mkdir(parents=True)
        (run / name / "block0.arrow").write_bytes(b"spilled rows")
    (run / LOCK).write_text(json.dumps({"pid": 4242, "command": "prepare", "since": "x"}))
    with folder.lock("run"):
        pass
    assert {n: not (run / n).exists() for n in spill} == spill


def test_a_killed_holders_temporary_files_are_removed_by_the_next_holder(tmp_path):
    run = tmp_path / "run"
    _run_folder(run)
    code = (
        "import sys, time\n"
        "from relcast.runfolder import RunFolder, temp_path\n"
        "f = RunFolder(sys.argv[1])\n"
        "held = f.lock('update')\nheld.__enter__()\n"
        "temp_path(f.file('panel.parquet')).write_bytes(b'half')\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout.readline().strip() == "held"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(run.glob(".panel.parquet.*.tmp"))) == 1
    with RunFolder(run).lock("run", timeout=0):
        pass
    assert not list(run.glob(".panel.parquet.*.tmp"))


@pytest.mark.parametrize("name", ["../../home", "../run2", "x/../../../home"])
def test_a_walk_forward_block_name_cannot_lead_outside(name, tmp_path):
    from relcast.run.walk_forward import last_block

    folder = _run_folder(tmp_path / "run")
    info = {**folder.run_info(), "walk_forward": True, "steps": {"blocks": {"names": [name]}}}
    folder.write_json("run.json", info)
    with pytest.raises(RunFolderError, match="outside the run folder"):
        last_block(tmp_path / "run")
