"""The training loop: SGD with Nesterov momentum, top-1 ... top-10 on validation and test every
epoch, model selection by the best validation top-5, atomic checkpoints and ``--resume``.

A run is split in two steps so that bad input never leaves a trace:

* :func:`prepare` checks everything (options, data on disk, the run directory) and loads the
  data, writing nothing; it raises ``ValueError`` with a one-line message on bad input;
* :func:`fit` creates the run directory and trains: :func:`restore` continues from a
  checkpoint, :func:`train_one_epoch` runs the steps of one epoch (with mid-epoch checkpoints),
  :func:`evaluate` counts top-1 ... top-10 on a split.

Multi-process training: launched by ``torchrun``, every process joins the process group from
torchrun's environment (:func:`.distributed.init`: NCCL on CUDA, Gloo on CPU), the model is
wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (with SyncBatchNorm on CUDA), the
training data is split by a :class:`~torch.utils.data.DistributedSampler` reshuffled each epoch
(``set_epoch``), ``--batch-size`` is the global batch, split evenly across the processes, and
the evaluation sets are sharded without padding (:func:`.distributed.shard`) so that every
sample is counted exactly once; metrics are exact integer counts summed over the processes
(:meth:`smoothtopk.TopkAccuracy.all_reduce`). Only rank 0 writes files.

Checkpoints (``last.pt`` at every epoch's end and, with ``--checkpoint-every N``, every N
training steps) hold the random states and partial sums of every process, so that ``--resume``
after a crash, even mid-epoch, repeats what an uninterrupted run would have done.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from smoothtopk import TopkAccuracy

from . import checkpoint as ckpt_io
from . import distributed, records, rundir
from .config import MIXING, Config, check_all, lr_at
from .datasets import THIRDS, DataBundle, build_data, check_available
from .mixing import Mixing, build_mixing, step_seed
from .models import build_model, count_parameters, memory_format
from .noise import NoisyLabels, add_grouped_noise, make_groups
from .report.selection import improves


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


class _SkipFirst(Sampler):
    """The indices of ``sampler`` after the first ``skip`` (the batches a resumed epoch has
    already done), without loading the skipped samples."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


# -- prepare: every check, no writes --------------------------------------------------------------


def prepare(cfg: Config, run_dir: str, resume: bool = False, overwrite: bool = False,
            job: str | None = None) -> Prepared:  # fmt: skip
    """Validate everything and load the data; writes nothing. Raises ValueError on bad input.

    With ``resume`` and an existing run, ``cfg`` must be the run's saved config (see
    :func:`.rundir.resume_config`). ``job``: the cluster job that trains it (a claim of that
    job, left by a preempted incarnation, is its own)."""
    resuming = _check_start(cfg, run_dir, resume, overwrite, job)
    _, num_replicas = distributed.world()
    data = build_data(
        cfg.dataset, cfg.data_dir, cfg.download, seed=cfg.data_seed, val_size=cfg.val_size,
        val_per_class=cfg.val_per_class, subset=cfg.subset, image_size=cfg.image_size,
        augment=cfg.augment, imbalance_ratio=cfg.imbalance_ratio,
        subsample_seed=cfg.subsample_draw_seed, lookalike_group_size=cfg.lookalike_group_size,
    )  # fmt: skip
    groups = make_groups(data.num_classes, cfg.noise_groups, cfg.group_size, data.superclasses)
    noisy = add_grouped_noise(data.train.targets, cfg.noise, groups, cfg.noise_draw_seed)
    check_loss_trains(cfg, training_counts(noisy.labels, data.num_classes))
    resume_from = records.path(run_dir, records.LAST) if resuming else None
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


def _check_start(cfg: Config, run_dir: str, resume: bool, overwrite: bool, job=None) -> bool:
    """Every check of :func:`prepare` that needs no data loaded, all reported at once
    (:class:`.config.Problems`): the run directory (resumed: its saved config), the global
    batch, the device, the data on disk and ``k`` below its classes. Whether it resumes."""
    resuming, *_ = check_all(
        lambda: _check_run_dir(cfg, run_dir, resume, overwrite, job),
        lambda: _check_batch(cfg.batch_size, distributed.world()[1]),
        lambda: distributed.launched() or pick_device(cfg.device),
        lambda: cfg.loss_spec.check(check_available(cfg.dataset, cfg.data_dir, cfg.download)),
    )
    return resuming


