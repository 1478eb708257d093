"""Reliability of a run: SIGKILL mid-epoch then --resume gives the uninterrupted result bit for
bit, corrupted checkpoints are named in a one-line error, a non-finite loss stops the run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from smoothtopk.experiments.checkpoint import load_checkpoint
from smoothtopk.experiments.cli import main
from smoothtopk.experiments.config import LossSpec, resolve
from smoothtopk.experiments.train import fit, prepare

# 1000 training images in batches of 16: 63 steps per epoch, a checkpoint every 5 steps
ARGS = ["train", "--loss", "smooth-svm", "--noise", "0.4", "--epochs", "2", "--milestones", "1",
        "--subset", "1000", "--val-size", "200", "--batch-size", "16", "--checkpoint-every", "5",
        "--no-progress", "--device", "cpu"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _command(out, *extra):
    return [sys.executable, "-m", "smoothtopk", *ARGS, "--out", str(out), *extra]


def _metrics(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        del row["epoch_seconds"]
    return rows


def _kill_mid_epoch(out):
    """Start a run, SIGKILL it as soon as a mid-epoch checkpoint exists; that checkpoint."""
    proc = subprocess.Popen(_command(out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    last = out / "last.pt"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before a mid-epoch checkpoint: {proc.stderr.read()}")
            if last.exists() and load_checkpoint(str(last))["step"] > 0:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        else:
            pytest.fail("no mid-epoch checkpoint within 120 s")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return load_checkpoint(str(last))


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(_command(reference), env=ENV, check=True, capture_output=True)
    killed_at = _kill_mid_epoch(resumed)
    assert 0 < killed_at["step"] < 63 and killed_at["step"] % 5 == 0
    assert len(killed_at["history"]) == killed_at["epoch"]  # no record of the unfinished epoch
    assert not (resumed / "results.json").exists()
    (resumed / ".tmp-torn").write_bytes(b"half a checkpoint")  # as a kill during a write leaves
    done = subprocess.run(_command(resumed, "--resume"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resuming {resumed} after epoch 1, step {killed_at['step']}" in done.stdout
    assert not [n for n in os.listdir(resumed) if n.startswith(".tmp-")]
    assert _metrics(resumed) == _metrics(reference)
    a = load_checkpoint(str(reference / "last.pt"))
    b = load_checkpoint(str(resumed / "last.pt"))
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for i, buf in a["optimizer"]["state"].items():
        assert torch.equal(buf["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    ref_results = json.loads((reference / "results.json").read_text())
    assert json.loads((resumed / "results.json").read_text()) == ref_results


FAST = {"epochs": 1, "subset": "1000", "val_size": 200, "progress": False, "device": "cpu"}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    fit(prepare(resolve("demo", None, FAST), str(run_dir)))
    last = run_dir / "last.pt"
    data = last.read_bytes()
    last.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 100,
                      "empty": b""}[damage])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(run_dir), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("smoothtopk: error: checkpoint ")
    assert str(last) in err[0] and "truncated or corrupted" in err[0]


class _NanAtCall(torch.nn.Module):
    """The real loss, NaN from the ``bad``-th call on."""

    def __init__(self, loss, bad):
        super().__init__()
        self.loss, self.bad, self.calls = loss, bad, 0

    def forward(self, scores, target):
        self.calls += 1
        value = self.loss(scores, target)
        return value * float("nan") if self.calls >= self.bad else value


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = LossSpec.build
    nan_at = lambda spec, **kw: _NanAtCall(real(spec, **kw), bad=16 + 7)  # noqa: E731
    monkeypatch.setattr(LossSpec, "build", nan_at)
    run_dir = tmp_path / "run"
    cfg = resolve("demo", None, {**FAST, "epochs": 2, "batch_size": 64, "checkpoint_every": 3})
    with pytest.raises(FloatingPointError) as exc:  # 16 steps per epoch: epoch 2, step 7
        fit(prepare(cfg, str(run_dir)))
    message = str(exc.value)
    assert "\n" not in message
    assert "non-finite training loss at epoch 2, step 7" in message
    assert f"{run_dir / 'last.pt'} (epoch 2, step 6)" in message
    last = load_checkpoint(str(run_dir / "last.pt"))
    assert (last["epoch"], last["step"]) == (1, 6)
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert not (run_dir / "results.json").exists()
