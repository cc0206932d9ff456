"""Progress that reads in a log: captured output (not a terminal) gets one line per epoch with
its fields, one per out-of-fold fold, and timed lines for long predict passes; a terminal keeps
Lightning's bar and gets no lines."""

import io
import re

import numpy as np
import pytest

from relcast import progress
from relcast.models.cross_sectional import CrossSectionalTransformer, Stage1Config, predict_stage1
from relcast.progress import PassProgress, format_duration, progress_style
from relcast.relationships.store import (
    Stage1Fit,
    StorePlan,
    build_relationship_store,
    make_extractor,
)
from relcast.training.common import make_trainer
from relcast.training.progress_log import epoch_log_callback
from relcast.training.specs import Stage1Spec, TrainerSpec
from relcast.training.stage1 import fit_stage1

EPOCH_LINE = re.compile(
    r"^\[relcast\] (?P<label>.+) epoch (?P<epoch>\d+)/(?P<max>\d+): "
    r"val_rank_ic (?P<val>-?\d+\.\d{4}) \(best -?\d+\.\d{4}\), train_loss -?\d+\.\d{4}, "
    r"(?P<sec>\d+(\.\d\d)?)s/epoch, <= (?P<left>\S+) left$"
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def market(make_market):
    m = make_market(8, 300, seed=5, horizons=1)
    config = Stage1Config(
        num_features=m.features.values.shape[2],
        num_stocks=len(m.panel.symbols),
        horizons=1,
        d_model=16,
        num_heads=2,
        num_layers=1,
        relationship_dim=4,
        dropout=0.0,
    )
    return m, config


@pytest.fixture(autouse=True)
def auto_style(monkeypatch):
    monkeypatch.delenv("RELCAST_PROGRESS", raising=False)


def epoch_lines(text: str, label: str) -> list[re.Match]:
    found = [EPOCH_LINE.match(line) for line in text.splitlines()]
    return [m for m in found if m and m["label"] == label]


def test_stage1_prints_one_line_per_epoch_with_its_fields(market, tmp_path, capsys):
    m, config = market
    fit_stage1(
        m.features, m.labels, m.split, config,
        Stage1Spec(max_epochs=3, patience=10, batch_dates=64),
        TrainerSpec(out_dir=tmp_path, accelerator="cpu"),  # progress on (the default)
    )  # fmt: skip
    out = capsys.readouterr().out
    lines = epoch_lines(out, "Stage1")
    assert [(int(x["epoch"]), int(x["max"])) for x in lines] == [(1, 3), (2, 3), (3, 3)]
    assert all(float(x["sec"]) > 0 for x in lines)
    assert lines[-1]["left"] == "0s"  # the last epoch leaves nothing
    assert "\r" not in out  # no progress-bar redraws in a log
    assert "[relcast] Stage1: up to 3 epochs of" in out


def test_a_terminal_keeps_the_bar_and_gets_no_lines(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdout", Terminal())
    assert progress_style() == "bar"
    spec = TrainerSpec(out_dir=tmp_path, label="Stage1")
    trainer = make_trainer(spec)
    assert trainer.progress_bar_callback is not None
    assert not any(type(c).__name__ == "EpochLog" for c in trainer.callbacks)
    monkeypatch.setattr("sys.stdout", io.StringIO())  # a file or a pipe
    trainer = make_trainer(spec)
    assert trainer.progress_bar_callback is None
    assert sum(type(c).__name__ == "EpochLog" for c in trainer.callbacks) == 1
    quiet = make_trainer(TrainerSpec(out_dir=tmp_path, progress=False))
    assert quiet.progress_bar_callback is None
    assert not any(type(c).__name__ == "EpochLog" for c in quiet.callbacks)
    monkeypatch.setenv("RELCAST_PROGRESS", "bar")  # forced, whatever the output is
    assert progress_style() == "bar"
    monkeypatch.setenv("RELCAST_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="RELCAST_PROGRESS"):
        progress_style()


def test_epoch_line_marks_epochs_without_validation():
    callback = epoch_log_callback("Stage1 fold 1/3", "val_rank_ic")

    class Trainer:
        current_epoch, max_epochs, callback_metrics = 0, 4, {"train_loss": -0.5}

    callback.seconds = [10.0, 20.0]
    line = callback.line(Trainer())
    assert line == (
        "Stage1 fold 1/3 epoch 1/4: val_rank_ic - (not validated this epoch), "
        "train_loss -0.5000, 15s/epoch, <= 45s left"
    )
    callback.validated = True
    Trainer.callback_metrics = {"val_rank_ic": 0.25, "train_loss": -0.5}
    assert "val_rank_ic 0.2500 (best 0.2500)" in callback.line(Trainer())
    Trainer.callback_metrics = {"val_rank_ic": 0.1}
    assert "val_rank_ic 0.1000 (best 0.2500)" in callback.line(Trainer())


def test_out_of_fold_prints_one_line_per_fold(market, tmp_path, capsys):
    m, config = market
    fit = Stage1Fit(
        config, Stage1Spec(max_epochs=1), TrainerSpec(out_dir=tmp_path), target=~m.panel.is_index
    )
    extractor = make_extractor("v2", method="pca", n_components=2)
    build_relationship_store(
        m.features, m.labels, m.split, extractor, fit, StorePlan(n_folds=2, fold_epochs=1)
    )
    out = capsys.readouterr().out
    folds = re.findall(r"^\[relcast\] out-of-fold fold (\d)/2 done: .* (\S+) left$", out, re.M)
    assert [k for k, _ in folds] == ["1", "2"]
    assert folds[-1][1] == "~0s"
    for label in ("Stage1 full span", "Stage1 fold 1/2", "Stage1 fold 2/2"):
        assert "[relcast] " + label + " epoch 1/1: " in out


def test_predict_passes_print_timed_lines_in_logs_only(market, monkeypatch, capsys):
    m, config = market
    model = CrossSectionalTransformer(config).eval()
    monkeypatch.setattr(progress, "PASS_LINE_SECONDS", 0.0)  # every batch counts as long
    T = len(m.features.dates)
    predict_stage1(model, m.features, batch_dates=128)
    found = re.findall(r"^\[relcast\] Stage1 predict: (\d+)/(\d+) dates, .*$",
                       capsys.readouterr().out, re.M)  # fmt: skip
    done = [int(a) for a, _ in found]
    assert done == [128, 256, T, T]  # one per batch, then the closing line
    assert {int(b) for _, b in found} == {T}
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    predict_stage1(model, m.features, batch_dates=128)
    assert terminal.getvalue() == ""


def test_pass_progress_is_silent_for_short_passes():
    stream = io.StringIO()
    p = PassProgress("Stage3 predict", 10, unit="batches", stream=stream)  # 30 s between lines
    for done in range(1, 11):
        p.update(done)
    p.finish()
    assert stream.getvalue() == ""
    p = PassProgress("Stage3 predict", 10, unit="batches", every=0.0, stream=stream)
    p.update(4)
    p.finish()
    assert stream.getvalue().splitlines()[-1].startswith("[relcast] Stage3 predict: 10/10 batches")
    assert "done" in stream.getvalue().splitlines()[-1]


@pytest.mark.parametrize(
    "seconds,text", [(5.2, "5s"), (125, "2m05s"), (3 * 3600 + 7 * 60, "3h07m"), (np.nan, "?")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