def _check_run_dir(cfg: Config, run_dir: str, resume: bool, overwrite: bool, job=None) -> bool:
    default = os.path.normpath(run_dir) == rundir.default_run_dir(cfg)
    resuming = rundir.check_run_dir(run_dir, resume, overwrite, default, job)
    if resuming:
        changed = rundir.incompatible(records.read_config(run_dir), cfg)
        if changed:
            raise ValueError(f"--resume cannot change {', '.join(changed)} of {run_dir}")
    return resuming


def _check_batch(batch_size: int, num_replicas: int) -> None:
    if batch_size % num_replicas:
        raise ValueError(
            f"batch_size {batch_size} (the global batch) must be a multiple of the "
            f"number of processes ({num_replicas})"
        )


def prepare_member(cfg: Config, run_dir: str, overwrite: bool = False,
                   job: str | None = None) -> Prepared:  # fmt: skip
    """:func:`prepare` for one run of a sweep (:func:`.rundir.member_mode`): resumed with a
    checkpoint, started over if killed in its first epoch, else new."""
    resume, replace = rundir.member_mode(run_dir, overwrite)
    return prepare(cfg, run_dir, resume=resume, overwrite=replace, job=job)


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
    """(1, 5), with 5 lowered to the number of classes for tiny data sets: the top-k of the
    training counts and the headline pair of every evaluation (``top1``, ``top5``)."""
    return 1, min(5, num_classes)


def eval_ks(num_classes: int) -> tuple[int, ...]:
    """The k that evaluation measures: :data:`.records.EVAL_KS` up to the number of classes."""
    return tuple(k for k in records.EVAL_KS if k <= num_classes)


@torch.no_grad()
def evaluate(model, loader, device, ks, num_classes: int | None = None, thirds=None) -> dict:
    """Top-k fractions for every k of ``ks`` on a (sharded) split (``topk``: k -> fraction),
    the headline pair ``top1``/``top5`` (k = 1 and the largest k <= 5) and its exact counts
    (``correct``), summed over the processes. With ``num_classes``, also the macro averages of
    the pair (:func:`macro_top`); with ``thirds`` (``(C,)`` head/medium/tail index of each
    class), macro top-5 per third."""
    model.eval()
    pair = (1, max(k for k in ks if k <= 5))
    meter = TopkAccuracy(k=tuple(ks))
    macro = None if num_classes is None else TopkAccuracy(pair, average="macro",
                                                          num_classes=num_classes)  # fmt: skip
    for x, y in loader:
        scores, y = model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        meter.update(scores, y)
        if macro is not None:
            macro.update(scores, y)
    if distributed.world()[1] > 1:  # exact counts summed over the processes
        for m in (meter, macro) if macro is not None else (meter,):
            m.all_reduce(device=device)
    credit, total = meter.counts()  # ties get their shared credit: fractions of a sample
    topk = {k: float(c) / max(int(total), 1) for k, c in zip(meter.k, credit, strict=True)}
    correct = [float(credit[list(meter.k).index(k)]) for k in pair]
    out = {"top1": topk[pair[0]], "top5": topk[pair[1]], "correct": correct,
           "total": int(total), "topk": topk}  # fmt: skip
    if macro is not None:
        out.update(macro_top(*macro.counts(), thirds))
    return out


def macro_top(credit: torch.Tensor, total: torch.Tensor, thirds=None) -> dict:
    r"""Macro top-1/top-5 :math:`\frac{1}{|P|}\sum_{c \in P} \mathrm{credit}_c / n_c` over the
    classes ``P`` present in the split (as :class:`smoothtopk.TopkAccuracy`), and with
    ``thirds`` the macro top-5 over the present classes of each third (None if it has none).

    Shape:
        - credit: ``(2, C)`` float64 (top-1, top-5 rows); total: ``(C,)``; thirds: ``(C,)``.

    Example:
        >>> macro_top(torch.tensor([[1.0, 0.0], [2.0, 1.0]]), torch.tensor([2, 4]))
        {'macro_top1': 0.25, 'macro_top5': 0.625}
    """
    credit, total = credit.double().cpu(), total.cpu()
    present = total > 0
    acc = credit / total.clamp(min=1).double()
    out = {f"macro_top{k}": float(acc[i][present].mean()) for i, k in enumerate((1, 5))}
    if thirds is not None:
        for index, name in enumerate(THIRDS):
            mine = present & (torch.as_tensor(thirds).cpu() == index)
            out[f"{name}_top5"] = float(acc[1][mine].mean()) if mine.any() else None
    return out


