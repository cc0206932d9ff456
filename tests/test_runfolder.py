"""The run folder's owner: atomic writes with per-process temporary names, one writer per
folder (fail fast or wait; a killed holder never blocks), recovery of an interrupted update by
every command, crash leftovers removed, foreign folders refused, the data fingerprint, no
Lightning pickles left behind, and ``update`` extending ``data_with_relationships``."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli_sets, hold_lock, interrupt_update
from typer.testing import CliRunner

import relcast
from relcast.cli import app
from relcast.runfolder import (
    JOURNAL,
    LOCK,
    RunFolder,
    RunFolderBusy,
    RunFolderError,
    atomic_write,
    data_changes,
    data_fingerprint,
    temp_path,
)

DAYS, NEW_DAYS = 240, 6
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _sets(extra=()):
    return cli_sets(["stage3.feature_sets=[hybrid]", *extra])


def _run_args(data: Path, out: Path, extra=(), force: bool = False) -> list[str]:
    return ["run", "--data", str(data), "--out", str(out), *_sets(extra)] + (
        ["--force"] if force else []
    )


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``relcast <args>`` in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "relcast.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**ENV, **(env or {})},
    )


def _wait_for_holder(folder: Path, command: str, proc: subprocess.Popen, limit: float = 60.0):
    """Block until ``proc`` holds the folder's lock for ``command``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            info = json.loads((folder / LOCK).read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if info.get("pid") == proc.pid and info.get("command") == command:
            return
        time.sleep(0.02)
    raise AssertionError(f"{command} never took the lock")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("rf_market")
    panel, _ = relcast.synthetic_market(num_stocks=5, num_days=DAYS + NEW_DAYS, seed=5)
    history = panel.select(end=panel.dates[DAYS - 1])
    history.to_frame().to_csv(root / "history.csv", index=False)
    half = DAYS + NEW_DAYS // 2
    panel.select(start=panel.dates[DAYS], end=panel.dates[half - 1]).to_frame().to_csv(
        root / "new_a.csv", index=False
    )
    panel.select(start=panel.dates[half]).to_frame().to_csv(root / "new_b.csv", index=False)
    panel.select(start=panel.dates[DAYS]).to_frame().to_csv(root / "new.csv", index=False)
    return {"full": panel, "root": root, "history": root / "history.csv"}


@pytest.fixture(scope="module")
def run_dir(market, tmp_path_factory):
    out = tmp_path_factory.mktemp("rf_run") / "run"
    result = CliRunner().invoke(app, _run_args(market["history"], out))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def _copy(run_dir: Path, tmp_path: Path, name: str = "run") -> Path:
    work = tmp_path / name
    shutil.copytree(run_dir, work)
    return work


def _consistent(folder: Path) -> int:
    """The panel and the relationship store of ``folder`` cover the same dates; how many."""
    from relcast.run.runner import Pipeline

    pipe = Pipeline.open(folder)
    with np.load(folder / "relationships.npz", allow_pickle=False) as z:
        rel_dates = z["dates"].astype("datetime64[ns]")
        assert len(z["fold_of"]) == len(rel_dates)
    np.testing.assert_array_equal(rel_dates, pipe.ctx.panel.dates)
    return pipe.ctx.panel.num_dates


# ----------------------------------------------------------------------------- atomic writes
def test_temporary_names_differ_per_process_and_per_call(tmp_path):
    a, b = temp_path(tmp_path / "x.json"), temp_path(tmp_path / "x.json")
    assert a != b and a.parent == tmp_path
    assert a.name.startswith(f".x.json.{os.getpid()}.") and a.name.endswith(".tmp")


def _hammer(path: str, byte: int, rounds: int) -> None:
    for _ in range(rounds):
        atomic_write(Path(path), bytes([byte]) * 200_000)


