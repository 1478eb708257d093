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
        if _distributed():
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
        elif "cuda" in state and not _distributed():
            torch.cuda.set_rng_state_all(state["cuda"])


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


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
    return ckpt
