"""Sweeps on a cluster through submitit (``smoothtopk sweep --launcher submitit``).

Each run still to train becomes one task of a job array (:func:`submit`: one SLURM array job,
at most ``--slurm-array-parallelism`` tasks at a time). A task (:class:`RunJob`) claims its run
directory (:mod:`.claims`, the lock that holds across nodes), prepares the run as a sweep does
(resumed from ``last.pt`` when there is one, :func:`.train.prepare_member`) and trains it. When
SLURM preempts it or its time runs out, submitit sends the preemption signal (USR2, 90 s
before the end): :meth:`RunJob.checkpoint` resubmits the same task, which requeues, and the
requeued task continues from the run's last checkpoint (``--checkpoint-every N`` bounds what is
redone; the resumed run repeats what an uninterrupted one would have done).

The sweep directory records the jobs (``OUT/jobs.json``: cluster, and the job of each run) and
holds submitit's files and the tasks' logs (``OUT/submitit/``). Running the same sweep again
reports each run as done, running (a live claim), queued (its job waits in the queue), failed
(``failed.json``, or a claim whose owner died) or still to train, and submits again only
the failed and the unstarted ones; when every run is done it writes the report.

submitit is the ``cluster`` extra (``pip install "smoothtopk[cluster]"``); this module
imports it only inside the functions that submit, wait or ask SLURM.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from . import claims, distributed, rundir
from .checkpoint import atomic_write_json
from .config import Config
from .train import fit, prepare_member

FOLDER = "submitit"  #: in the sweep directory: submitit's pickles and the tasks' logs
JOBS = "jobs.json"  #: in the sweep directory: the cluster and the job of each run
INSTALL = 'pip install "smoothtopk[cluster]"'
CLUSTERS = ("auto", "slurm", "local", "debug")
#: the SLURM job states of a job that waits to run (its task has not claimed the run yet)
QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED",
          "RESV_DEL_HOLD", "RUNNING", "COMPLETING")  # fmt: skip
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  #: submitit's local executor kills a job after 2 min by default


@dataclass
class Launch:
    """Where and how a sweep's runs are submitted (the ``--slurm-*`` options)."""

    cluster: str = "auto"  #: submitit's executor: ``slurm``, ``local``, ``debug``; auto: found
    partition: str | None = None
    gpus_per_node: int | None = None  #: GPUs of each task, one process (DDP rank) per GPU
    tasks_per_node: int | None = None  #: processes of each task (default: one per GPU)
    time_min: int | None = None  #: the time limit of each task, in minutes
    array_parallelism: int | None = None
    extra: dict = field(default_factory=dict)  #: other ``slurm_*`` parameters, without prefix
    wait: bool = False  #: wait for the jobs to end, then write the report

    def parameters(self, cluster: str) -> dict:
        """The parameters of :meth:`submitit.AutoExecutor.update_parameters`."""
        params = {"name": "smoothtopk", "slurm_partition": self.partition,
                  "gpus_per_node": self.gpus_per_node,
                  "tasks_per_node": self.tasks_per_node or self.gpus_per_node,
                  "slurm_array_parallelism": self.array_parallelism,
                  **{f"slurm_{k}": v for k, v in self.extra.items()}}  # fmt: skip
        minutes = self.time_min
        if minutes is None and cluster == "local":
            minutes = LOCAL_TIMEOUT_MIN
        params["timeout_min"] = minutes
        return {k: v for k, v in params.items() if v is not None}


