"""Sweeps on a cluster (``smoothtopk sweep --launcher submitit``), tested without one: the claim
of a run directory (the lock that holds across nodes), a 2-run sweep through submitit's local
executor in which one task is preempted and requeued and resumes bitwise, the state of each run
when the sweep runs again, and the SLURM job array (submitit's mocked ``sbatch``/``sacct``)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from claim_holder import holding

from smoothtopk.experiments import claims, cluster, records, sweep
from smoothtopk.experiments.checkpoint import load_checkpoint
from smoothtopk.experiments.cli import main
from smoothtopk.experiments.config import resolve

submitit = pytest.importorskip("submitit")


# claims.py imports nothing of the runner: another process loads it without torch (fast)
def fake_claim(run_dir, age: float, host: str = "elsewhere", job=None, pid: int = 1):
    """A claim written by a trainer on ``host`` whose last heartbeat was ``age`` s ago."""
    path = os.path.join(run_dir, claims.CLAIM)
    with open(path, "w") as f:
        json.dump({"user": "cluster job", "job": job, "host": host, "pid": pid,
                   "started": "then"}, f)  # fmt: skip
    os.utime(path, (time.time() - age, time.time() - age))


# -- the claim ---------------------------------------------------------------------------------


def test_a_claim_excludes_every_other_trainer_until_its_owner_dies(tmp_path):
    with holding(tmp_path) as other:
        with pytest.raises(claims.Busy, match=f"process {other.pid} on {socket.gethostname()}"):
            claims.claim(str(tmp_path))
        other.kill()
        other.wait()
        # killed on this host: its claim is dead at once, and taken over
        claims.claim(str(tmp_path))
        assert claims.owner(str(tmp_path)).pid == os.getpid()
        claims.release(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_another_hosts_claim_lives_while_it_beats(tmp_path, monkeypatch):
    fake_claim(tmp_path, age=claims.STALE / 2)
    with pytest.raises(claims.Busy, match="on elsewhere"):
        claims.claim(str(tmp_path))
    fake_claim(tmp_path, age=claims.STALE + 1)  # its node died: stale, taken over
    monkeypatch.setattr(claims, "HEARTBEAT", 0.05)
    with claims.claimed(str(tmp_path), "sweep"):
        assert claims.owner(str(tmp_path)).host == socket.gethostname()
        past = time.time() - 100
        os.utime(tmp_path / claims.CLAIM, (past, past))
        time.sleep(0.3)  # the heartbeat keeps the own claim fresh
        assert time.time() - os.stat(tmp_path / claims.CLAIM).st_mtime < 10


def test_a_requeued_job_takes_over_its_own_claim_but_never_another(tmp_path):
    fake_claim(tmp_path, age=1, job="12_3")  # the preempted incarnation, killed on its node
    with pytest.raises(claims.Busy):
        claims.claim(str(tmp_path), job="12_4")
    with claims.claimed(str(tmp_path), "cluster job", job="12_3"):
        assert claims.owner(str(tmp_path)).pid == os.getpid()
    fake_claim(tmp_path, age=1)
    claims.release(str(tmp_path))  # not this process's: kept
    assert claims.owner(str(tmp_path)).host == "elsewhere"


RACE = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("claims", sys.argv[1])
claims = sys.modules["claims"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims)
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all start at once
try:
    with claims.claimed(sys.argv[2], "train"):
        print("held", flush=True); time.sleep(1.5)
except claims.Busy:
    print("refused", flush=True)
"""


def test_exclusive_create_lets_one_of_many_claim(tmp_path):
    start = str(time.time() + 0.7)
    racers = [subprocess.Popen([sys.executable, "-c", RACE, claims.__file__, str(tmp_path), start],
                               stdout=subprocess.PIPE, text=True) for _ in range(4)]  # fmt: skip
    outcomes = sorted(r.communicate()[0].strip() for r in racers)
    assert outcomes == ["held", "refused", "refused", "refused"]
    assert os.listdir(tmp_path) == []  # released


# -- the sweep on submitit's local executor ----------------------------------------------------

TINY = {"epochs": 1, "milestones": [], "subset": "500", "val_size": 100, "batch_size": 50,
        "eval_batch_size": 1000, "checkpoint_every": 3, "progress": False}  # fmt: skip
ARGS = ["--preset", "demo", "--epochs", "1", "--milestones", "--subset", "500", "--val-size", "100",
        "--batch-size", "50", "--eval-batch-size", "1000", "--checkpoint-every", "3",
        "--no-progress", "--seed", "0,1"]  # fmt: skip


def _weights(run_dir):
    return load_checkpoint(os.path.join(run_dir, "last.pt"))["model"]


def _history(run_dir):
    return [{k: v for k, v in r.items() if k != "epoch_seconds"}
            for r in records.read_metrics(run_dir)]  # fmt: skip


