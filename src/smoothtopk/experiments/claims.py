"""The claim of a run directory: the lock that holds across nodes.

Whoever trains a run (``train``, a sweep's worker, a cluster job) first creates
``RUN_DIR/.claim`` with an exclusive create (``O_CREAT | O_EXCL``, atomic on local file systems
and on NFS v3 and later), writes who it is into it (job, host, process, start), keeps its
modification time fresh (a heartbeat every :data:`HEARTBEAT` seconds) and deletes it when it
ends, whether it finished, failed or was preempted. A second trainer finds the file and is
refused (:class:`Busy`) while its owner is alive:

* an owner on this host is alive while its process exists (a killed one frees the run at
  once);
* an owner on another host is alive while its heartbeat is younger than :data:`STALE` seconds
  (a node that died frees the run after that).

A stale claim is taken over by one atomic rename. A claim of the same cluster job (``job``:
SLURM's ``<array job>_<task>``, which a requeued job keeps) is its own: a preempted job that
was killed before it could delete its claim continues. A process stopped (SIGSTOP) for longer
than :data:`STALE` loses its claim.

Imports nothing of the runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass

CLAIM = ".claim"
HEARTBEAT = 30.0  #: seconds between two touches of a held claim
STALE = 300.0  #: seconds without a heartbeat after which another host's claim is dead


class Busy(ValueError):
    """Another live process holds the directory (its claim, or a sweep's lock)."""


@dataclass(frozen=True)
class Owner:
    """Who holds a claim (as written in it) and when it last beat (the file's mtime)."""

    user: str
    job: str | None
    host: str
    pid: int
    started: str
    beat: float

    def alive(self) -> bool:
        """Fresh, and on this host its process exists."""
        if time.time() - self.beat >= STALE:
            return False
        return self.host != socket.gethostname() or _exists(self.pid)

    def describe(self) -> str:
        """``a train (process 12 on node3, since 2026-01-01T10:00:00, last heartbeat 3 s ago)``."""
        job = f"job {self.job}, " if self.job else ""
        age = max(0.0, time.time() - self.beat)
        return (f"a {self.user} ({job}process {self.pid} on {self.host}, since {self.started}, "
                f"last heartbeat {age:.0f} s ago)")  # fmt: skip


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def owner(run_dir: str) -> Owner | None:
    """The owner of ``run_dir``'s claim, or ``None`` when unclaimed. An unreadable claim (its
    writer died between create and write) counts as one of an unknown process of this host,
    alive while fresh."""
    return _read(os.path.join(run_dir, CLAIM))


def _read(path: str) -> Owner | None:
    try:
        beat = os.stat(path).st_mtime
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    return Owner(str(record.get("user", "process")), record.get("job"),
                 str(record.get("host", socket.gethostname())), int(record.get("pid", 0) or 0),
                 str(record.get("started", "?")), beat)  # fmt: skip


def _mine(found: Owner | None, job: str | None) -> bool:
    """Whether ``found`` is this process's claim, or one of cluster job ``job``."""
    if found is None:
        return False
    if job is not None and found.job == job:
        return True
    return found.pid == os.getpid() and found.host == socket.gethostname()


def holder(run_dir: str, job: str | None = None) -> Owner | None:
    """The live owner of ``run_dir``'s claim other than this process and cluster job ``job``,
    else ``None``."""
    found = owner(run_dir)
    if found is None or _mine(found, job) or not found.alive():
        return None
    return found


def check_free(run_dir: str, job: str | None = None) -> None:
    """Busy if a live owner other than this process and ``job`` holds ``run_dir``; writes
    nothing."""
    found = holder(run_dir, job)
    if found is not None:
        raise Busy(
            f"{run_dir} is in use by {found.describe()}: wait for it to end or choose another "
            f"--out (the claim is {os.path.join(run_dir, CLAIM)})"
        )


def _record(user: str, job: str | None) -> bytes:
    me = {"user": user, "job": job, "host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    return (json.dumps(me) + "\n").encode()


def _create(path: str, record: bytes) -> bool:
    """Exclusive create of the claim ``path`` holding ``record``; False if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(record)
        f.flush()
        os.fsync(f.fileno())
    return True


def claim(run_dir: str, user: str = "train", job: str | None = None) -> None:
    """Claim ``run_dir`` (which must exist) for this process; Busy if a live other owner holds
    it. A stale claim, or one of the same ``job``, is taken over."""
    path = os.path.join(run_dir, CLAIM)
    record = _record(user, job)
    for _ in range(3):  # a claim released or taken over meanwhile: look again
        if _create(path, record):
            return
        check_free(run_dir, job)
        _take_over(path, job)
    raise Busy(f"{run_dir} is being claimed by other processes; try again")


def _take_over(path: str, job: str | None) -> None:
    """Move the stale (or own) claim at ``path`` away by one atomic rename. If another process
    took it over first, what moved is its live claim: put back, Busy."""
    tomb = f"{path}.{socket.gethostname()}-{os.getpid()}"
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return
    moved = _read(tomb)
    if moved is not None and moved.alive() and not _mine(moved, job):
        with contextlib.suppress(FileExistsError):
            os.link(tomb, path)  # the same file, its heartbeat unchanged
        os.unlink(tomb)
        raise Busy(f"{os.path.dirname(path)} was just claimed by {moved.describe()}")
    os.unlink(tomb)


def release(run_dir: str, job: str | None = None) -> None:
    """Delete ``run_dir``'s claim if it is this process's (or ``job``'s): never one that
    another process took over."""
    if _mine(owner(run_dir), job):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(run_dir, CLAIM))


@contextlib.contextmanager
def claimed(run_dir: str, user: str = "train", job: str | None = None):
    """Hold ``run_dir``'s claim (:func:`claim`), beating every :data:`HEARTBEAT` seconds,
    until the block ends, however it ends."""
    claim(run_dir, user, job)
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(os.path.join(run_dir, CLAIM), stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        release(run_dir, job)


def _beat(path: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        with contextlib.suppress(OSError):
            os.utime(path)
