"""Run directories: what they are called, what marks them, whether one may be written, whether
a run may be resumed, and the lock of a sweep. Every command (train, sweep, demo) asks here.

* **Names.** A run is called :func:`run_name`: the loss with the options it uses, the noise
  level, the training subset, the imbalance ratio (when given) and the seed
  (``smooth-svm-k5-tau1-alpha1-noise0.4-all-seed0``).
  Inside a sweep directory that is the whole name (the sweep's other options are shared, and
  a finished run with other settings is refused); the default directory of ``train`` adds the
  data set and :func:`config_hash`, a short hash of every option that changes a result, so two
  runs that differ in any such option never share a default directory.
* **Markers.** A run directory holds ``config.yaml``, a finished one ``results.json`` (the
  files of a run are :mod:`.records`'); a sweep directory holds ``sweep.json``.
* **May-write.** :func:`check_writable` (an output path that cannot be created is refused
  before anything is written), :func:`check_run_dir` (``--resume`` / ``--overwrite``).
* **Resume compatibility.** Only :data:`RESUMABLE` options may change on resume
  (:func:`incompatible`, :func:`resume_config`); ``--resume`` needs ``last.pt``.
* **Locks.** Whoever trains a run (``train``, a sweep's worker, a cluster job) holds its
  claim ``RUN_DIR/.claim`` (:func:`run_locked`, :mod:`.claims`: an exclusive create, which holds
  across nodes): a second one into the same run directory is refused. A running local sweep
  also holds an ``flock`` on ``OUT/.lock`` (:func:`locked`): a second sweep on this machine is
  refused before it plans.

Example::

    >>> from smoothtopk.experiments.config import resolve
    >>> run_name(resolve(None, None, {"loss": "smooth-svm", "noise": 0.4}))
    'smooth-svm-k5-tau1-alpha1-noise0.4-all-seed0'
    >>> a, b = resolve(None, None, {"lr": 0.1}), resolve(None, None, {"lr": 0.2})
    >>> default_run_dir(a) != default_run_dir(b)
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil

from . import claims
from .claims import CLAIM, Busy
from .config import MIXING, Config, validate
from .records import CONFIG, LAST, RESULTS

try:
    import fcntl
except ImportError:  # Windows: no directory locks
    fcntl = None

SWEEP = "sweep.json"  #: marks a sweep directory
OLD_DEMO = "demo.json"  #: marked a demo directory before the demo became a sweep preset
LOCK = ".lock"  #: held by a running sweep (flock); in old run directories, by a train

#: options that may differ when a run is resumed (they do not change its results)
RESUMABLE = ("epochs", "workers", "device", "progress", "eval_batch_size", "checkpoint_every",
             "dist_timeout")  # fmt: skip


# -- names ---------------------------------------------------------------------------------------


#: short names of the recipe options a sweep's ``--grid`` may add to run names
NAME_EXTRAS = {"lr": "lr", "weight_decay": "wd"}


def run_name(cfg: Config, extra: tuple[str, ...] = ()) -> str:
    """``<loss, options>-noise<P>-<subset>[-lt<R>][-groups<G>]-seed<S>[-mixup<A>][-cutmix<A>]``,
    then ``-lr<V>``/``-wd<V>`` for the options in ``extra`` (a sweep whose grid varies them, see
    :data:`NAME_EXTRAS`); ``-lt<R>``: the long-tailed protocol's ``--imbalance-ratio``, absent
    without it; ``-groups<G>``: the embedded data's ``--lookalike-group-size``, absent at its
    default 5 (:attr:`.config.Config.regrouped`); ``-mixup<A>``, ``-cutmix<A>``: the batch
    mixing (:data:`.config.MIXING`), absent when off."""
    tail = f"-lt{cfg.imbalance_ratio:g}" if cfg.long_tailed else ""
    tail += f"-groups{cfg.lookalike_group_size}" if cfg.regrouped else ""
    name = f"{cfg.loss_spec.slug()}-noise{cfg.noise:g}-{cfg.subset}{tail}-seed{cfg.seed}"
    name += "".join(f"-{o}{getattr(cfg, o):g}" for o in MIXING if getattr(cfg, o))
    return name + "".join(f"-{NAME_EXTRAS[o]}{getattr(cfg, o):g}" for o in extra)


def config_hash(cfg: Config) -> str:
    """6 hex digits of SHA-256 over every option that changes a result (all but
    :data:`RESUMABLE` and the preset's name, whose values are in the options; the look-alike
    group size only when it is not the default, so that runs from before the option keep their
    default directory)."""
    values = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE and k != "preset"}
    if not cfg.regrouped:
        values.pop("lookalike_group_size")
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def default_run_dir(cfg: Config) -> str:
    """``runs/<dataset>-<run_name>-<config_hash>``: the directory of ``train`` without --out."""
    return os.path.join("runs", f"{cfg.dataset}-{run_name(cfg)}-{config_hash(cfg)}")


# -- markers and saved settings -------------------------------------------------------------------


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG))


def is_finished(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RESULTS))


def incompatible(saved: Config, cfg: Config) -> list[str]:
    """The options (not :data:`RESUMABLE`) in which ``cfg`` differs from a run's ``saved``
    config, as ``"name (saved, given)"``: a resume or a sweep must not change them."""
    a, b = saved.to_dict(), cfg.to_dict()
    return [
        f"{k} ({a[k]!r} saved, {b[k]!r} given)" for k in a if k not in RESUMABLE and a[k] != b[k]
    ]


def resume_config(saved: Config, explicit: dict) -> Config:
    """The saved config of a run with the explicitly given options that may change on resume
    (:data:`RESUMABLE`); any other given option must equal the saved value."""
    unknown = sorted(set(explicit) - set(saved.to_dict()))
    if unknown:
        raise ValueError(f"unknown option(s) in the command line: {', '.join(unknown)}")
    values = saved.to_dict()
    changed = []
    for key, value in explicit.items():
        if key == "preset" and value is None:
            continue
        if key in RESUMABLE:
            values[key] = value
        elif value != values[key]:
            changed.append(f"{key} ({values[key]!r} saved, {value!r} given)")
    if changed:
        raise ValueError("--resume cannot change " + ", ".join(changed))
    return validate(Config(**values))


# -- may-write ------------------------------------------------------------------------------------


def check_writable(path: str, what: str = "run directory") -> None:
    """ValueError naming ``path`` unless a directory can be created (or written) there: an
    empty path, a file or a dangling symbolic link at ``path`` or above it, or a read-only or
    unwritable parent are refused before anything is written."""
    if not path:
        raise ValueError(f"the {what} (--out) must not be empty")
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(f"{what} {path} is a dangling symbolic link (to {os.readlink(path)})")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path} exists and is not a directory")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        if os.path.islink(probe):
            raise ValueError(f"cannot create {what} {path}: {probe} is a dangling symbolic link")
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"cannot create {what} {path}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what} {path}: {probe} is read-only or not writable")


def _lockish(name: str) -> bool:
    """A lock or claim file (not part of a run): ``.lock``, ``.claim``, a claim's tomb."""
    return name == LOCK or name.startswith(CLAIM)