def parse_time(text: str) -> int:
    """A SLURM time limit in minutes (rounded up): ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM``, ``D-HH:MM:SS``.

    Example:
        >>> [parse_time(t) for t in ("90", "1:30", "2:00:00", "1-12", "1-00:30", "0-0:0:1")]
        [90, 2, 120, 2160, 1470, 1]
    """
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ValueError(f"--slurm-time: expected MM, HH:MM:SS or D-HH:MM:SS, got {text!r}")
    days, *parts = match.groups()
    values = [int(x) for x in parts if x is not None]
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = (values + [0, 0])[:3]
        seconds += 60 * (minutes + 60 * (hours + 24 * int(days)))
    elif len(values) == 3:  # HH:MM:SS
        seconds = 3600 * values[0] + 60 * values[1] + values[2]
    else:  # MM, MM:SS
        seconds = 60 * values[0] + (values[1] if len(values) == 2 else 0)
    if seconds < 1:
        raise ValueError(f"--slurm-time must be at least one second, got {text!r}")
    return -(-seconds // 60)


def parse_params(items: list[str]) -> dict:
    """``--slurm-param KEY=VALUE`` items -> ``{key: value}`` (integers as int), for the
    ``slurm_*`` parameters of submitit (``account``, ``qos``, ``mem``, ``cpus_per_task``,
    ``constraint``, ...).

    Example:
        >>> parse_params(["account=proj", "cpus_per_task=8", "mem=64G"])
        {'account': 'proj', 'cpus_per_task': 8, 'mem': '64G'}
    """
    out: dict = {}
    for item in items:
        key, equals, value = item.partition("=")
        key = key.strip().replace("-", "_").removeprefix("slurm_")
        if not equals or not key:
            raise ValueError(f"--slurm-param needs KEY=VALUE, got {item!r}")
        if key in out:
            raise ValueError(f"--slurm-param {key} is given twice")
        out[key] = int(value) if re.fullmatch(r"-?\d+", value.strip()) else value
    return out


def check(launch: Launch) -> str:
    """The cluster the sweep submits to (``auto``: SLURM where ``sbatch`` is found, else
    ``local``); ValueError, before anything is written, when submitit is missing (the hint to
    install it), for an unknown cluster or ``slurm_*`` parameter, and on SLURM without a time
    limit (submitit's default is 5 minutes)."""
    try:
        import submitit
    except ImportError:
        raise ValueError(f"--launcher submitit needs submitit: {INSTALL}") from None
    if launch.cluster not in CLUSTERS:
        raise ValueError(f"--submitit-cluster must be one of {', '.join(CLUSTERS)}")
    cluster = submitit.AutoExecutor.which() if launch.cluster == "auto" else launch.cluster
    known = submitit.SlurmExecutor._valid_parameters()
    unknown = sorted(set(launch.extra) - set(known))
    if unknown:
        raise ValueError(f"--slurm-param: unknown SLURM parameter(s) {', '.join(unknown)}; "
                         f"submitit knows {', '.join(sorted(known))}")  # fmt: skip
    if cluster == "slurm" and launch.time_min is None:
        raise ValueError("--launcher submitit on SLURM needs --slurm-time (e.g. 24:00:00)")
    return cluster


# -- the task ---------------------------------------------------------------------------------


def job_id() -> str | None:
    """This task's job (``<array job>_<task>`` on SLURM; a requeued task keeps it), or
    ``None`` outside submitit."""
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    except (ImportError, RuntimeError, KeyError):
        return None


class RunJob:
    """One run of a sweep as a submitit task; :meth:`checkpoint` makes it requeue on
    preemption or timeout (submitit calls it when the preemption signal arrives). A task of
    several processes (``--slurm-gpus-per-node N``: one per GPU) trains the run with
    DistributedDataParallel, as ``torchrun`` would."""

    def __call__(self, cfg_values: dict, run_dir: str) -> dict:
        """Prepare the run as a sweep does (resumed from ``last.pt`` when there is one; a
        requeued task's own claim is its own), claim it and train it; a run that another
        trainer holds is left to it (``{"busy": why}``)."""
        cfg = Config(**cfg_values)
        cfg.progress = False
        job = job_id()
        _join(cfg)
        try:
            prepared = prepare_member(cfg, run_dir, job=job)
            distributed.barrier()  # every process checked the run before rank 0 writes
            if not distributed.is_writer():
                return fit(prepared)
            with rundir.run_locked(run_dir, prepared.resume_from is not None, prepared.overwrite,
                                   "cluster job", job):  # fmt: skip
                return fit(prepared, log=_print)
        except claims.Busy as err:
            _print(f"not trained here: {err}")
            return {"busy": str(err)}
        finally:
            distributed.finish()

    def checkpoint(self, cfg_values: dict, run_dir: str):
        """The same task again: the requeued task resumes from the run's ``last.pt``."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, cfg_values, run_dir)


def _join(cfg: Config) -> None:
    """In a task of several processes, join their process group: submitit's environment
    exported as torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)."""
    import submitit

    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not in a submitit task
        return
    if tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        distributed.init(cfg.device, cfg.dist_timeout)


def _print(message: str) -> None:
    print(message, flush=True)


# -- submitting, waiting and asking ---------------------------------------------------------


def submit(out: str, runs: list, launch: Launch, log: Callable[[str], None] = print) -> list:
    """Submit ``runs`` (prepared sweep runs: ``cfg``, ``run_dir``) as one job array and record
    them in ``OUT/jobs.json``; returns submitit's jobs."""
    import submitit

    cluster = check(launch)
    executor = submitit.AutoExecutor(folder=os.path.join(out, FOLDER), cluster=cluster)
    executor.update_parameters(**launch.parameters(cluster))
    jobs = executor.map_array(RunJob(), [r.cfg.to_dict() for r in runs], [r.run_dir for r in runs])
    recorded = read_jobs(out)
    recorded["cluster"] = cluster
    for run, job in zip(runs, jobs, strict=True):
        recorded.setdefault("runs", {})[os.path.basename(run.run_dir)] = str(job.job_id)
    atomic_write_json(os.path.join(out, JOBS), recorded)
    first = jobs[0].job_id.split("_")[0] if jobs else "-"
    log(f"submitted {len(jobs)} run(s) to {cluster} as job array {first}; their logs are in "
        f"{os.path.join(out, FOLDER)}")  # fmt: skip
    return jobs


def wait(jobs: list, log: Callable[[str], None] = print) -> list[str]:
    """Wait for ``jobs`` to end; returns a line per failed one (its error's first line)."""
    failed = []
    for job in jobs:
        try:
            job.results()  # every process of the task (one result per DDP rank)
        except Exception as err:  # submitit raises the task's error as a FailedJobState...
            failed.append(f"job {job.job_id}: {str(err).strip().splitlines()[-1]}")
            log(f"failed  {failed[-1]}")
    return failed


def read_jobs(out: str) -> dict:
    """``OUT/jobs.json`` (empty when the sweep submitted nothing)."""
    try:
        with open(os.path.join(out, JOBS)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def waiting(out: str) -> dict[str, str]:
    """Run name -> its job, for the runs whose recorded job waits in the queue or is starting
    (SLURM's states, :data:`QUEUED`; a local job while its process lives)."""
    recorded = read_jobs(out)
    runs, cluster = recorded.get("runs", {}), recorded.get("cluster")
    if not runs or cluster not in ("slurm", "local"):
        return {}
    if cluster == "local":
        return {name: job for name, job in runs.items() if _local_alive(job)}
    try:
        import submitit
    except ImportError:  # submitted from another environment: the claims still guard the runs
        return {}

    folder = os.path.join(out, FOLDER)
    states = {name: submitit.SlurmJob(folder, job).state for name, job in runs.items()}
    return {name: runs[name] for name, state in states.items() if state in QUEUED}


def _local_alive(job: str) -> bool:
    """A local job's id is its controller's process id."""
    try:
        os.kill(int(job), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
