"""Multi-process training with torchrun (Gloo on CPU, loopback only): every evaluation sample is
counted exactly once, only rank 0 writes, and 2 processes match 1 process with the same global
batch and seed within a stated tolerance."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from smoothtopk.experiments.distributed import shard

# the processes run in tmp_path: a relative PYTHONPATH (PYTHONPATH=src) is made absolute
PATHS = os.pathsep.join(
    os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": PATHS}
# 1000 training images (500 per process), 201 validation images (101 + 100: no padding)
ARGS = ["train", "--loss", "smooth-svm", "--epochs", "2", "--milestones", "1", "--subset", "1000",
        "--val-size", "201", "--batch-size", "64", "--no-progress", "--device", "cpu"]  # fmt: skip
# Tolerance of the 2-vs-1-process comparison, in accuracy (fraction of 2000 test images) and
# relative training loss. The two runs see the same global batches, but the gradients are summed
# in another order and, on CPU, BatchNorm normalises each process's half batch (SyncBatchNorm is
# CUDA-only), so the weights drift apart slightly. Measured (torch 2.14, 2 epochs): accuracies
# within 0.011, training loss within 0.08 % relative.
TOL_ACC, TOL_LOSS = 0.04, 0.01


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("n, replicas", [(201, 2), (2000, 2), (7, 3), (5, 1)])
def test_evaluation_shards_cover_every_sample_once(n, replicas):
    seen = [i for r in range(replicas) for i in (list(shard(range(n), r, replicas)))]
    assert sorted(seen) == list(range(n))


def test_two_gloo_processes_match_one_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "smoothtopk", *ARGS, "--out", str(single)], env=ENV,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--node_rank=0",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
    ]
    done = subprocess.run([*launcher, "-m", "smoothtopk", *ARGS, "--out", str(multi)], env=ENV,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best validation top-5") == 1  # rank 0 only
    # rank 0 wrote the run directory and nothing else was written
    assert sorted(os.listdir(multi)) == sorted(os.listdir(single))
    assert sorted(os.listdir(tmp_path)) == ["multi", "single"]
    assert json.loads((multi / "env.json").read_text())["world_size"] == 2
    a, b = _rows(single), _rows(multi)
    for one, two in zip(a, b, strict=True):
        # exact counts over every sample, each once
        assert (two["train_total"], two["val_total"], two["test_total"]) == (1000, 201, 2000)
        assert two["lr"] == one["lr"]
        for key in ("val_top1", "val_top5", "test_top1", "test_top5", "train_top5"):
            assert two[key] == pytest.approx(one[key], abs=TOL_ACC), key
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=TOL_LOSS)
        assert two["test_top5"] == two["test_correct"][1] / 2000
    ckpt = torch.load(multi / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])


def test_dist_timeout_reaches_init_process_group(monkeypatch):
    import datetime

    import torch.distributed as dist

    from smoothtopk.experiments import distributed

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert distributed.init("cpu", 42.5) == torch.device("cpu")
    assert calls == [{"backend": "gloo", "init_method": "env://",
                      "timeout": datetime.timedelta(seconds=42.5)}]  # fmt: skip
    from smoothtopk.experiments.config import resolve

    assert resolve().dist_timeout == 600  # the documented default: 10 minutes
    with pytest.raises(ValueError, match="dist_timeout must be > 0"):
        resolve(None, None, {"dist_timeout": 0.0})


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _environ(pid: int) -> dict:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [x.split(b"=", 1) for x in f.read().split(b"\0") if b"=" in x]
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


def _ranks(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun started."""
    out = {}
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if name.isdigit() and ppid == launcher_pid:
                out[int(_environ(int(name))["RANK"])] = int(name)
        except (OSError, KeyError, ValueError):
            continue
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stopped_rank_ends_the_job_after_the_dist_timeout(tmp_path):
    out = tmp_path / "run"
    args = [a if a != "2" else "50" for a in ARGS]  # 50 epochs: still training when stopped
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--node_rank=0",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
    ]
    proc = subprocess.Popen([*launcher, "-m", "smoothtopk", *args, "--dist-timeout", "3",
                             "--out", str(out)], env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    ranks = {}
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():  # training is under way on both ranks
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        ranks = _ranks(proc.pid)
        os.kill(ranks[1], signal.SIGSTOP)
        stopped = time.monotonic()
        while _state(ranks[0]) not in ("Z", "X"):
            assert time.monotonic() - stopped < 20, "rank 0 still waits for the stopped rank"
            time.sleep(0.1)
        waited = time.monotonic() - stopped
        os.kill(ranks[1], signal.SIGCONT)  # torchrun's SIGTERM can now end it
        _, err = proc.communicate(timeout=60)
    finally:
        for pid in ranks.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
    assert proc.returncode != 0
    assert 3 <= waited < 20
    assert (
        "smoothtopk: error: a torch.distributed collective failed or waited more than "
        "--dist-timeout 3 s" in err
    )
