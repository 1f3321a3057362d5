"""Progress of long steps: a tqdm bar on a terminal, log lines without one, nothing with trainer.progress=false."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
import torch
from conftest import PROJECT_ROOT, QUICK

from dlexp.models.mlp import MLP
from dlexp.training import progress
from dlexp.training.loop import train_fold
from dlexp.training.losses import ClassificationLoss


@pytest.fixture(autouse=True)
def progress_on():
    progress.configure(True)
    yield
    progress.configure(True)


def train_one_fold(hooks, epochs=5):
    torch.manual_seed(0)
    x, y = torch.randn(60, 2), torch.randint(0, 3, (60,))
    model = MLP((2,), 3, hidden_dims=[8])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    return train_fold(1, model, optimizer, None, ClassificationLoss(torch.nn.CrossEntropyLoss()), x, y,
                      torch.arange(40), torch.arange(40, 60), batch_size=20, max_epochs=epochs, patience=100,
                      generator=torch.Generator().manual_seed(0), hooks=hooks)


def test_without_a_terminal_training_progress_is_log_lines(monkeypatch, caplog):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="dlexp.training.progress"):
        result = train_one_fold(progress.training_progress(3, 5, batched=False))
    lines = [r.getMessage() for r in caplog.records if r.name == "dlexp.training.progress"]
    assert len(lines) == 5
    best = min(result.history["val_loss"])
    assert lines[-1] == (f"fold 1/3: 5/5 epochs, train loss {result.history['train_loss'][-1]:.4f}, "
                         f"val loss {result.history['val_loss'][-1]:.4f}, best {best:.4f}")


def test_without_a_terminal_lines_come_at_a_modest_rate(monkeypatch, caplog):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="dlexp.training.progress"):
        train_one_fold(progress.training_progress(1, 50, batched=False), epochs=50)
    lines = [r for r in caplog.records if r.name == "dlexp.training.progress"]
    assert len(lines) <= (time.monotonic() - started) // progress.LOG_SECONDS  # one per 10 s at most


def test_batched_progress_counts_the_folds_still_training(monkeypatch, caplog):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)
    shown = progress.training_progress(3, 10, batched=True)
    with caplog.at_level(logging.INFO, logger="dlexp.training.progress"):
        for fold in (1, 2, 3):
            shown.fold_start(fold)
        shown.epoch_end(1, 1, {"train_loss": 1.0, "val_loss": 0.9, "val_acc": 0.5})
        shown.fold_end(type("Result", (), {"fold": 1})())
        shown.epoch_end(2, 2, {"train_loss": 1.0, "val_loss": 0.5, "val_acc": 0.5})
    assert [r.getMessage() for r in caplog.records] == [
        "3 folds at once: 1/10 epochs, 3 of 3 folds training, lowest val loss 0.9000",
        "3 folds at once: 2/10 epochs, 2 of 3 folds training, lowest val loss 0.5000"]


def test_decoding_progress_counts_images(monkeypatch, caplog):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)
    batches = [torch.zeros(32, 3, 4, 4), torch.zeros(32, 3, 4, 4), torch.zeros(6, 3, 4, 4)]
    with caplog.at_level(logging.INFO, logger="dlexp.training.progress"):
        assert list(progress.track(batches, 70, "decoding images", "image", size=len)) == batches
    assert [r.getMessage() for r in caplog.records] == [
        "decoding images: 32/70 images", "decoding images: 64/70 images", "decoding images: 70/70 images"]


def test_progress_false_shows_nothing(monkeypatch, caplog):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)
    progress.configure(False)
    with caplog.at_level(logging.INFO, logger="dlexp.training.progress"):
        train_one_fold(progress.training_progress(1, 5, batched=False))
        list(progress.track(range(5), 5, "decoding images", "image"))
    assert not caplog.records


def run_on_a_terminal(args, cwd):
    """``python -m dlexp ARGS`` with stdout and stderr on a pseudo-terminal; returns all it printed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal's size
    process = subprocess.Popen([sys.executable, "-m", "dlexp", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 300)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    process.wait(timeout=300)
    os.close(leader)
    return process.returncode, output.decode(errors="replace")


@pytest.mark.parametrize("enabled", [True, False])
def test_a_terminal_gets_a_bar_per_fold_unless_turned_off(store, tmp_path, enabled):
    code, output = run_on_a_terminal(["+experiment=spiral", *QUICK, "trainer.strategy=sequential",
                                      f"trainer.progress={str(enabled).lower()}", *store["overrides"],
                                      f"hydra.run.dir={tmp_path / 'run'}"], PROJECT_ROOT)
    assert code == 0, output
    assert "fold 2/2: 4 epochs" in output  # the run's own lines are unchanged
    bars = [f"fold {k}/2:   0%|" for k in (1, 2)]
    assert all(bar in output for bar in bars) == enabled, output
    assert ("epoch/s" in output or "s/epoch" in output) == enabled