def _save_noise(run_dir: str, prepared: Prepared) -> None:
    """The noisy labels of the run and their summary (:func:`.records.write_noise`)."""
    noisy = prepared.noisy
    labels = {
        "indices": prepared.data.train.indices,
        "clean_labels": prepared.data.train.targets,
        "noisy_labels": noisy.labels,
        "flipped": noisy.flipped,
        "resampled": noisy.resampled,
        "groups": prepared.groups,
    }
    summary = noisy.summary()
    summary.update(
        groups=prepared.cfg.noise_groups,
        num_groups=int(prepared.groups.max()) + 1,
        seed=prepared.cfg.noise_draw_seed,
        expected_flip_rate=_expected_flip_rate(noisy.rate, prepared.groups),
    )
    records.write_noise(run_dir, labels, summary)


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
        "loss_label": cfg.loss_spec.label(),
        "k": cfg.k,
        "tau": cfg.tau,
        "alpha": cfg.alpha,
        "noise": cfg.noise,
        "noise_groups": cfg.noise_groups,
        "effective_flip_rate": noisy_rate,
        "subset": cfg.subset,
        "imbalance_ratio": cfg.imbalance_ratio,
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
        out.update({k: v for k, v in best.items() if k.endswith(PER_CLASS_FIELDS)})
    if history:
        out["final"] = {k: history[-1][k] for k in ("epoch", "test_top1", "test_top5")}
    return out


# -- fit: the run ---------------------------------------------------------------------------------


@dataclass
class Loop:
    """What the epochs of one run share: the model (``net``; ``model`` is ``net`` or its DDP
    wrapper), its optimizer and loss, the data, and the run's progress so far."""

    cfg: Config
    run_dir: str
    device: torch.device
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    criterion: torch.nn.Module
    ks: tuple[int, int]  #: the training counts' top-k (:func:`topk_ks`)
    writer: bool
    model: torch.nn.Module | None = None
    train_set: object = None
    sampler: DistributedSampler | None = None
    val_loader: DataLoader | None = None
    test_loader: DataLoader | None = None
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    #: (num_classes, thirds or None): what :func:`evaluate` needs for the macro averages
    per_class: tuple = (None, None)
    last_saved: str = "none yet"  #: what ``last.pt`` holds, for error messages
    position: int = 0  #: of the progress bar
    #: called after every training step (rank 0 only): a sweep worker's report to its parent
    on_step: Callable[[], None] | None = None
    #: ``--mixup``/``--cutmix`` of the training batches (``None``: off)
    mixing: Mixing | None = None
    eval_ks: tuple[int, ...] = (1, 5)  #: the top-k of each evaluation (:func:`eval_ks`)

    @property
    def last_path(self) -> str:
        return records.path(self.run_dir, records.LAST)

    def train_loader(self, skip_batches: int = 0) -> DataLoader:
        """The training batches of this process, after the first ``skip_batches``."""
        local_batch = self.cfg.batch_size // distributed.world()[1]
        order = (
            _SkipFirst(self.sampler, skip_batches * local_batch) if skip_batches else self.sampler
        )
        pin = self.device.type == "cuda"
        return DataLoader(self.train_set, local_batch, sampler=order,
                          num_workers=self.cfg.workers, pin_memory=pin)  # fmt: skip

    def save(self, path: str, epoch_done: int, step: int, extra: dict | None = None) -> None:
        """A checkpoint with every process's random states (a collective; rank 0 writes)."""
        ranks = distributed.gather({"rng": ckpt_io.rng_state(), **(extra or {})})
        if self.writer:
            ckpt_io.save_checkpoint(
                path, epoch=epoch_done, step=step, model=self.net, optimizer=self.optimizer,
                history=self.history, best=self.best, config=self.cfg.to_dict(), ranks=ranks,
            )  # fmt: skip


