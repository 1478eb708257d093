"""The training loop: SGD with Nesterov momentum, top-1/top-5 on validation and test every
epoch, model selection by the best validation top-5, atomic checkpoints and ``--resume``.

A run is split in two steps so that bad input never leaves a trace:

* :func:`prepare` checks everything (options, data on disk, the run directory) and loads the
  data, writing nothing; it raises ``ValueError`` with a one-line message on bad input;
* :func:`execute` creates the run directory and trains.

Multi-process training: launched by ``torchrun``, every process joins the process group from
torchrun's environment (:func:`init_distributed`: NCCL on CUDA, Gloo on CPU), the model is
wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (with SyncBatchNorm on CUDA), the
training data is split by a :class:`~torch.utils.data.DistributedSampler` reshuffled each epoch
(``set_epoch``), ``--batch-size`` is the global batch, split evenly across the processes, and
the evaluation sets are sharded without padding (:func:`shard`) so that every sample is counted
exactly once; metrics are exact integer counts summed over the processes
(:meth:`smoothtopk.TopkAccuracy.all_reduce`). Only rank 0 writes files.

Checkpoints (``last.pt`` at every epoch's end and, with ``--checkpoint-every N``, every N
training steps) hold the random states and partial sums of every process, so that ``--resume``
after a crash, even mid-epoch, repeats what an uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows: no directory locks
    fcntl = None

from . import checkpoint as ckpt_io
from .config import RESUMABLE, Config, from_saved, load_yaml, lr_at, to_yaml
from .datasets import DataBundle, build_data, check_available
from .losses import build_loss, check_loss_args, loss_label
from .models import build_model, count_parameters
from .noise import NoisyLabels, add_grouped_noise, make_groups
from .records import environment, is_writer, write_metrics

LAST = "last.pt"
BEST = "best.pt"
CONFIG = "config.yaml"
RESULTS = "results.json"
LOCK = ".lock"  #: held by a running sweep or demo (flock)


@dataclass
class Prepared:
    cfg: Config
    run_dir: str
    data: DataBundle
    noisy: NoisyLabels
    groups: torch.Tensor
    resume_from: str | None = None
    overwrite: bool = False
    resume_state: dict | None = None  #: the loaded checkpoint ``resume_from``


def world() -> tuple[int, int]:
    """(rank, number of processes): (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_distributed() -> bool:
    """Whether torchrun (or another env:// launcher) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init_distributed(device_name: str, timeout: float = 600.0) -> torch.device | None:
    """Join the process group described by torchrun's environment variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL with one GPU per process (cuda:LOCAL_RANK) on
    CUDA, Gloo on CPU. Returns this process's device, or None for a single process.

    ``timeout``: seconds a collective (and the rendezvous) waits for the other processes before
    it fails with an error, so that a hung or stopped process ends the job instead of hanging
    it forever (``--dist-timeout``)."""
    if not launched_distributed():
        return None
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; run a single process")
    needed = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    missing = [v for v in needed if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} not; launch with torchrun")
    if device_name.startswith("cuda:"):
        raise ValueError(
            f"--device {device_name} cannot be used under torchrun; use --device cuda "
            "(each process uses cuda:LOCAL_RANK)"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but CUDA is not available")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible; "
                "lower --nproc_per_node"
            )
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout)
        )
    return device


def finish_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
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


class _SkipFirst(Sampler):
    """The indices of ``sampler`` after the first ``skip`` (the batches a resumed epoch has
    already done), without loading the skipped samples."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def _loss_options(cfg: Config) -> tuple:
    """The positional arguments of :func:`.losses.build_loss` / :func:`.losses.loss_label`."""
    return cfg.loss, cfg.k, cfg.tau, cfg.alpha, cfg.epsilon, cfg.label_smoothing


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG))


def saved_config(run_dir: str) -> Config:
    return from_saved(load_yaml(os.path.join(run_dir, CONFIG)))


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


class Busy(ValueError):
    """Another sweep (or demo) holds the lock of the directory."""


def _try_lock(fd: int, mode: int, directory: str, what: str) -> None:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Busy(
            f"{directory} is in use by another {what} (it holds {os.path.join(directory, LOCK)}); "
            "wait for it to end or choose another --out"
        ) from None


