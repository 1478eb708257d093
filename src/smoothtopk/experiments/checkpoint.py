"""Atomic files and checkpoints.

Every file of a run is written to a temporary file in the same directory, flushed, fsynced and
moved over the target with :func:`os.replace`, so a run killed at any moment leaves either the
old or the new version of each file, never a torn one. Checkpoints hold only tensors and plain
Python containers, loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile

import torch

from . import distributed

FORMAT = 1


TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it, rename it over ``path``
    and fsync the directory: a crash leaves the old or the new file, never a torn one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp creates 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete temporary files left by a process killed while writing (SIGKILL, power loss)."""
    removed = []
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return removed


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def rng_state() -> dict:
    """The global random states a training step may use (torch CPU and CUDA, Python).

    Under ``torch.distributed`` only the process's own CUDA device is recorded, so that no
    process touches another process's GPU."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        if distributed.active():
            state["cuda_current"] = torch.cuda.get_rng_state()
        else:
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if torch.cuda.is_available():
        if "cuda_current" in state:
            torch.cuda.set_rng_state(state["cuda_current"])
        elif "cuda" in state and not distributed.active():
            torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str,
    *,
    epoch: int,
    model,
    optimizer,
    history,
    best,
    config,
    step: int = 0,
    ranks: list[dict] | None = None,
) -> None:
    """``epoch``: the number of completed epochs; ``step``: the batches done in the next epoch
    (0 at an epoch's end). Training resumes at (0-based) epoch ``epoch``, after ``step`` batches.

    ``ranks``: per process (rank order) its random states (``"rng"``) and, mid-epoch, its partial
    training sums (``"partial"``); by default the single process's random states."""
    if ranks is None:
        ranks = [{"rng": rng_state()}]
    atomic_torch_save(
        path,
        {
            "format": FORMAT,
            "epoch": epoch,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": ranks[0]["rng"],
            "ranks": ranks,
            "world_size": len(ranks),
            "history": history,
            "best": best,
            "config": config,
        },
    )


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing, truncated or corrupted file
    raises ValueError naming it."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise ValueError(
            f"checkpoint {path} is truncated or corrupted ({reason}); "
            "delete it to start over, or restore a good copy"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: unsupported checkpoint format {found!r}")
    missing = [k for k in ("epoch", "model", "optimizer", "rng", "history") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete (no {', '.join(missing)})")
    problem = _field_problem(ckpt)
    if problem:
        raise ValueError(f"checkpoint {path} is damaged ({problem}); delete it or restore a copy")
    return ckpt


def _count(value, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _field_problem(ckpt: dict) -> str | None:
    """What is wrong with the fields of a loaded checkpoint (None: nothing). The tensors of the
    model are checked against the model by the trainer."""
    epoch, step = ckpt["epoch"], ckpt.get("step", 0)
    if not _count(epoch) or not _count(step):
        return f"epoch {epoch!r} and step {step!r} must be integers >= 0"
    history, best = ckpt["history"], ckpt.get("best")
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        return "history is not a list of records"
    if len(history) != epoch:
        return f"{len(history)} history records for {epoch} finished epochs"
    if best is not None and not (isinstance(best, dict) and "val_top5" in best):
        return f"best is {best!r}"
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt["optimizer"], dict):
        return "model or optimizer is not a state dict"
    ranks = ckpt.get("ranks") or [{"rng": ckpt["rng"]}]
    if not isinstance(ranks, list) or not _count(ckpt.get("world_size", len(ranks)), 1):
        return "ranks is not a list of process states"
    for rank in ranks:
        if not isinstance(rank, dict) or _rng_problem(rank.get("rng")):
            return f"a random state is damaged ({_rng_problem(rank.get('rng'))})"
        partial = rank.get("partial")
        if step and not (isinstance(partial, dict) and _partial_ok(partial)):
            return "a mid-epoch checkpoint without the partial sums of every process"
    return None


def _rng_problem(state) -> str | None:
    if not isinstance(state, dict) or not isinstance(state.get("torch"), torch.Tensor):
        return "no torch state"
    try:
        torch.Generator().set_state(state["torch"])
        version, internal, gauss = state["python"]
        random.Random().setstate((version, tuple(internal), gauss))
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def _partial_ok(partial: dict) -> bool:
    tensors = [partial.get(k) for k in ("loss_sum", "correct", "partial", "total")]
    return all(isinstance(t, torch.Tensor) for t in tensors) and isinstance(
        partial.get("seconds"), int | float
    )