def _started(path: str) -> bool:
    """Whether ``path`` holds anything but lock and claim files."""
    return os.path.isdir(path) and any(not _lockish(n) for n in os.listdir(path))


def check_run_dir(run_dir: str, resume: bool, overwrite: bool, default: bool = False,
                  job: str | None = None) -> bool:  # fmt: skip
    """Whether ``run_dir`` holds a run to resume; raises ValueError when it may not be used.

    ``resume`` needs a run with a checkpoint (``last.pt``): a missing or empty directory, or a
    run without ``last.pt``, is refused (starting afresh is ``overwrite``'s job). ``default``:
    ``run_dir`` is the options' :func:`default_run_dir` (the refusal says so). A live claim
    is refused unless it is this process's or cluster job ``job``'s (:mod:`.claims`)."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    check_writable(run_dir)
    claims.check_free(run_dir, job)
    return _may_use(run_dir, resume, overwrite, default)


def _may_use(run_dir: str, resume: bool, overwrite: bool, default: bool = False) -> bool:
    """:func:`check_run_dir` but the lock (which :func:`run_locked` holds when it asks)."""
    if not _started(run_dir):
        if resume:
            state = "is empty" if os.path.isdir(run_dir) else "does not exist"
            raise ValueError(f"nothing to resume: {run_dir} {state}; start it without --resume")
        return False
    if not is_run_dir(run_dir):
        raise ValueError(
            f"{run_dir} exists and is not a smoothtopk run (no {CONFIG}); choose another --out"
        )
    if resume:
        if not os.path.isfile(os.path.join(run_dir, LAST)):
            raise ValueError(
                f"nothing to resume: {run_dir} has no {LAST} (no epoch or checkpoint finished); "
                "pass --overwrite to start it over"
            )
        return True
    if overwrite:
        return False
    raise ValueError(_exists(run_dir, default))


def _exists(run_dir: str, default: bool) -> str:
    """Why a train may not start in the run directory ``run_dir``, and every way out: resume
    (with a checkpoint; longer with ``--epochs`` when finished), start over, another ``--out``."""
    finished = is_finished(run_dir)
    ways = []
    if os.path.isfile(os.path.join(run_dir, LAST)):
        ways.append("--resume to continue it" + " with more --epochs" * finished)
    ways += ["--overwrite to start it over", "or --out DIR for a new run directory"]
    why = f"holds {'a finished' if finished else 'an unfinished'} run"
    if default:
        why += (" (the default --out of these options: --device, --epochs and the other options "
                "that may change on resume do not change it)")  # fmt: skip
    return f"run directory {run_dir} already exists and {why}; pass {', '.join(ways)}"


def member_mode(run_dir: str, overwrite: bool) -> tuple[bool, bool]:
    """(resume, overwrite) for one run of a sweep: a run with a checkpoint is resumed, a
    started run without one (killed in its first epoch) starts over, a new one starts."""
    started = _started(run_dir)
    resume = started and not overwrite and os.path.isfile(os.path.join(run_dir, LAST))
    return resume, started and not resume


def check_sweep_dir(out: str) -> None:
    """ValueError unless ``out`` may hold a sweep (new, empty, or marked by ``sweep.json``) and
    no running sweep holds it; writes nothing."""
    check_writable(out, "sweep directory")
    check_unlocked(out)
    entries = set(os.listdir(out)) - {LOCK} if os.path.isdir(out) else set()
    marked = any(os.path.isfile(os.path.join(out, m)) for m in (SWEEP, OLD_DEMO))
    if entries and not marked:
        raise ValueError(f"{out} exists and is not a sweep directory; choose another --out")


# -- the locks ------------------------------------------------------------------------------------


def _try_lock(fd: int, mode: int, directory: str, user: str = "sweep") -> None:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Busy(
            f"{directory} is in use by another {user} (it holds {os.path.join(directory, LOCK)}); "
            "wait for it to end or choose another --out"
        ) from None


def check_unlocked(directory: str, user: str = "sweep") -> None:
    """Busy if a running sweep holds ``directory``'s ``flock``; writes nothing."""
    path = os.path.join(directory, LOCK)
    if fcntl is None or not os.path.isfile(path):
        return
    fd = os.open(path, os.O_RDONLY)
    _try_lock(fd, fcntl.LOCK_SH, directory, user)
    os.close(fd)


@contextlib.contextmanager
def locked(directory: str, user: str = "sweep"):
    """Create ``directory`` and hold an exclusive ``flock`` on its lock file until the block
    ends (the kernel releases it when the process dies); Busy if another process holds it.
    Without ``fcntl`` (Windows) there is no lock."""
    os.makedirs(directory, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o666)
    _try_lock(fd, fcntl.LOCK_EX, directory, user)
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_locked(run_dir: str, resume: bool, overwrite: bool, user: str = "train",
               job: str | None = None):  # fmt: skip
    """Hold ``run_dir``'s claim (:func:`.claims.claimed`) while training writes it; Busy if
    another live trainer holds it. Under the claim the directory is checked again
    (:func:`check_run_dir`), since another trainer may have started or finished there after
    this one's checks; when that check fails, the directory this call created is removed
    (nothing is left written)."""
    made = not os.path.exists(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    try:
        with claims.claimed(run_dir, user, job):
            _may_use(run_dir, resume, overwrite)
            made = False  # this trainer owns the directory now
            yield
    finally:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(run_dir)


def clear_directory(directory: str) -> None:
    """Delete everything in ``directory`` but its lock and claim files (``--overwrite``)."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if _lockish(name):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
