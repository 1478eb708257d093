"""The ``smoothtopk`` command: ``train``, ``report``, ``demo`` and ``sweep``.

User errors (unknown names, missing data, bad values, an existing run directory without
``--resume``/``--overwrite``) print one line ``smoothtopk: error: ...`` to stderr, exit with
status 2 and write nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import config as config_mod

PROG = "smoothtopk"

HELP = {
    "dataset": "embedded (default, generated), cifar100, imagenet or folder",
    "data_dir": "where the data set lives (cifar100: the folder holding cifar-100-python/)",
    "download": "download CIFAR-100 with torchvision if it is missing",
    "data_seed": "seed of the embedded data, the train/validation split and the subsets",
    "val_size": "validation images split off the training set (cifar100 5000, embedded 500)",
    "val_per_class": "validation images per class held out (imagenet, folder)",
    "subset": "balanced training subset, e.g. 64k, 128k, 320k, 640k or all (not cifar100)",
    "image_size": "crop size for imagenet/folder data",
    "augment": "training augmentation (random crop and flip)",
    "noise": "label noise level p in [0, 1] (training labels only)",
    "noise_groups": "consecutive (as the public code) or superclass (cifar100's semantic groups)",
    "group_size": "classes per group for consecutive noise groups",
    "noise_seed": "seed of the label noise draw",
    "model": "small-cnn, densenet-bc, resnet18 or resnet18-cifar (default: by data set)",
    "loss": "ce, smooth-svm, hard-svm or a comparator: hinge-alpha, hinge-beta, trunc-entropy, "
    "calibrated-hinge, smoothed-calibrated-hinge, ce-label-smoothing (difftopk if installed)",
    "k": "k of the top-k losses",
    "tau": "temperature of smooth-svm",
    "alpha": "margin of the SVM and hinge losses",
    "epsilon": "noise scale of smoothed-calibrated-hinge",
    "label_smoothing": "smoothing of ce-label-smoothing, in [0, 1]",
    "epochs": "number of epochs",
    "batch_size": "global training batch size (split evenly across torchrun processes)",
    "eval_batch_size": "evaluation batch size",
    "lr": "initial learning rate",
    "momentum": "Nesterov momentum",
    "nesterov": "use Nesterov momentum",
    "weight_decay": "weight decay",
    "milestones": "epochs after which the learning rate is multiplied by gamma",
    "gamma": "learning rate factor at each milestone",
    "seed": "seed of model initialisation, data order and augmentation",
    "workers": "data loading worker processes",
    "device": "auto, cpu, cuda or cuda:N (under torchrun: each process uses cuda:LOCAL_RANK)",
    "checkpoint_every": "also save last.pt every N training steps, for mid-epoch --resume "
    "(0: at epoch ends only)",
    "progress": "tqdm progress bars (shown on a terminal only)",
    "dist_timeout": "seconds a torchrun process waits for the others in a collective before "
    "the job fails (default 600)",
}


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: ``smoothtopk: error: ...``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message}\n")


def _add_config_options(parser: argparse.ArgumentParser, lists: tuple[str, ...] = ()) -> None:
    """One option per config field; those in ``lists`` take a comma-separated list (a string)."""
    group = parser.add_argument_group("run options (override the preset and --config)")
    for name in config_mod.FIELDS:
        if name == "preset":
            continue
        flag = "--" + name.replace("_", "-")
        hint = config_mod._HINTS[name]
        kw = {"dest": name, "default": argparse.SUPPRESS, "help": HELP.get(name)}
        if name in lists:
            kw["help"] = f"{kw['help']}; a comma-separated list sweeps over the values"
            group.add_argument(flag, type=str, metavar="V[,V...]", **kw)
        elif hint is bool:
            if name == "download":
                group.add_argument(flag, action="store_true", **kw)
            else:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif name == "milestones":
            group.add_argument(flag, type=int, nargs="*", metavar="EPOCH", **kw)
        elif hint in (int, int | None):
            group.add_argument(flag, type=int, **kw)
        elif hint is float:
            group.add_argument(flag, type=float, **kw)
        else:
            group.add_argument(flag, type=str, **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Smooth top-k SVM experiments (Berrada et al., 2018)")
    sub = parser.add_subparsers(
        dest="command", metavar="{train,report,demo,sweep}", parser_class=_Parser
    )
    sub.required = True

    train = sub.add_parser("train", help="train one model", description="Train one model.")
    train.add_argument("--preset", choices=sorted(config_mod.PRESETS), default=None,
                       help="a recipe of the paper (or the demo)")  # fmt: skip
    train.add_argument("--config", metavar="YAML", help="options from a YAML file")
    train.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<name>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    _add_config_options(train)

    report = sub.add_parser("report", help="tables and plots from runs",
                            description="Tables and plots from run directories.")  # fmt: skip
    report.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories, or directories holding runs")  # fmt: skip
    report.add_argument("--out", metavar="DIR", help="output directory (default: <runs>/report)")

    demo = sub.add_parser(
        "demo",
        help="the demo sweep on the embedded data",
        description="CE vs L_{5,1} at noise 0 ... 0.8 on the embedded data.",
    )
    demo.add_argument("--out", default=os.path.join("runs", "demo"), metavar="DIR")
    demo.add_argument("--noise", type=float, nargs="+", default=None, metavar="P",
                      help="noise levels (default: 0 0.2 0.4 0.6 0.8)")  # fmt: skip
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    demo.add_argument("--jobs", type=int, default=None, metavar="N",
                      help="worker processes (default: one per core, single-threaded)")  # fmt: skip

    from .sweep import SWEEP_PRESETS, SWEPT

    sweep = sub.add_parser(
        "sweep",
        help="losses x noise levels (or subsets) x seeds x hyper-parameters",
        description="Train the cross product of the comma-separated values of --loss, --noise, "
        "--subset, --seed, --k, --tau, --alpha, --epsilon and --label-smoothing (hyper-parameters "
        "only for the losses that use them), one run directory each; runs already complete are "
        "skipped, so running the same command again resumes an interrupted sweep. Then a report "
        "with mean ± std over seeds in OUT/report.",
    )
    sweep.add_argument("--preset", choices=sorted({*config_mod.PRESETS, *SWEEP_PRESETS}),
                       default=None, help="a recipe, or demo-full: every loss x noise 0 ... 0.8 "
                       "x seeds 0,1,2 on the embedded data")  # fmt: skip
    sweep.add_argument("--config", metavar="YAML",
                       help="options from a YAML file (a list for a swept option)")  # fmt: skip
    sweep.add_argument("--out", default=os.path.join("runs", "sweep"), metavar="DIR")
    sweep.add_argument("--overwrite", action="store_true", help="replace the whole sweep in --out")
    sweep.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="worker processes (default 1: one run after another)")  # fmt: skip
    _add_config_options(sweep, lists=SWEPT)
    return parser


def default_run_dir(cfg: config_mod.Config) -> str:
    """``runs/<dataset>-<loss and the options it uses>-noise<P>-<subset>-seed<S>``."""
    from .losses import loss_slug

    loss = loss_slug(cfg.loss, cfg.k, cfg.tau, cfg.alpha, cfg.epsilon, cfg.label_smoothing)
    return os.path.join(
        "runs", f"{cfg.dataset}-{loss}-noise{cfg.noise:g}-{cfg.subset}-seed{cfg.seed}"
    )


def _log(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message)


def _train(args, parser) -> int:
    import torch.distributed as dist

    timed_out = getattr(dist, "DistBackendError", ())  # (): matches nothing

    from .train import (
        barrier,
        execute,
        finish_distributed,
        init_distributed,
        is_run_dir,
        prepare,
        saved_config,
        world,
    )

    given = {k: v for k, v in vars(args).items() if k in config_mod.FIELDS and k != "preset"}
    prepare_ok = False
    try:
        yaml_values = config_mod.load_yaml(args.config) if args.config is not None else {}
        preset = config_mod.pick_preset(args.preset, yaml_values.pop("preset", None))
        cfg = config_mod.resolve(preset, yaml_values, given)
        run_dir = args.out if args.out is not None else default_run_dir(cfg)
        if args.resume and is_run_dir(run_dir):
            explicit = {**yaml_values, **given, "preset": preset}
            cfg = config_mod.resume_config(saved_config(run_dir), explicit)
        init_distributed(cfg.device, cfg.dist_timeout)  # under torchrun: join the group
        prepared = prepare(cfg, run_dir, resume=args.resume, overwrite=args.overwrite)
        prepare_ok = True
    except (ValueError, TypeError, OSError) as err:
        parser.error(str(err).splitlines()[0] if str(err) else repr(err))
    finally:
        if not prepare_ok:
            finish_distributed()
    try:
        barrier()  # every process has checked the run directory before rank 0 writes to it
        rank = world()[0]
        summary = execute(prepared, log=_log)
    except RuntimeError as err:  # a collective timed out: another process hung or died
        text = str(err).strip()
        if world()[1] == 1 or not (isinstance(err, timed_out) or "timed out" in text.lower()):
            raise
        first = text.splitlines()[0] if text else type(err).__name__
        raise RuntimeError(
            f"a torch.distributed collective failed or waited more than --dist-timeout "
            f"{cfg.dist_timeout:g} s for another process ({first})"
        ) from None
    finally:
        finish_distributed()
    if rank == 0 and summary.get("best_epoch") is not None:
        print(
            f"{run_dir}: best validation top-5 at epoch {summary['best_epoch']}: "
            f"test top-1 {100 * summary['test_top1']:.2f}%, top-5 {100 * summary['test_top5']:.2f}%"
        )
    return 0


def _report(args, parser) -> int:
    from .report import write_report

    try:
        out = args.out
        if out == "":
            raise ValueError("the report directory (--out) must not be empty")
        if out is None:
            parents = {os.path.dirname(os.path.abspath(p.rstrip("/"))) for p in args.runs}
            base = args.runs[0] if len(args.runs) == 1 else os.path.commonpath(sorted(parents))
            out = os.path.join(base, "report")
        result = write_report(args.runs, out)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    print(result["table"], end="")
    for path in result["files"].values():
        print(f"wrote {path}")
    return 0


def _demo(args, parser) -> int:
    from . import demo

    try:
        overrides = {"epochs": args.epochs} if args.epochs is not None else {}
        noise = tuple(args.noise) if args.noise else demo.NOISE_LEVELS
        runs = demo.plan(args.out, noise, args.resume, args.overwrite, overrides)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    from .train import Busy

    try:
        result = demo.run(
            args.out, runs, overwrite=args.overwrite, progress=args.progress, jobs=args.jobs
        )
    except Busy as err:  # another demo took the directory after this one's check
        parser.error(str(err))
    print()
    print(result["table"], end="")
    for path in result["files"].values():
        print(f"wrote {path}")
    print(f"demo finished in {result['seconds']:.0f} s")
    return 0


def _sweep(args, parser) -> int:
    from . import sweep
    from .train import Busy

    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        axes = {n: sweep.parse_list(n, getattr(args, n)) for n in sweep.SWEPT if hasattr(args, n)}
        fixed = {
            k: v for k, v in vars(args).items() if k in config_mod.FIELDS and k not in sweep.SWEPT
        }
        fixed.pop("preset", None)
        yaml_values = config_mod.load_yaml(args.config) if args.config else {}
        configs = sweep.expand(args.preset, yaml_values, axes, fixed)
        runs = sweep.plan(args.out, configs, overwrite=args.overwrite)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    progress = all(r.cfg.progress for r in runs)
    try:
        result = sweep.run(
            args.out, runs, overwrite=args.overwrite, jobs=args.jobs, progress=progress, log=_log
        )
    except Busy as err:  # another sweep took the directory after this one's check
        parser.error(str(err))
    print()
    print(result["table"], end="")
    for path in result["files"].values():
        print(f"wrote {path}")
    print(
        f"sweep finished in {result['seconds']:.0f} s: {len(result['trained'])} runs trained, "
        f"{len(result['skipped'])} already complete"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {"train": _train, "report": _report, "demo": _demo, "sweep": _sweep}[args.command]
    try:
        return handler(args, parser)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished epochs are saved (continue with --resume)",
              file=sys.stderr)  # fmt: skip
        return 130
    except (FloatingPointError, RuntimeError, OSError) as err:
        print(f"{PROG}: error: {err}".splitlines()[0], file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
