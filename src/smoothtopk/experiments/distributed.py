"""Multi-process training under ``torchrun``: the one answer to "am I distributed?", the
process group (with its collective timeout), and the collectives the runner uses.

Every other module asks here: :func:`world` for ``(rank, number of processes)``,
:func:`is_writer` for "do I write files?" (rank 0), :func:`active` for "is a process group up?".
Without torchrun (or with one process) all of it degrades to the single-process answers.

Example::

    >>> from smoothtopk.experiments import distributed
    >>> distributed.world(), distributed.is_writer(), distributed.active()
    ((0, 1), True, False)
    >>> distributed.gather({"seen": 3})
    [{'seen': 3}]
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch.utils.data import Subset


def active() -> bool:
    """Whether this process is in an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, number of processes): (0, 1) without a process group."""
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """True on the process that writes files and prints: rank 0 (the only one without DDP)."""
    return world()[0] == 0


def launched() -> bool:
    """Whether torchrun (or another env:// launcher) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init(device_name: str, timeout: float) -> torch.device | None:
    """Join the process group described by torchrun's environment variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL with one GPU per process (cuda:LOCAL_RANK) on
    CUDA, Gloo on CPU. Returns this process's device, or None for a single process.

    ``timeout``: seconds a collective (and the rendezvous) waits for the other processes before
    it fails with an error, so that a hung or stopped process ends the job instead of hanging
    it forever (``--dist-timeout``; :data:`.config.DIST_TIMEOUT` by default). Bad set-ups raise
    ValueError."""
    if not launched():
        return None
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; run a single process")
    missing = [
        v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ
    ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} not; launch with torchrun")
    if device_name.startswith("cuda:"):
        raise ValueError(
            f"--device {device_name} cannot be used under torchrun; use --device cuda "
            "(each process uses cuda:LOCAL_RANK)"
        )
    device, backend = _device(device_name, int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout)
        )
    return device


def _device(device_name: str, local_rank: int) -> tuple[torch.device, str]:
    if device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but CUDA is not available; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible; "
                "lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device, "nccl"
    return torch.device("cpu"), "gloo"


def device() -> torch.device:
    """This process's device in the process group (cuda:LOCAL_RANK under NCCL, else CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def finish() -> None:
    """Leave the process group (a no-op without one)."""
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def shard(dataset, rank: int, num_replicas: int):
    """Samples ``rank, rank + num_replicas, ...``: disjoint shards covering the data set once,
    without the padding of DistributedSampler (which would count repeated samples)."""
    if num_replicas == 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), num_replicas))


def gather(entry) -> list:
    """``entry`` of every process, in rank order (a collective: every process must call it)."""
    _, num_replicas = world()
    if num_replicas == 1:
        return [entry]
    out: list = [None] * num_replicas
    dist.all_gather_object(out, entry)
    return out


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place (a no-op for one process); returns it."""
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def all_max(flag: torch.Tensor) -> torch.Tensor:
    """``flag`` (an integer tensor) maximised over the processes, in place; returns it."""
    if world()[1] > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


#: how Gloo's plain RuntimeErrors word a collective that timed out or lost its peer
GLOO_TIMEOUTS = ("timed out", "timeout caused pair closure", "connection closed by peer")


def is_timeout(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed or timed out (Gloo raises a plain
    RuntimeError saying "Timed out" or "Application timeout caused pair closure", NCCL a
    DistBackendError)."""
    backend_error = getattr(dist, "DistBackendError", ())
    text = str(err).lower()
    gloo = any(words in text for words in GLOO_TIMEOUTS)
    return world()[1] > 1 and (isinstance(err, backend_error) or gloo)
