"""``smoothtopk sweep --jobs 2`` as processes: a second sweep on the same directory is refused
while the first runs, and the workers (and multiprocessing's resource tracker) die with the
parent when it is killed (SIGKILL or SIGTERM) instead of running on as orphans."""

import os
import signal
import subprocess
import sys
import time

import pytest

from smoothtopk.experiments.cli import main

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# two runs long enough (60 epochs) to be killed while they train
ARGS = ["sweep", "--loss", "ce,smooth-svm", "--jobs", "2", "--epochs", "60", "--milestones",
        "--subset", "200", "--val-size", "100", "--batch-size", "50", "--no-progress",
        "--device", "cpu"]  # fmt: skip


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc/<pid>/stat)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(name))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent has not reaped it


def _start_sweep(out):
    proc = subprocess.Popen([sys.executable, "-m", "smoothtopk", *ARGS, "--out", str(out)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended early: {proc.stderr.read().decode()[-2000:]}")
        children = _children(proc.pid)
        started = [c for c in children if os.path.isdir(out) and _busy(out)]
        if len(children) >= 3 and started:  # 2 workers and the resource tracker
            return proc, children
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the sweep did not start its workers within 120 s")


def _busy(out) -> bool:
    """Whether a run of the sweep has written its config (its worker is training)."""
    return any(os.path.isfile(os.path.join(out, d, "config.yaml")) for d in os.listdir(out))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_the_parent_and_a_second_sweep_is_refused(tmp_path, capsys, sig):
    out = tmp_path / "sweep"
    proc, children = _start_sweep(out)
    try:
        if sig == signal.SIGKILL:  # once is enough: the lock does not depend on the signal
            with pytest.raises(SystemExit) as exc:  # in this process: no second interpreter
                main([*ARGS, "--out", str(out)])
            lines = capsys.readouterr().err.strip().splitlines()
            assert exc.value.code == 2 and len(lines) == 1, lines
            assert lines[0].startswith(f"smoothtopk: error: {out} is in use by another sweep")
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.2)
        assert not [c for c in children if _alive(c)], "orphaned workers"
    finally:
        proc.kill()
        for c in children:
            if _alive(c):
                os.kill(c, signal.SIGKILL)
    assert proc.returncode == -sig