def check_unlocked(directory: str, what: str = "sweep") -> None:
    """Busy if a running sweep holds ``directory``'s lock; writes nothing."""
    path = os.path.join(directory, LOCK)
    if fcntl is None or not os.path.isfile(path):
        return
    fd = os.open(path, os.O_RDONLY)
    _try_lock(fd, fcntl.LOCK_SH, directory, what)
    os.close(fd)


@contextlib.contextmanager
def locked(directory: str, what: str = "sweep"):
    """Create ``directory`` and hold an exclusive ``flock`` on its lock file until the block
    ends (the kernel releases it when the process dies); Busy if another process holds it.
    Without ``fcntl`` (Windows) there is no lock."""
    os.makedirs(directory, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o666)
    _try_lock(fd, fcntl.LOCK_EX, directory, what)
    try:
        yield
    finally:
        os.close(fd)


def clear_directory(directory: str) -> None:
    """Delete everything in ``directory`` but its lock file (``--overwrite`` of a sweep)."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name == LOCK:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def check_run_dir(run_dir: str, resume: bool, overwrite: bool) -> bool:
    """Whether ``run_dir`` holds a run to resume; raises ValueError when it may not be used.

    ``resume`` needs a run with a checkpoint (``last.pt``): a missing or empty directory, or a
    run without ``last.pt``, is refused (starting afresh is ``overwrite``'s job)."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    check_writable(run_dir)
    if not os.path.isdir(run_dir) or not os.listdir(run_dir):
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
    raise ValueError(
        f"run directory {run_dir} already exists; pass --resume to continue it "
        "or --overwrite to replace it"
    )


def prepare_member(cfg: Config, run_dir: str, overwrite: bool = False) -> Prepared:
    """:func:`prepare` for one run of a sweep or the demo: a run with a checkpoint is resumed,
    a started run without one (killed in its first epoch) starts over, a new one starts."""
    started = os.path.isdir(run_dir) and bool(os.listdir(run_dir))
    resume = started and not overwrite and os.path.isfile(os.path.join(run_dir, LAST))
    return prepare(cfg, run_dir, resume=resume, overwrite=started and not resume)


def prepare(cfg: Config, run_dir: str, resume: bool = False, overwrite: bool = False) -> Prepared:
    """Validate everything and load the data; writes nothing. Raises ValueError on bad input.

    With ``resume`` and an existing run, ``cfg`` must be the run's saved config (see
    :func:`.config.resume_config`)."""
    resuming = check_run_dir(run_dir, resume, overwrite)
    if resuming:
        saved = saved_config(run_dir).to_dict()
        given = cfg.to_dict()
        changed = [k for k in saved if k not in RESUMABLE and saved[k] != given[k]]
        if changed:
            raise ValueError(f"--resume cannot change {', '.join(changed)} of {run_dir}")
    _, num_replicas = world()
    if cfg.batch_size % num_replicas:
        raise ValueError(
            f"batch_size {cfg.batch_size} (the global batch) must be a multiple of the "
            f"number of processes ({num_replicas})"
        )
    if not launched_distributed():
        pick_device(cfg.device)  # CUDA requested but missing: refused before anything is written
    num_classes = check_available(cfg.dataset, cfg.data_dir, cfg.download)
    if not 1 <= cfg.k < num_classes:  # every loss: k is recorded and names the run
        raise ValueError(f"k must satisfy 1 <= k < number of classes ({num_classes}), got {cfg.k}")
    check_loss_args(
        cfg.loss, cfg.k, cfg.tau, cfg.alpha, num_classes, cfg.epsilon, cfg.label_smoothing
    )
    data = build_data(
        cfg.dataset,
        cfg.data_dir,
        cfg.download,
        seed=cfg.data_seed,
        val_size=cfg.val_size,
        val_per_class=cfg.val_per_class,
        subset=cfg.subset,
        image_size=cfg.image_size,
        augment=cfg.augment,
    )
    groups = make_groups(data.num_classes, cfg.noise_groups, cfg.group_size, data.superclasses)
    noisy = add_grouped_noise(data.train.targets, cfg.noise, groups, cfg.noise_seed)
    resume_from = os.path.join(run_dir, LAST) if resuming else None
    state = None
    if resume_from is not None:
        state = ckpt_io.load_checkpoint(resume_from, map_location="cpu")
        _check_fits(state, resume_from, cfg, data.num_classes)
        saved_world = int(state.get("world_size", 1))
        if int(state.get("step", 0)) and saved_world != num_replicas:
            raise ValueError(
                f"{resume_from} was saved mid-epoch by {saved_world} process(es); resume it "
                f"with {saved_world}, not {num_replicas}"
            )
    return Prepared(
        cfg, run_dir, data, noisy, groups, resume_from, overwrite and not resuming, state
    )


def _check_fits(state: dict, path: str, cfg: Config, num_classes: int) -> None:
    """ValueError naming ``path`` unless its model and optimizer states load into this run's
    model (same names and shapes) and optimizer; checked before anything is written."""
    with torch.random.fork_rng(devices=[]):
        net = build_model(cfg.model, num_classes)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    try:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise ValueError(f"checkpoint {path} does not fit this run's model ({reason})") from None
    for param in net.parameters():
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None and buffer.shape != param.shape:
            raise ValueError(
                f"checkpoint {path} does not fit this run's model (a momentum buffer of shape "
                f"{tuple(buffer.shape)} for a parameter of shape {tuple(param.shape)})"
            )


def pick_device(name: str) -> torch.device:
    """The device of a single-process run; ValueError if CUDA is requested but unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device {name} requested but only {torch.cuda.device_count()} GPU(s) are visible"
        )
    return device


def topk_ks(num_classes: int) -> tuple[int, int]:
    """(1, 5), with 5 lowered to the number of classes for tiny data sets."""
    return 1, min(5, num_classes)


@torch.no_grad()
def evaluate(model, loader, device, ks) -> dict:
    """Top-1/top-5 fractions and the exact counts behind them."""
    from smoothtopk import TopkAccuracy

    model.eval()
    meter = TopkAccuracy(k=ks)
    for x, y in loader:
        meter.update(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
    if world()[1] > 1:
        meter.all_reduce(device=device)  # exact counts summed over the processes
    correct, total = meter.counts()
    correct = [int(c) for c in correct]
    total = int(total)
    return {
        "top1": correct[0] / max(total, 1),
        "top5": correct[1] / max(total, 1),
        "correct": correct,
        "total": total,
    }


def _save_noise(run_dir: str, prepared: Prepared) -> None:
    noisy = prepared.noisy
    ckpt_io.atomic_torch_save(
        os.path.join(run_dir, "noise.pt"),
        {
            "indices": prepared.data.train.indices,
            "clean_labels": prepared.data.train.targets,
            "noisy_labels": noisy.labels,
            "flipped": noisy.flipped,
            "resampled": noisy.resampled,
            "groups": prepared.groups,
        },
    )
    summary = noisy.summary()
    summary.update(
        groups=prepared.cfg.noise_groups,
        num_groups=int(prepared.groups.max()) + 1,
        seed=prepared.cfg.noise_seed,
        expected_flip_rate=_expected_flip_rate(noisy.rate, prepared.groups),
    )
    ckpt_io.atomic_write_json(os.path.join(run_dir, "noise.json"), summary)


def _expected_flip_rate(p: float, groups: torch.Tensor) -> float:
    """p * (1 - 1/|group|) averaged over classes (0.8 p for groups of 5)."""
    sizes = torch.bincount(groups)[groups].double()
    return float((p * (1 - 1 / sizes)).mean())


def run_summary(cfg: Config, history: list[dict], best: dict | None, noisy_rate: float) -> dict:
    complete = len(history) >= cfg.epochs
    out = {
        "status": "complete" if complete else "incomplete",
        "dataset": cfg.dataset,
        "model": cfg.model,
        "loss": cfg.loss,
        "loss_label": loss_label(*_loss_options(cfg)),
        "k": cfg.k,
        "tau": cfg.tau,
        "alpha": cfg.alpha,
        "noise": cfg.noise,
        "noise_groups": cfg.noise_groups,
        "effective_flip_rate": noisy_rate,
        "subset": cfg.subset,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "epochs_done": len(history),
    }
    if best is not None:
        out.update(
            best_epoch=best["epoch"],
            val_top1=best["val_top1"],
            val_top5=best["val_top5"],
            test_top1=best["test_top1"],
            test_top5=best["test_top5"],
        )
    if history:
        out["final"] = {k: history[-1][k] for k in ("epoch", "test_top1", "test_top5")}
    return out


def _gather(entry: dict) -> list[dict]:
    """``entry`` of every process, in rank order (a collective: every process must call it)."""
    rank, num_replicas = world()
    if num_replicas == 1:
        return [entry]
    out: list = [None] * num_replicas
    dist.all_gather_object(out, entry)
    return out


def _describe(epoch: int, step: int) -> str:
    return f"epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"


def execute(prepared: Prepared, log: Callable[[str], None] | None = None, position: int = 0):
    """Train (or continue) the run; returns the summary also written to ``results.json``.

    Under torch.distributed every process calls this after :func:`prepare` and a barrier."""
    cfg, run_dir = prepared.cfg, prepared.run_dir
    writer = is_writer()
    rank, num_replicas = world()
    if num_replicas > 1:
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    else:
        device = pick_device(cfg.device)
    log = log if writer else None
    if writer:
        if prepared.overwrite and os.path.isdir(run_dir):
            shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        ckpt_io.remove_stale_temporaries(run_dir)
        ckpt_io.atomic_write_text(os.path.join(run_dir, CONFIG), to_yaml(cfg))
        env_name = (
            "env.json" if prepared.resume_from is None else f"env-resume-{time.time():.0f}.json"
        )
        env = environment(device)
        env["world_size"] = num_replicas
        ckpt_io.atomic_write_json(os.path.join(run_dir, env_name), env)
        _save_noise(run_dir, prepared)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data = prepared.data
    net = build_model(cfg.model, data.num_classes)
    if num_replicas > 1 and device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # statistics of the global batch
    net = net.to(device)
    if rank:  # augmentation draws of the other processes: their own streams
        torch.manual_seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
    criterion = build_loss(*_loss_options(cfg)).to(device)
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    history: list[dict] = []
    best: dict | None = None
    start, skip, partial, pending_rng = 0, 0, None, None
    last_saved = "none yet"
    state = prepared.resume_state
    if state is None and prepared.resume_from is not None:
        state = ckpt_io.load_checkpoint(prepared.resume_from, map_location="cpu")
    if state is not None:
        # on CPU: the RNG states must stay CPU tensors; load_state_dict moves the rest
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, best, start = list(state["history"]), state["best"], int(state["epoch"])
        skip = int(state.get("step", 0))
        ranks = state.get("ranks") or [{"rng": state["rng"]}]
        mine = ranks[rank] if rank < len(ranks) else None
        if skip:
            partial = mine["partial"]
            pending_rng = mine["rng"]  # restored once the resumed epoch's loader exists
        elif mine is not None:
            ckpt_io.set_rng_state(mine["rng"])
        last_saved = _describe(start, skip)
        if log:
            log(f"resuming {run_dir} after {last_saved}")
    if log and start == 0 and skip == 0:
        log(
            f"{run_dir}: {cfg.model} ({count_parameters(net):,} parameters), "
            f"{loss_label(*_loss_options(cfg))}, noise {cfg.noise:g}, "
            f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test, {device}"
            + (f", {num_replicas} processes" if num_replicas > 1 else "")
        )
    model = net
    if num_replicas > 1:
        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)

    train_set = data.train.with_targets(prepared.noisy.labels)
    sampler = DistributedSampler(
        train_set, num_replicas=num_replicas, rank=rank, shuffle=True, seed=cfg.seed
    )
    local_batch = cfg.batch_size // num_replicas
    pin = device.type == "cuda"

    def train_loader(skip_batches: int = 0) -> DataLoader:
        order = _SkipFirst(sampler, skip_batches * local_batch) if skip_batches else sampler
        return DataLoader(
            train_set, local_batch, sampler=order, num_workers=cfg.workers, pin_memory=pin
        )

    def eval_loader(dataset) -> DataLoader:
        return DataLoader(
            shard(dataset, rank, num_replicas),
            cfg.eval_batch_size,
            num_workers=cfg.workers,
            pin_memory=pin,
        )

    loader = train_loader()
    steps_per_epoch = len(loader)
    val_loader, test_loader = eval_loader(data.val), eval_loader(data.test)
    ks = topk_ks(data.num_classes)
    last_path = os.path.join(run_dir, LAST)
    from smoothtopk import TopkAccuracy

    def save(path: str, epoch_done: int, step: int, extra: dict | None = None) -> None:
        ranks = _gather({"rng": ckpt_io.rng_state(), **(extra or {})})  # on every process
        if writer:
            ckpt_io.save_checkpoint(
                path, epoch=epoch_done, step=step, model=net, optimizer=optimizer,
                history=history, best=best, config=cfg.to_dict(), ranks=ranks,
            )  # fmt: skip

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        lr = lr_at(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        model.train()
        meter = TopkAccuracy(k=ks)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        first, epoch_loader = 0, loader
        if epoch == start and skip:
            first, epoch_loader = skip, train_loader(skip)
            loss_sum += partial["loss_sum"].to(device)
            meter.correct = partial["correct"].to(device)
            meter.total = partial["total"].to(device)
            t0 -= float(partial["seconds"])
        batches = iter(epoch_loader)
        if pending_rng is not None:
            ckpt_io.set_rng_state(pending_rng)
            pending_rng = None
        bar = tqdm(
            batches,
            total=len(epoch_loader),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=None if cfg.progress and writer else True,  # None: only on a terminal
            leave=False,
            position=position,
            dynamic_ncols=True,
        )
        for step, (x, y) in enumerate(bar, start=first):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            scores = model(x)
            loss = criterion(scores, y)
            bad = (~torch.isfinite(loss.detach())).to(torch.int32)
            if num_replicas > 1:
                dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            if bool(bad):
                raise FloatingPointError(
                    f"non-finite training loss at epoch {epoch + 1}, step {step + 1} "
                    f"(loss {float(loss.detach()):g} on rank {rank}); stopped without saving; "
                    f"the last good checkpoint is {last_path} ({last_saved})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * y.numel()
            meter.update(scores.detach(), y)
            done = step + 1
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < steps_per_epoch:
                correct, total = meter.counts()
                part = {
                    "loss_sum": loss_sum.detach().cpu(),
                    "correct": correct.detach().cpu(),
                    "total": total.detach().cpu(),
                    "seconds": time.perf_counter() - t0,
                }
                save(last_path, epoch, done, {"partial": part})
                last_saved = _describe(epoch, done)
        if num_replicas > 1:  # exact sums over the processes
            meter.all_reduce(device=device)
            dist.all_reduce(loss_sum)
        correct, total = meter.counts()
        train_loss = float(loss_sum) / max(int(total), 1)
        val = evaluate(net, val_loader, device, ks)
        test = evaluate(net, test_loader, device, ks)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_top1": int(correct[0]) / max(int(total), 1),
            "train_top5": int(correct[1]) / max(int(total), 1),
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "epoch_seconds": time.perf_counter() - t0,
            "train_correct": [int(c) for c in correct],
            "train_total": int(total),
            "val_correct": val["correct"],
            "val_total": val["total"],
            "test_correct": test["correct"],
            "test_total": test["total"],
        }
        history.append(record)
        improved = best is None or record["val_top5"] > best["val_top5"]
        if improved:
            best = {
                k: record[k] for k in ("epoch", "val_top1", "val_top5", "test_top1", "test_top5")
            }
            save(os.path.join(run_dir, BEST), epoch + 1, 0)
        save(last_path, epoch + 1, 0)
        last_saved = _describe(epoch + 1, 0)
        if writer:
            write_metrics(run_dir, history)
        if log:
            log(
                f"epoch {epoch + 1:3d}/{cfg.epochs} lr {lr:.3g} loss {train_loss:.4f} "
                f"val top1 {val['top1']:.4f} top5 {val['top5']:.4f} | "
                f"test top1 {test['top1']:.4f} top5 {test['top5']:.4f} "
                f"({record['epoch_seconds']:.1f}s)"
            )

    summary = run_summary(cfg, history, best, prepared.noisy.effective_rate)
    if writer:
        ckpt_io.atomic_write_json(os.path.join(run_dir, RESULTS), summary)
    return summary