def _wait_for(path, timeout=120.0):
    end = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_a_sweep_through_submitit_completes_and_a_preempted_task_resumes_bitwise(
    tmp_path, monkeypatch, capsys
):
    """A 2-run sweep on submitit's debug executor (in this process) completes; the same first
    run on the local executor (a job process), preempted mid-epoch, is requeued, resumes, and
    ends bitwise equal to it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job process's threads: as this one's
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        configs = [resolve("demo", None, {**TINY, "seed": s}) for s in (0, 1)]
        done = str(tmp_path / "debug")
        result = sweep.run(done, sweep.plan(done, configs), launch=cluster.Launch(cluster="debug"),
                           log=lambda _: None)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert result["failed"] == [] and result["table"] is not None  # both done: the report
    reference = os.path.join(done, "ce-noise0-500-seed0")

    out = str(tmp_path / "local")
    runs = sweep.plan(out, configs[:1])
    launched = sweep.run(out, runs, launch=cluster.Launch(cluster="local"), log=lambda _: None)
    (job,), first = launched["jobs"], runs[0].run_dir
    _wait_for(os.path.join(first, "last.pt"))  # a mid-epoch checkpoint (every 3 steps)
    os.kill(claims.owner(first).pid, signal.SIGUSR2)  # what SLURM sends before preempting
    assert cluster.wait([job]) == []
    log = job.stdout()
    assert "Requeued job" in log and f"resuming {first} after epoch 1, step" in log, log
    assert _history(first) == _history(reference)
    mine, theirs = _weights(first), _weights(reference)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    names = os.listdir(first)  # the resume's record; no claim or failure left
    assert any(n.startswith("env-resume-") for n in names)
    assert not any(n.startswith(claims.CLAIM) or n == records.FAILED for n in names)
    # the sweep again: done, nothing submitted, the report written
    capsys.readouterr()
    main(["sweep", "--out", done, "--launcher", "submitit", "--submitit-cluster", "local", *ARGS])
    printed = capsys.readouterr().out
    assert "0 runs submitted, 2 already complete" in printed
    assert os.path.isfile(os.path.join(done, "report", "results.md"))


def test_a_task_of_two_processes_trains_its_run_with_ddp(tmp_path, monkeypatch):
    """``--slurm-gpus-per-node 2`` gives each task two processes, which train the run as
    torchrun's would (here on CPU, Gloo): every validation sample counted once."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = str(tmp_path / "sweep")
    cfg = resolve("demo", None, {**TINY, "checkpoint_every": 0, "device": "cpu"})
    launch = cluster.Launch(cluster="local", tasks_per_node=2)
    launched = sweep.run(out, sweep.plan(out, [cfg]), launch=launch, log=lambda _: None)
    assert cluster.wait(launched["jobs"]) == []
    run_dir = os.path.join(out, "ce-noise0-500-seed0")
    env = json.loads(open(os.path.join(run_dir, "env.json")).read())
    (record,) = records.read_metrics(run_dir)
    assert env["world_size"] == 2 and record["val_total"] == 100 and record["train_total"] == 500
    assert claims.owner(run_dir) is None


def test_a_rerun_reports_running_queued_and_failed_runs(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    configs = [resolve("demo", None, {**TINY, "seed": s}) for s in range(4)]
    names = [os.path.basename(r.run_dir) for r in sweep.plan(str(out), configs)]
    for name in names:
        os.makedirs(out / name)
    with open(out / "sweep.json", "w") as f:
        json.dump({"runs": names}, f)
    fake_claim(out / names[0], age=1)  # running on another node
    fake_claim(out / names[1], age=claims.STALE + 1, job="7_1")  # its node died
    records.write_config(str(out / names[2]), configs[2])  # a run whose training failed
    records.write_failure(str(out / names[2]), FloatingPointError("non-finite loss"))
    monkeypatch.setattr(cluster, "waiting", lambda _: {names[3]: "7_3"})  # in the queue
    logged = []
    runs = sweep.plan(str(out), configs)
    sweep._announce(runs, logged.append)
    assert [r.status for r in runs] == ["running", "failed", "failed", "queued"]
    assert logged[0].startswith(f"running {names[0]}: a cluster job (process 1 on elsewhere")
    assert logged[1].startswith(f"failed  {names[1]}: its trainer died: a cluster job (job 7_1")
    assert logged[2].startswith(f"failed  {names[2]}: FloatingPointError: non-finite loss")
    assert logged[3] == f"queued  {names[3]}: job 7_3"
    assert (
        logged[-1] == "sweep: 4 runs, 0 complete, 1 running, 1 queued, 2 to train (2 failed before)"
    )
    # --overwrite would delete a run in training: refused
    with pytest.raises(ValueError, match=f"delete runs in training: {names[0]}"):
        sweep.plan(str(out), configs, overwrite=True)


# -- SLURM (submitit's mocked sbatch and sacct) ------------------------------------------------


def test_the_slurm_job_array_and_its_queue(tmp_path, capsys):
    from submitit.slurm.test_slurm import mocked_slurm

    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), "--launcher", "submitit", "--submitit-cluster", "slurm",
            "--slurm-partition", "gpu", "--slurm-gpus-per-node", "2", "--slurm-time", "1-12",
            "--slurm-array-parallelism", "1", "--slurm-param", "account=proj",
            "--slurm-param", "cpus_per_task=8", *ARGS]  # fmt: skip
    with mocked_slurm() as slurm:
        main(argv)
        sbatch = (out / "submitit" / "12_submission.sh").read_text()  # the array's script
        for line in ("--array=0-1%1", "--partition=gpu", "--gpus-per-node=2", "--time=2160",
                     "--account=proj", "--cpus-per-task=8", "--signal=USR2@90"):  # fmt: skip
            assert f"#SBATCH {line}\n" in sbatch, sbatch
        recorded = cluster.read_jobs(str(out))
        assert recorded["cluster"] == "slurm"
        assert sorted(recorded["runs"].values()) == ["12_0", "12_1"]
        capsys.readouterr()
        slurm.set_job_state("12", "PENDING", array=2)
        main(argv)  # again: both wait in the queue, nothing is submitted twice
    printed = capsys.readouterr().out
    assert printed.count("queued ") == 2 and "0 runs submitted" in printed
    assert not (out / "report").exists()
