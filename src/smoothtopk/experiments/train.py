"""The training loop: SGD with Nesterov momentum, top-1/top-5 on validation and test every
epoch, model selection by the best validation top-5, atomic checkpoints and ``--resume``.

A run is split in two steps so that bad input never leaves a trace:

* :func:`prepare` checks everything (options, data on disk, the run directory) and loads the
  data, writing nothing; it raises ``ValueError`` with a one-line message on bad input;
* :func:`execute` creates the run directory and trains.

Designed for the distributed trainer to come: the data order is a
:class:`~torch.utils.data.DistributedSampler` (one replica for now) reseeded each epoch with
``seed`` and the epoch number, metrics are accumulated as exact integer counts
(:class:`smoothtopk.TopkAccuracy`, mergeable across processes), and every write goes through
:func:`~.records.is_writer`.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

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


@dataclass
class Prepared:
    cfg: Config
    run_dir: str
    data: DataBundle
    noisy: NoisyLabels
    groups: torch.Tensor
    resume_from: str | None = None
    overwrite: bool = False


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG))


def saved_config(run_dir: str) -> Config:
    return from_saved(load_yaml(os.path.join(run_dir, CONFIG)))


def check_run_dir(run_dir: str, resume: bool, overwrite: bool) -> bool:
    """Whether ``run_dir`` holds a run to resume; raises ValueError when it may not be used."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"run directory {run_dir} exists and is not a directory")
    if not os.path.isdir(run_dir) or not os.listdir(run_dir):
        return False
    if not is_run_dir(run_dir):
        raise ValueError(
            f"{run_dir} exists and is not a smoothtopk run (no {CONFIG}); choose another --out"
        )
    if resume:
        return True
    if overwrite:
        return False
    raise ValueError(
        f"run directory {run_dir} already exists; pass --resume to continue it "
        "or --overwrite to replace it"
    )


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
    num_classes = check_available(cfg.dataset, cfg.data_dir, cfg.download)
    check_loss_args(cfg.loss, cfg.k, cfg.tau, cfg.alpha, num_classes)
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
    last = os.path.join(run_dir, LAST)
    resume_from = last if resuming and os.path.isfile(last) else None
    return Prepared(cfg, run_dir, data, noisy, groups, resume_from, overwrite and not resuming)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
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
        "loss_label": loss_label(cfg.loss, cfg.k, cfg.tau, cfg.alpha),
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


def execute(prepared: Prepared, log: Callable[[str], None] | None = None, position: int = 0):
    """Train (or continue) the run; returns the summary also written to ``results.json``."""
    cfg, run_dir = prepared.cfg, prepared.run_dir
    writer = is_writer()
    device = pick_device(cfg.device)
    if writer:
        if prepared.overwrite and os.path.isdir(run_dir):
            shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        ckpt_io.atomic_write_text(os.path.join(run_dir, CONFIG), to_yaml(cfg))
        env_name = (
            "env.json" if prepared.resume_from is None else f"env-resume-{time.time():.0f}.json"
        )
        ckpt_io.atomic_write_json(os.path.join(run_dir, env_name), environment(device))
        _save_noise(run_dir, prepared)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data = prepared.data
    model = build_model(cfg.model, data.num_classes).to(device)
    criterion = build_loss(cfg.loss, cfg.k, cfg.tau, cfg.alpha).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    history: list[dict] = []
    best: dict | None = None
    start = 0
    if prepared.resume_from is not None:
        # on CPU: the RNG states must stay CPU tensors; load_state_dict moves the rest
        state = ckpt_io.load_checkpoint(prepared.resume_from, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ckpt_io.set_rng_state(state["rng"])
        history, best, start = list(state["history"]), state["best"], int(state["epoch"])
        if log:
            log(f"resuming {run_dir} after epoch {start}")
    if log and start == 0:
        log(
            f"{run_dir}: {cfg.model} ({count_parameters(model):,} parameters), "
            f"{loss_label(cfg.loss, cfg.k, cfg.tau, cfg.alpha)}, noise {cfg.noise:g}, "
            f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test, {device}"
        )

    train_set = data.train.with_targets(prepared.noisy.labels)
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed)
    pin = device.type == "cuda"
    loader = DataLoader(
        train_set, cfg.batch_size, sampler=sampler, num_workers=cfg.workers, pin_memory=pin
    )
    val_loader = DataLoader(data.val, cfg.eval_batch_size, num_workers=cfg.workers, pin_memory=pin)
    test_loader = DataLoader(
        data.test, cfg.eval_batch_size, num_workers=cfg.workers, pin_memory=pin
    )
    ks = topk_ks(data.num_classes)
    from smoothtopk import TopkAccuracy

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        lr = lr_at(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        model.train()
        meter = TopkAccuracy(k=ks)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=None if cfg.progress else True,  # None: only on a terminal
            leave=False,
            position=position,
            dynamic_ncols=True,
        )
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            scores = model(x)
            loss = criterion(scores, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * y.numel()
            meter.update(scores.detach(), y)
        correct, total = meter.counts()
        train_loss = float(loss_sum) / max(int(total), 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training diverged at epoch {epoch + 1} (loss {train_loss}); "
                f"the last good checkpoint is in {run_dir}"
            )
        val = evaluate(model, val_loader, device, ks)
        test = evaluate(model, test_loader, device, ks)
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
        if writer:
            common = dict(model=model, optimizer=optimizer, history=history, best=best,
                          config=cfg.to_dict())  # fmt: skip
            if improved:
                ckpt_io.save_checkpoint(os.path.join(run_dir, BEST), epoch=epoch + 1, **common)
            ckpt_io.save_checkpoint(os.path.join(run_dir, LAST), epoch=epoch + 1, **common)
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