def fit(prepared: Prepared, log: Callable[[str], None] | None = None, position: int = 0,
        on_step: Callable[[], None] | None = None) -> dict:  # fmt: skip
    """Train (or continue) the run; returns the summary also written to ``results.json``.
    ``log`` receives the run's lines (each epoch's: :func:`epoch_line`), ``on_step()`` is
    called after each training step; both on rank 0 only.

    Under torch.distributed every process calls this after :func:`prepare` and a barrier."""
    cfg = prepared.cfg
    rank, num_replicas = distributed.world()
    device = distributed.device() if num_replicas > 1 else pick_device(cfg.device)
    writer = distributed.is_writer()
    log = log if writer else None
    if writer:
        _start_files(prepared, device, num_replicas)
    loop = _build(prepared, device, writer, position)
    loop.on_step = on_step if writer else None
    start, skip, partial, rng = restore(loop, prepared.resume_state, log)
    _feed(loop, prepared)
    if log and start == 0 and skip == 0:
        log(_intro(loop, prepared))
    try:
        _epochs(loop, start, skip, partial, rng, log)
    except Exception as err:  # a failure, not a preemption or an interrupt: recorded
        if writer:
            records.write_failure(prepared.run_dir, err)
        raise
    summary = run_summary(cfg, loop.history, loop.best, prepared.noisy.effective_rate)
    summary["train_images"] = len(prepared.data.train)
    if writer:
        records.write_results(prepared.run_dir, summary)
        records.clear_failure(prepared.run_dir)
    return summary


def _epochs(loop: Loop, start: int, skip: int, partial, rng, log) -> None:
    """Train, evaluate and record the epochs from ``start`` (after ``skip`` of its batches)."""
    for epoch in range(start, loop.cfg.epochs):
        resumed = (skip, partial, rng) if epoch == start and skip else (0, None, None)
        train = train_one_epoch(loop, epoch, *resumed)
        val = evaluate(loop.net, loop.val_loader, loop.device, loop.eval_ks, *loop.per_class)
        test = evaluate(loop.net, loop.test_loader, loop.device, loop.eval_ks, *loop.per_class)
        _end_epoch(loop, _record(epoch, train, val, test), log)


def fit_claimed(prepared: Prepared, log=None, position: int = 0, user: str = "sweep",
                job: str | None = None, on_step=None) -> dict:  # fmt: skip
    """:func:`fit` holding the run directory's claim (:func:`.rundir.run_locked`: a trainer
    elsewhere, even on another node, is refused; ``job``: the cluster job, whose own stale claim
    a requeued incarnation takes over); :class:`.claims.Busy` if another one holds it."""
    resume = prepared.resume_from is not None
    with rundir.run_locked(prepared.run_dir, resume, prepared.overwrite, user, job):
        return fit(prepared, log=log, position=position, on_step=on_step)


def _start_files(prepared: Prepared, device: torch.device, num_replicas: int) -> None:
    """Rank 0 (re)creates the run directory: config, environment, noisy labels."""
    run_dir = prepared.run_dir
    if prepared.overwrite and os.path.isdir(run_dir):
        rundir.clear_directory(run_dir)  # keeps the lock that this process holds
    os.makedirs(run_dir, exist_ok=True)
    ckpt_io.remove_stale_temporaries(run_dir)
    records.write_config(run_dir, prepared.cfg)
    records.write_environment(run_dir, device, num_replicas, prepared.resume_from is not None)
    _save_noise(run_dir, prepared)
    if prepared.cfg.long_tailed:
        _save_long_tail(run_dir, prepared.data)


def _save_long_tail(run_dir: str, data: DataBundle) -> None:
    """``long_tail.json``: the profile's class order, the training images per class and the
    head/medium/tail third of each class (what the per-third metrics average over)."""
    counts, thirds = data.train_counts(), data.thirds()
    records.write_long_tail(
        run_dir,
        {
            "class_order": data.class_order.tolist(),
            "train_counts": counts.tolist(),
            "thirds": {n: (thirds == i).nonzero().flatten().tolist() for i, n in enumerate(THIRDS)},
            "train_images": int(counts.sum()),
            "measured_ratio": int(counts.max()) / int(counts.min()),
        },
    )