def test_two_processes_writing_one_file_never_collide(tmp_path):
    # with one shared temporary name, one process renames the other's half-written file
    # (or finds it gone): here every write lands whole and nothing is left behind
    target = tmp_path / "shared.bin"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(target), b, 40)) for b in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    data = target.read_bytes()
    assert len(data) == 200_000 and len(set(data)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.bin"]


def test_a_failed_write_leaves_nothing(tmp_path):
    def broken(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    (tmp_path / "keep.json").write_text("old")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "keep.json", broken)
    assert (tmp_path / "keep.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


# ----------------------------------------------------------------------------- lock
def test_second_writer_fails_fast_naming_the_holder(tmp_path):
    folder = tmp_path / "run"
    holder = hold_lock(folder, "update")
    try:
        with pytest.raises(RunFolderBusy, match=rf"in use by pid {holder.pid} \(command update"):
            with RunFolder(folder).lock("run", timeout=0):
                pass
        # the CLI says the same, exit 2 and no traceback
        result = CliRunner().invoke(app, ["report", "--run", str(folder)])
        assert result.exit_code == 2 and f"pid {holder.pid}" in result.output
        assert "Traceback" not in result.output
    finally:
        holder.kill()
        holder.wait()


def test_waiting_writer_gets_the_folder_when_the_holder_ends(tmp_path):
    folder = tmp_path / "run"
    holder = hold_lock(folder, "run")
    start = time.monotonic()
    ended = {}

    def end_holder_soon():
        time.sleep(0.5)
        holder.terminate()
        ended["at"] = time.monotonic()

    import threading

    threading.Thread(target=end_holder_soon).start()
    with RunFolder(folder).lock("update", timeout=30):
        assert time.monotonic() >= ended["at"] >= start
        assert json.loads((folder / LOCK).read_text())["command"] == "update"
    holder.wait()


def test_killed_holder_does_not_block_the_next_command(tmp_path):
    folder = tmp_path / "run"
    holder = hold_lock(folder, "stage3")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with RunFolder(folder).lock("run", timeout=0):  # the OS released the dead holder's lock
        pass


def test_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path):
    import threading

    folder = RunFolder(tmp_path / "run")
    seen = []
    with folder.lock("run"), folder.lock("stage1"):  # a step inside `run`
        thread = threading.Thread(
            target=lambda: seen.append(pytest.raises(RunFolderBusy, folder.lock("x").__enter__))
        )
        thread.start()
        thread.join()
    assert len(seen) == 1


def test_ddp_workers_neither_lock_nor_recover(tmp_path):
    # a real launcher's rank 1 (torchrun's variables, rank 0 of the same job holding the
    # folder) neither locks nor deletes rank 0's temporary files
    folder = tmp_path / "run"
    job = {"WORLD_SIZE": "2", "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": "29511",
           "MASTER_ADDR": "127.0.0.1", "TORCHELASTIC_RUN_ID": "t1"}  # fmt: skip
    holder = hold_lock(folder, "run", env={**job, "RANK": "0", "LOCAL_RANK": "0"})
    try:
        mine = folder / f".x.json.{holder.pid}.0badcafe.tmp"
        mine.write_text("rank 0 is writing this")
        code = (
            "import sys\n"
            "from relcast.runfolder import RunFolder\n"
            "with RunFolder(sys.argv[1]).lock('run', timeout=0):\n"
            "    print('inside', flush=True)\n"
        )
        env = {**ENV, **job, "RANK": "1", "LOCAL_RANK": "1"}
        out = subprocess.run(
            [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env
        )
        assert out.stdout.strip() == "inside", out.stderr
        assert mine.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_command_that_writes_nothing_leaves_no_folder(tmp_path):
    folder = tmp_path / "new"
    with RunFolder(folder).lock("run"):
        assert (folder / LOCK).exists()
    assert not folder.exists()


# ----------------------------------------------------------------------------- --out safety
def test_out_on_a_folder_of_user_files_is_refused_and_untouched(tmp_path):
    mine = tmp_path / "my_project"
    mine.mkdir()
    files = {"config.yaml": "my: settings\n", "report.html": "<p>my report</p>", "a.csv": "1,2\n"}
    for name, text in files.items():
        (mine / name).write_text(text)
    result = CliRunner().invoke(app, ["run", "--data", "synthetic", "--out", str(mine)])
    assert result.exit_code == 2, result.output
    assert "not a relcast run folder" in result.output and "Traceback" not in result.output
    assert {p.name: p.read_text() for p in mine.iterdir()} == files


def test_out_naming_a_file_is_refused_with_exit_2(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for command in (["run", "--data", "synthetic", "--out"], ["report", "--run"]):
        result = CliRunner().invoke(app, [*command, str(target)])
        assert result.exit_code == 2, result.output
        assert "is a file" in result.output and "Traceback" not in result.output
    assert target.read_text() == "keep me"


# ----------------------------------------------------------------------------- a real run
def test_run_leaves_no_lightning_pickles(run_dir):
    assert not list(run_dir.rglob("*.ckpt"))
    assert (run_dir / "stage1" / "model.safetensors").exists()
    assert list((run_dir / "logs").rglob("metrics.csv"))  # training curves stay


def test_update_extends_data_with_relationships(run_dir, market, tmp_path):
    from relcast.relationships.store import RelationshipStore
    from relcast.run.inference import update_run

    work = _copy(run_dir, tmp_path)
    before = RelationshipStore.read_parquet(work / "data_with_relationships.parquet")
    old = pd.read_parquet(work / "data_with_relationships.parquet")
    update_run(work, str(market["root"] / "new.csv"))
    after = RelationshipStore.read_parquet(work / "data_with_relationships.parquet")
    new = pd.read_parquet(work / "data_with_relationships.parquet")
    full = market["full"]
    assert after.dates[-1] == full.dates[-1] and len(after.dates) == len(before.dates) + NEW_DAYS
    assert set(new["date"]) - set(old["date"]) == set(pd.to_datetime(full.dates[DAYS:]))
    # the stored rows are unchanged; the new rows agree with relationships.npz
    pd.testing.assert_frame_equal(new.iloc[: len(old)], old, check_exact=False, rtol=1e-6)
    with np.load(work / "relationships.npz", allow_pickle=False) as z:
        values, names = z["values"], [str(n) for n in z["names"]]
    rows = new.iloc[len(old) :]
    t = np.searchsorted(full.dates, rows["date"].to_numpy(dtype="datetime64[ns]"))
    n = pd.Index(after.symbols).get_indexer(rows["symbol"])  # the run's symbol order
    np.testing.assert_allclose(rows[names].to_numpy(), values[t, n], rtol=1e-6)
    assert (rows["fold"] == -1).all()


def test_a_run_without_the_table_extracts_and_updates_without_it(run_dir, market, tmp_path):
    """``relationships.table: false`` (very large runs): extraction and ``update`` keep the
    relationships in relationships.npz and write no data_with_relationships.parquet."""
    import yaml

    from relcast.run.inference import update_run
    from relcast.run.runner import Pipeline

    work = _copy(run_dir, tmp_path)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["relationships"]["table"] = False
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    (work / "data_with_relationships.parquet").unlink()
    pipe = Pipeline.open(work)
    pipe.step("extract")
    assert not (work / "data_with_relationships.parquet").exists()
    with np.load(run_dir / "relationships.npz") as a, np.load(work / "relationships.npz") as b:
        np.testing.assert_array_equal(a["values"], b["values"])  # the same extraction
    update_run(work, str(market["root"] / "new.csv"))
    assert not (work / "data_with_relationships.parquet").exists()
    with np.load(work / "relationships.npz") as z:
        assert len(z["values"]) == len(market["full"].dates)


def test_identical_runs_are_byte_identical(run_dir, market, tmp_path):
    # everything a run computes; run.json (timings), logs/ (timings), report.html and
    # plots/ (rendered from the same files) and the lock file are left out
    again = tmp_path / "again"
    result = CliRunner().invoke(app, _run_args(market["history"], again))
    assert result.exit_code == 0, result.output

    def digest(folder: Path) -> dict[str, str]:
        import hashlib

        skip = ("run.json", "report.html", LOCK)
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
            and p.name not in skip
            and p.relative_to(folder).parts[0] not in ("logs", "plots")
        }

    first, second = digest(run_dir), digest(again)
    assert "stage1/model.safetensors" in first and "predictions.parquet" in first
    first.pop("metrics.json"), second.pop("metrics.json")
    assert first == second
    timing = ("seconds_per_epoch", "windows_per_second")  # metrics.json keeps the speeds too

    def metrics(folder: Path) -> dict:
        def strip(obj):
            if isinstance(obj, dict):
                return {k: strip(v) for k, v in obj.items() if k not in timing}
            return obj

        return strip(json.loads((folder / "metrics.json").read_text()))

    assert metrics(run_dir) == metrics(again)


def test_nothing_is_unpickled():
    # run folders and user files are read as safetensors, JSON, YAML (safe_load), Parquet,
    # npz without pickles and LightGBM text; the one torch.load reads the checkpoint the
    # same process has just written (RunFolder deletes it once the weights are saved)
    import re

    src = Path(relcast.__file__).parent
    risky = re.compile(
        r"pickle\.loads?\(|read_pickle|joblib\.load|allow_pickle=True|yaml\.load\(|"
        r"unsafe_load|torch\.load\(|dill\.|cloudpickle"
    )
    found = [
        f"{path.relative_to(src)}:{i}"
        for path in sorted(src.rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if risky.search(line)
    ]
    assert [f.split(":")[0] for f in found] == ["training/common.py"], found


LEFTOVERS = [  # a holder with pid 4242 died holding the lock; older versions' exact names
    ".panel.build",
    ".panel.build.tmp",
    ".update.journal.tmp",
    "panel.parquet.tmp",
    ".metrics.json.4242.0badcafe.tmp",
    ".panel.parquet.4242.0badcafe.update",
    "stage3/hybrid_gru/.model.safetensors.4242.0badcafe.tmp",
]
NOT_OURS = [  # look like leftovers, but relcast did not record them: kept
    ".report.html.tmp",
    "stage1/.model.json.tmp",
    ".metrics.json.4243.0badcafe.tmp",
    "stage3/.panel.build",
]


@pytest.mark.parametrize("command", ["report", "evaluate", "stage3", "extract"])
def test_every_command_recovers_an_interrupted_update_first(
    command, run_dir, market, tmp_path, monkeypatch
):
    work = _copy(run_dir, tmp_path)
    interrupt_update(work, market["root"] / "new.csv", monkeypatch)
    for name in LEFTOVERS + NOT_OURS:
        (work / name).write_bytes(b"crash leftover")
    (work / LOCK).write_text(json.dumps({"pid": 4242, "command": "stage3", "since": "x"}))
    (work / "my_notes.txt").write_text("not a leftover")
    result = CliRunner().invoke(app, [command, "--run", str(work)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert not (work / JOURNAL).exists()
    assert not [name for name in LEFTOVERS if (work / name).exists()]
    assert all((work / name).exists() for name in NOT_OURS)
    assert not list(work.rglob("*.update"))
    assert (work / "my_notes.txt").read_text() == "not a leftover"
    assert _consistent(work) == DAYS + NEW_DAYS  # the update was finished, not half-applied


@pytest.mark.parametrize("case", ["skips a day", "hole inside", "ten years ahead", "intraday"])
def test_update_refuses_a_batch_that_does_not_continue_the_run(case, run_dir, market, tmp_path):
    work = _copy(run_dir, tmp_path)
    frame = market["full"].select(start=market["full"].dates[DAYS]).to_frame()
    dates = sorted(frame["date"].unique())
    if case == "skips a day":
        frame = frame[frame["date"] != dates[0]]
    elif case == "hole inside":
        frame = frame[frame["date"] != dates[2]]
    elif case == "ten years ahead":
        frame["date"] = frame["date"] + pd.offsets.BDay(2610)
    else:
        frame = pd.concat(
            [frame.assign(date=frame["date"] + pd.Timedelta(minutes=m)) for m in (570, 571)]
        )
    frame.to_csv(tmp_path / "batch.csv", index=False)
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file() and p.name != LOCK}
    result = CliRunner().invoke(
        app, ["update", "--run", str(work), "--data", str(tmp_path / "batch.csv")]
    )
    assert result.exit_code == 2, result.output + repr(result.exception)
    why = "trained on daily bars" if case == "intraday" else "weekday(s) without bars"
    assert why in result.output, result.output
    after = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file() and p.name != LOCK}
    assert after == before


def test_update_reads_new_bars_with_date_format(run_dir, market, tmp_path):
    # issue #27: `update` said "set data.date_format" but had no way to set it
    work = _copy(run_dir, tmp_path)
    frame = market["full"].select(start=market["full"].dates[DAYS]).to_frame()
    frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%Y|%m|%d")
    frame.to_csv(tmp_path / "batch.csv", index=False)
    args = ["update", "--run", str(work), "--data", str(tmp_path / "batch.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--date-format" in result.output, result.output
    result = CliRunner().invoke(app, [*args, "--date-format", "%Y|%m|%d"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert _consistent(work) == DAYS + NEW_DAYS


# ----------------------------------------------------------------------------- concurrency
def test_concurrent_updates_lose_nothing(run_dir, market, tmp_path):
    # two `update`s at once (the second waits for the folder): every accepted batch is in
    # the panel, the relationship store matches the panel, a refused one says why
    work = _copy(run_dir, tmp_path)
    procs = [
        _cli("update", "--run", str(work), "--data", str(market["root"] / f"new_{b}.csv"),
             env={"RELCAST_LOCK_WAIT": "300"})
        for b in ("a", "b")
    ]  # fmt: skip
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert "Traceback" not in "".join(outs), outs
    assert set(codes) <= {0, 2}, outs
    full = market["full"]
    half = DAYS + NEW_DAYS // 2
    accepted = [full.dates[DAYS:half], full.dates[half:]]
    expected = DAYS + sum(len(d) for d, code in zip(accepted, codes, strict=True) if code == 0)
    assert _consistent(work) == expected
    live = pd.read_parquet(work / "live_predictions.parquet")
    for dates, code, out in zip(accepted, codes, outs, strict=True):
        if code == 0:
            assert set(pd.to_datetime(dates)) <= set(live["date"])
        else:  # a went first: b's dates are no longer new; b went first: it skips a's days
            assert "not after the run's last date" in out or "weekday(s) without bars" in out
    assert codes[0] == 0 or codes[1] == 0


def test_two_runs_with_different_configs_never_mix(market, tmp_path):
    out = tmp_path / "run"
    first = _cli(*_run_args(market["history"], out))
    _wait_for_holder(out, "run", first)
    second = _cli(*_run_args(market["history"], out, ["stage3.hidden_size=12"]))
    text = second.communicate(timeout=120)[0]
    assert second.returncode == 2, text
    assert f"in use by pid {first.pid} (command run" in text and "Traceback" not in text
    assert first.wait(timeout=300) == 0, first.stdout.read()
    # the second config, once the folder is free: refused, not mixed into the first run
    result = CliRunner().invoke(app, _run_args(market["history"], out, ["stage3.hidden_size=12"]))
    assert result.exit_code == 2 and "different config" in result.output
    info = json.loads((out / "stage3" / "hybrid_gru" / "model.json").read_text())
    assert info["config"]["hidden_size"] == 8
    assert "hidden_size: 8" in (out / "config.yaml").read_text()


def test_killed_update_leaves_a_usable_run(run_dir, market, tmp_path):
    work = _copy(run_dir, tmp_path)
    proc = _cli("update", "--run", str(work), "--data", str(market["root"] / "new.csv"))
    _wait_for_holder(work, "update", proc)
    time.sleep(0.3)  # somewhere inside the update
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = CliRunner().invoke(app, ["report", "--run", str(work)])
    assert result.exit_code == 0, result.output
    assert _consistent(work) in (DAYS, DAYS + NEW_DAYS)  # all of the update, or none of it
    assert not RunFolder(work).leftovers()


# ----------------------------------------------------------------------------- fingerprint
def test_fingerprint_ignores_a_touch_and_sees_edits(market, tmp_path):
    csv = tmp_path / "prices.csv"
    shutil.copy(market["history"], csv)
    panel = relcast.read_panel(str(csv))
    recorded = data_fingerprint([csv], panel)

    def load():
        return relcast.read_panel(str(csv))

    assert data_changes(recorded, [csv], load) is None
    os.utime(csv, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes
    assert data_changes(recorded, [csv], load) is None
    frame = pd.read_csv(csv)
    frame.loc[frame.index[-1], "volume"] *= 2
    frame.to_csv(csv, index=False)
    assert "prices or volumes differ" in data_changes(recorded, [csv], load)
    frame[frame["date"] != frame["date"].max()].to_csv(csv, index=False)  # one date fewer
    assert "dates or symbols differ" in data_changes(recorded, [csv], load)
    assert data_changes(None, [csv], load) is None  # a run from before fingerprints


def test_rerun_on_changed_data_asks_for_force(market, tmp_path):
    csv, out = tmp_path / "prices.csv", tmp_path / "run"
    shutil.copy(market["history"], csv)
    assert CliRunner().invoke(app, _run_args(csv, out)).exit_code == 0
    fp = json.loads((out / "run.json").read_text())["steps"]["prepare"]["fingerprint"]
    assert [f["path"] for f in fp["files"]] == [str(csv.resolve())]
    frame = pd.read_csv(csv)
    frame.loc[frame.index[-1], "volume"] += 1  # one bar corrected by the data vendor
    frame.to_csv(csv, index=False)
    result = CliRunner().invoke(app, _run_args(csv, out))
    assert result.exit_code == 2, result.output
    assert "changed since it was prepared" in result.output and "--force" in result.output
    assert "prices.csv" in result.output and "Traceback" not in result.output
    (out / "live_predictions.parquet").write_bytes(b"forecasts of the old panel")
    result = CliRunner().invoke(app, _run_args(csv, out, force=True))
    assert result.exit_code == 0, result.output
    assert not (out / "live_predictions.parquet").exists()  # they belong to the old data
    again = CliRunner().invoke(app, _run_args(csv, out))
    assert again.exit_code == 0 and "done already, skipped" in again.output


def test_a_folder_raises_run_folder_errors_for_missing_files(tmp_path):
    from relcast.run.runner import Pipeline

    with pytest.raises(RunFolderError, match="run.json"):
        Pipeline.open(tmp_path / "nothing")


def test_relationship_store_round_trip_and_damage(tmp_path):
    from relcast.runfolder.formats import read_relationships, relationships_npz

    T, N, K = 4, 3, 2
    dates = np.arange("2020-01-01", "2020-01-05", dtype="datetime64[D]").astype("datetime64[ns]")
    values = np.arange(T * N * K, dtype=np.float32).reshape(T, N, K)
    mask = values[..., 0] > 3
    path = tmp_path / "relationships.npz"
    path.write_bytes(relationships_npz(["a", "b"], values, mask, np.array([0, 1, -1, -1]), dates))
    got = read_relationships(path)
    assert got["names"] == ["a", "b"] and got["dates"].dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(got["dates"], dates)
    np.testing.assert_array_equal(got["values"], values)
    np.testing.assert_array_equal(got["mask"], mask)
    # one date fewer than the values: refused, not silently misaligned
    path.write_bytes(relationships_npz(["a", "b"], values, mask, np.zeros(3), dates[:3]))
    with pytest.raises(RunFolderError, match="do not fit together"):
        read_relationships(path)
    path.write_bytes(b"not a zip file")
    with pytest.raises(RunFolderError, match="damaged"):
        read_relationships(path)
    with pytest.raises(RunFolderError, match="run `relcast extract` first"):
        read_relationships(tmp_path / "missing.npz")