def training_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C,)`` int64: the training ``labels`` per class *as trained on* (after the long-tailed
    subsampling and the label noise), for the losses built from class counts. A class left
    with no label counts as 1, so that its prior and its margin stay finite."""
    return torch.bincount(labels, minlength=num_classes).clamp_min(1)


def check_loss_trains(cfg: Config, counts: torch.Tensor) -> None:
    """ValueError naming the loss and its options unless, built with this run's class
    ``counts``, it gives a finite loss and gradient on a float32 batch of zero scores: option
    values that no training could use (a margin or an adjustment that overflows float32 with
    these counts) are refused before anything is written. Draws no random numbers."""
    spec = cfg.loss_spec
    scores = torch.zeros(2, len(counts), requires_grad=True)
    try:
        with torch.random.fork_rng(devices=[]):
            loss = spec.build(class_counts=counts)(scores, torch.tensor([0, len(counts) - 1]))
            loss.backward()
    except (ValueError, TypeError, OverflowError) as err:
        raise ValueError(f"{spec.label()}: {err}".splitlines()[0]) from None
    if not (torch.isfinite(loss).all() and torch.isfinite(scores.grad).all()):
        value = float(loss.detach())
        raise ValueError(
            f"{spec.label()}: the loss is not finite on zero scores (loss {value:g}); an option "
            "of the loss is too large for float32 training"
        )


def _build(prepared: Prepared, device: torch.device, writer: bool, position: int) -> Loop:
    """The seeded model (SyncBatchNorm across GPUs), its loss and its optimizer."""
    cfg, rank = prepared.cfg, distributed.world()[0]
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    net = build_model(cfg.model, prepared.data.num_classes)
    if distributed.world()[1] > 1 and device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # statistics of the global batch
    layout = memory_format(device)
    net = net.to(device) if layout is None else net.to(device, memory_format=layout)
    if rank:  # augmentation draws of the other processes: their own streams
        torch.manual_seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)  # fmt: skip
    counts = training_counts(prepared.noisy.labels, prepared.data.num_classes)
    criterion = cfg.loss_spec.build(class_counts=counts).to(device)
    ks = topk_ks(prepared.data.num_classes)
    data = prepared.data
    thirds = data.thirds() if cfg.long_tailed else None
    return Loop(cfg, prepared.run_dir, device, net, optimizer, criterion, ks, writer,
                per_class=(data.num_classes, thirds), position=position,
                mixing=build_mixing(cfg.mixup, cfg.cutmix, data.num_classes),
                eval_ks=eval_ks(data.num_classes))  # fmt: skip


def restore(loop: Loop, state: dict | None, log=None) -> tuple[int, int, dict | None, dict | None]:
    """Load a checkpoint into ``loop`` (model, optimizer, history, best). Returns (epoch to
    start, batches of it already done, this process's partial sums, random states to restore
    once that epoch's loader exists); at an epoch's end the random states are restored now."""
    if state is None:
        return 0, 0, None, None
    loop.net.load_state_dict(state["model"])  # RNG states stay CPU tensors; the rest moves
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.history, loop.best = list(state["history"]), state["best"]
    start, skip = int(state["epoch"]), int(state.get("step", 0))
    rank = distributed.world()[0]
    ranks = state.get("ranks") or [{"rng": state["rng"]}]
    mine = ranks[rank] if rank < len(ranks) else None
    partial = rng = None
    if skip:
        partial, rng = mine["partial"], mine["rng"]
    elif mine is not None:
        ckpt_io.set_rng_state(mine["rng"])
    loop.last_saved = _describe(start, skip)
    if log:
        log(f"resuming {loop.run_dir} after {loop.last_saved}")
    return start, skip, partial, rng


def _feed(loop: Loop, prepared: Prepared) -> None:
    """DDP around the model, the training sampler and the sharded evaluation loaders."""
    rank, num_replicas = distributed.world()
    loop.model = loop.net
    if num_replicas > 1:
        ids = [loop.device] if loop.device.type == "cuda" else None
        loop.model = DistributedDataParallel(loop.net, device_ids=ids)
    data = prepared.data
    loop.train_set = data.train.with_targets(prepared.noisy.labels)
    loop.sampler = DistributedSampler(loop.train_set, num_replicas=num_replicas, rank=rank,
                                      shuffle=True, seed=loop.cfg.seed)  # fmt: skip
    pin = loop.device.type == "cuda"
    loop.val_loader, loop.test_loader = (
        DataLoader(
            distributed.shard(split, rank, num_replicas),
            loop.cfg.eval_batch_size,
            num_workers=loop.cfg.workers,
            pin_memory=pin,
        )  # fmt: skip
        for split in (data.val, data.test)
    )


def _intro(loop: Loop, prepared: Prepared) -> str:
    cfg, data, num_replicas = loop.cfg, prepared.data, distributed.world()[1]
    return (
        f"{loop.run_dir}: {cfg.model} ({count_parameters(loop.net):,} parameters), "
        f"{cfg.loss_spec.label()}, noise {cfg.noise:g}, "
        + "".join(f"{o} {getattr(cfg, o):g}, " for o in MIXING if getattr(cfg, o))
        + (f"long-tailed R={cfg.imbalance_ratio:g}, " if cfg.long_tailed else "")
        + f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test, {loop.device}"
        + (f", {num_replicas} processes" if num_replicas > 1 else "")
    )


def train_one_epoch(
    loop: Loop, epoch: int, first: int = 0, partial: dict | None = None, rng: dict | None = None
) -> dict:
    """The training steps of (0-based) ``epoch`` from step ``first`` (a resumed epoch: with the
    ``partial`` sums of the steps done and the random states ``rng``), saving ``last.pt``
    every ``checkpoint_every`` steps. Returns lr, loss sum, top-k counts and the start time,
    summed over the processes. A non-finite loss on any process raises FloatingPointError
    before its step is applied.

    With ``--mixup``/``--cutmix`` (:mod:`.mixing`) the loss is that of the mixed images
    against their probability targets, and the training top-k counts are of the mixed
    images' scores against each batch position's own hard (noisy) label, the image that
    keeps weight λ: a diagnostic, lower than without mixing."""
    cfg, device = loop.cfg, loop.device
    t0, lr = time.perf_counter(), lr_at(cfg, epoch)
    for group in loop.optimizer.param_groups:
        group["lr"] = lr
    loop.sampler.set_epoch(epoch)
    loop.model.train()
    meter = TopkAccuracy(k=loop.ks)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loader = loop.train_loader(first)
    if partial is not None:
        loss_sum += partial["loss_sum"].to(device)
        meter.correct, meter.partial, meter.total = (
            partial[name].to(device) for name in ("correct", "partial", "total")
        )
        t0 -= float(partial["seconds"])
    batches = iter(loader)
    if rng is not None:  # after the loader drew its seeds, as the uninterrupted run did
        ckpt_io.set_rng_state(rng)
    steps, rank = first + len(loader), distributed.world()[0]
    for step, (x, y) in enumerate(_bar(loop, batches, len(loader), epoch), start=first):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        target = y  # the hard labels; mixed batches: probability targets, for the loss only
        if loop.mixing is not None:
            x, target = loop.mixing(x, y, step_seed(cfg.seed, rank, epoch, step))
        scores = loop.model(x)
        loss = loop.criterion(scores, target)
        _stop_if_not_finite(loop, loss, epoch, step)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        loss_sum += loss.detach().double() * y.numel()
        meter.update(scores.detach(), y)
        done = step + 1
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < steps:
            _save_mid_epoch(loop, epoch, done, loss_sum, meter, t0)
        if loop.on_step is not None:
            loop.on_step()
    if distributed.world()[1] > 1:  # exact sums over the processes
        meter.all_reduce(device=device)
    correct, total = meter.counts()
    return {"lr": lr, "loss_sum": float(distributed.all_sum(loss_sum)), "correct": correct,
            "total": int(total), "t0": t0}  # fmt: skip


def _bar(loop: Loop, batches, total: int, epoch: int):
    return tqdm(
        batches, total=total, desc=f"epoch {epoch + 1}/{loop.cfg.epochs}",
        disable=None if loop.cfg.progress and loop.writer else True,  # None: on a terminal only
        leave=False, position=loop.position, dynamic_ncols=True,
    )  # fmt: skip


def _stop_if_not_finite(loop: Loop, loss: torch.Tensor, epoch: int, step: int) -> None:
    bad = distributed.all_max((~torch.isfinite(loss.detach())).to(torch.int32))
    if bool(bad):
        raise FloatingPointError(
            f"non-finite training loss at epoch {epoch + 1}, step {step + 1} "
            f"(loss {float(loss.detach()):g} on rank {distributed.world()[0]}); stopped without "
            f"saving; the last good checkpoint is {loop.last_path} ({loop.last_saved})"
        )


def _save_mid_epoch(loop: Loop, epoch: int, done: int, loss_sum, meter, t0: float) -> None:
    state = meter.state()  # the exact counts (shared tie credit as integer numerators)
    part = {"loss_sum": loss_sum.detach().cpu(), "correct": state.correct.cpu(),
            "partial": state.partial.cpu(), "total": state.total.cpu(),
            "seconds": time.perf_counter() - t0}  # fmt: skip
    loop.save(loop.last_path, epoch, done, {"partial": part})
    loop.last_saved = _describe(epoch, done)


def _record(epoch: int, train: dict, val: dict, test: dict) -> dict:
    """One row of ``metrics.jsonl``."""
    correct, total = [float(c) for c in train["correct"]], max(train["total"], 1)
    return {
        "epoch": epoch + 1, "lr": train["lr"], "train_loss": train["loss_sum"] / total,
        "train_top1": correct[0] / total, "train_top5": correct[1] / total,
        "val_top1": val["top1"], "val_top5": val["top5"],
        "test_top1": test["top1"], "test_top5": test["top5"],
        "epoch_seconds": time.perf_counter() - train["t0"],
        "train_correct": correct, "train_total": train["total"],
        "val_correct": val["correct"], "val_total": val["total"],
        "test_correct": test["correct"], "test_total": test["total"],
        **_per_class_fields("val", val), **_per_class_fields("test", test),
        **_topk_fields("val", val), **_topk_fields("test", test),
    }  # fmt: skip


#: the per-class fields of a record, when measured (macro; head/medium/tail in long-tailed runs)
PER_CLASS_FIELDS = ("macro_top1", "macro_top5", *(f"{name}_top5" for name in THIRDS))


def _topk_fields(split: str, result: dict) -> dict:
    """``<split>_top<k>`` for the k of the evaluation beside the headline pair (#22)."""
    return {f"{split}_top{k}": v for k, v in result["topk"].items() if k not in (1, 5)}


def _per_class_fields(split: str, result: dict) -> dict:
    return {f"{split}_{key}": result[key] for key in PER_CLASS_FIELDS if key in result}


def _end_epoch(loop: Loop, record: dict, log) -> None:
    """History, best epoch (:func:`.report.selection.improves`: ``best.pt``), ``last.pt``, the
    metric files and the log line."""
    loop.history.append(record)
    epoch = record["epoch"]
    if improves(record, loop.best):
        keys = ("epoch", "val_top1", "val_top5", "test_top1", "test_top5")
        keys += tuple(f"{s}_{f}" for s in ("val", "test") for f in PER_CLASS_FIELDS)
        loop.best = {k: record[k] for k in keys if k in record}
        loop.save(records.path(loop.run_dir, records.BEST), epoch, 0)
    loop.save(loop.last_path, epoch, 0)
    loop.last_saved = _describe(epoch, 0)
    if loop.writer:
        records.write_metrics(loop.run_dir, loop.history)
    if log:
        log(epoch_line(record, loop.cfg.epochs))


def epoch_line(record: dict, epochs: int) -> str:
    """The log line of an epoch, accuracies in percent as in the summary and the reports:
    ``epoch   3/15 lr 0.1 loss 3.2109 | val top-1 28.80% top-5 61.40% | test ...``."""
    val = f"val top-1 {100 * record['val_top1']:.2f}% top-5 {100 * record['val_top5']:.2f}%"
    test = f"test top-1 {100 * record['test_top1']:.2f}% top-5 {100 * record['test_top5']:.2f}%"
    return (
        f"epoch {record['epoch']:3d}/{epochs} lr {record['lr']:.3g} "
        f"loss {record['train_loss']:.4f} | {val} | {test} ({record['epoch_seconds']:.1f}s)"
    )


def _describe(epoch: int, step: int) -> str:
    return f"epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"
