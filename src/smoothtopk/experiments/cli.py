"""The ``smoothtopk`` command: ``train``, ``report``, ``demo`` and ``sweep``.

User errors (unknown names, missing data, bad values, an existing run directory without
``--resume``/``--overwrite``) print one line ``smoothtopk: error: ...`` to stderr, exit with
status 2 and write nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from functools import partial

from . import config as config_mod

PROG = "smoothtopk"
#: the modules of the ``experiments`` extra -> the distribution that installs them
EXTRA = {"yaml": "pyyaml", "tqdm": "tqdm", "torchvision": "torchvision", "matplotlib": "matplotlib"}
INSTALL_EXTRA = 'pip install "smoothtopk[experiments]"'
_CLUSTER_EXTRA = 'pip install "smoothtopk[cluster]"'


class _Help(argparse.HelpFormatter):
    """Help that shows an option's default, unless it has none worth saying (None, off) or its
    help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "default" in text:
            return text
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: ``smoothtopk: error: ...``, exit status 2, with
    every bad value of the command line at once (not only the first); no abbreviated options
    (``--los`` is an error, not ``--loss``); defaults in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)
        self._bad: list[str] = []  #: the bad values of this parse, reported at its end

    def _get_values(self, action, arg_strings):
        """The converted values of one option; a bad one is noted and parsing goes on (a bad
        command or positional argument ends it: what follows depends on it)."""
        try:
            return super()._get_values(action, arg_strings)
        except argparse.ArgumentError as err:
            if not action.option_strings:
                raise
            self._bad.append(str(err))
            return None

    def parse_known_args(self, args=None, namespace=None):
        self._bad = []
        namespace, extras = super().parse_known_args(args, namespace)
        if self._bad:  # unknown options too, as the parent parser would report them
            self.error(f"unrecognized arguments: {' '.join(extras)}" if extras else None)
        return namespace, extras

    def error(self, message: str | None):
        reasons = self._bad + ([message] if message else [])
        self._bad = []
        self.exit(2, f"{PROG}: error: {config_mod.Problems(reasons)}\n")


def _shown(value) -> str:
    """A config default as written on the command line: ``0.1``, ``8 12``, ``True``."""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _one_value(base, name: str):
    """``base`` (int, float, str) for a ``train`` option that ``sweep`` takes as a list: a
    comma-separated list is refused with the command that takes it."""

    def convert(text: str):
        if "," in text:
            flag = "--" + name.replace("_", "-")
            raise argparse.ArgumentTypeError(
                f"one value, got {text!r} (a comma-separated list is for "
                f"'{PROG} sweep {flag} {text}')"
            )
        return base(text)

    convert.__name__ = base.__name__  # argparse's "invalid float value: ..."
    return convert


def _config_help(name: str) -> str:
    """The field's help (``%`` escaped for argparse) and its default when the help omits it."""
    text = config_mod.help_of(name).replace("%", "%%")
    default = config_mod.default_of(name)
    if "default" in text or default is None or default is False:
        return text
    return f"{text} (default: {_shown(default).replace('%', '%%')})"


def _add_config_options(parser: argparse.ArgumentParser, lists: tuple[str, ...] = ()) -> None:
    """One option per config field; those in ``lists`` take a comma-separated list (a string),
    the others one value (``train``: a list there is refused, naming ``sweep``)."""
    group = parser.add_argument_group(
        "run options (override the preset and --config; the defaults shown are those without "
        "a preset)"
    )
    for name in config_mod.FIELDS:
        if name == "preset":
            continue
        flag = "--" + name.replace("_", "-")
        hint = config_mod.TYPES[name]
        kw = {"dest": name, "default": argparse.SUPPRESS, "help": _config_help(name)}
        if name in lists:
            kw["help"] = f"{kw['help']}; a comma-separated list sweeps over the values"
            group.add_argument(flag, type=str, metavar="V[,V...]", **kw)
        elif hint is bool:
            action = "store_true" if name == "download" else argparse.BooleanOptionalAction
            group.add_argument(flag, action=action, **kw)
        elif name == "milestones":
            group.add_argument(flag, type=int, nargs="*", metavar="EPOCH", **kw)
        else:
            base = next((t for t in (int, float) if hint in (t, t | None)), str)
            kind = _one_value(base, name) if name in config_mod.SWEPT else base
            group.add_argument(flag, type=kind, **kw)


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train one model", description="Train one model.")
    train.add_argument("--preset", choices=sorted(config_mod.PRESETS), default=None,
                       help=config_mod.help_of("preset"))  # fmt: skip
    train.add_argument("--config", metavar="YAML", help="options from a YAML file")
    train.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<name>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    _add_config_options(train)


def _add_report(sub) -> None:
    report = sub.add_parser("report", help="tables and plots from runs",
                            description="Tables and plots from run directories.")  # fmt: skip
    report.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories, directories holding runs, or run archives "
                             "(*.runs.jsonl.gz, written by --archive)")  # fmt: skip
    report.add_argument("--out", metavar="DIR", help="output directory (default: <runs>/report; "
                        "for one archive NAME.runs.jsonl.gz: NAME-report beside it)")  # fmt: skip
    report.add_argument("--archive", metavar="FILE",
                        help="also write the runs' records (config, epoch records, noise "
                             "summary, machines; no checkpoints) to FILE, a run archive "
                             "ending in .runs.jsonl.gz that this command reads back")  # fmt: skip
    report.add_argument("--select", action="store_true",
                        help="also the selection files (selection.md: per-seed paired "
                             "differences to CE) when each loss has one configuration; with "
                             "several they are written anyway")  # fmt: skip


def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="the demo sweep on the embedded data",
        description="CE vs L_{5,1} at noise 0 ... 0.8 on the embedded data: the sweep preset "
        "demo-sweep (running it again continues it, as any sweep).",
    )
    demo.add_argument("--out", default=os.path.join("runs", "demo"), metavar="DIR",
                      help="directory of the demo's runs and report")  # fmt: skip
    demo.add_argument("--noise", default=None, metavar="P[,P...]",
                      help="noise levels, comma-separated as in sweep (default: "
                      "0,0.2,0.4,0.6,0.8)")  # fmt: skip
    demo.add_argument("--epochs", type=int, default=None,
                      help="override the demo's epochs (default: 15)")  # fmt: skip
    demo.add_argument("--resume", action="store_true",
                      help="continue an interrupted demo (refused if there is none)")  # fmt: skip
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                      help="progress bars")  # fmt: skip
    demo.add_argument("--jobs", type=int, default=None, metavar="N",
                      help="worker processes (default: one per core, single-threaded)")  # fmt: skip


SWEEP_DESCRIPTION = (
    "Train the cross product of the comma-separated values of --loss, --noise, --subset, "
    "--imbalance-ratio, --seed, --k, --tau, --alpha, --epsilon, --label-smoothing, --tau-la and "
    "--max-margin (hyper-parameters only for the losses that use them), and of each loss's "
    "--grid, one run directory each; runs already complete are skipped, so running the same "
    "command again resumes an interrupted sweep. Then a report with mean ± std over seeds in "
    "OUT/report and, with a grid, the selection table: per loss, noise level (or subset) and "
    "seed the configuration with the best clean validation top-5, and its test accuracy."
)


def _add_sweep(sub) -> None:
    sweep = sub.add_parser("sweep", help="losses x noise levels (or subsets) x seeds x "
                           "hyper-parameters", description=SWEEP_DESCRIPTION)  # fmt: skip
    sweep.add_argument("--preset", default=None, metavar="NAME",
                       help=f"a recipe ({', '.join(config_mod.PRESETS)}), or demo-sweep (the "
                       "demo), or demo-full: every loss x noise 0 ... 0.8 x seeds 0 ... 4 "
                       "(embedded data), or noise-select / subsets-select / longtail-select: "
                       "the paper's protocols with per-loss selection, or noise1-select / "
                       "noise-fair / subsets-fair / longtail-fair (equal grids, 5 seeds) / "
                       "tau-study / k-study / group-size / nonsmooth-select / nonsmooth-wide: "
                       "noise p = 1, tau on powers of ten, k = 1, 2, 5, 10 against top-1 ... "
                       "top-10, look-alike groups of 3, 5, 10 classes, the non-smooth losses "
                       "with their own learning rates (0.03 ... 0.3; wide: 0.003, 0.01, "
                       "1.0)")  # fmt: skip
    sweep.add_argument("--grid", action="append", default=None,
                       metavar="LOSS:OPTION=V,V[;OPTION=V,...]",
                       help="options of LOSS to select from by clean validation top-5 (lr and "
                       "weight-decay for every loss; tau, alpha, epsilon, label-smoothing where "
                       "the loss uses them), e.g. 'smooth-svm:tau=0.1,1,10;lr=0.03,0.1'; "
                       "once per loss; replaces the preset's or the file's grid of that "
                       "loss")  # fmt: skip
    sweep.add_argument("--config", metavar="YAML",
                       help="options from a YAML file (a list for a swept option)")  # fmt: skip
    sweep.add_argument("--out", default=os.path.join("runs", "sweep"), metavar="DIR",
                       help="directory of the sweep's runs and report")  # fmt: skip
    sweep.add_argument("--overwrite", action="store_true", help="replace the whole sweep in --out")
    sweep.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="worker processes of --launcher local (1: one run after "
                       "another)")  # fmt: skip
    _add_launcher_options(sweep)
    _add_config_options(sweep, lists=config_mod.SWEPT)


def _add_launcher_options(sweep) -> None:
    group = sweep.add_argument_group(
        "cluster (--launcher submitit: each run one task of a SLURM job array; see "
        "docs/experiments.md)"
    )
    group.add_argument("--launcher", choices=("local", "submitit"), default="local",
                       help="local: worker processes here; submitit: jobs through submitit "
                       f"(the cluster extra: {_CLUSTER_EXTRA})")  # fmt: skip
    group.add_argument("--submitit-cluster", choices=("auto", "slurm", "local", "debug"),
                       default="auto", help="submitit's executor (auto: slurm where sbatch is "
                       "found, else local processes)")  # fmt: skip
    group.add_argument("--slurm-partition", metavar="NAME", help="the partition of the jobs")
    group.add_argument("--slurm-gpus-per-node", type=int, metavar="N", help="GPUs per task")
    group.add_argument("--slurm-time", metavar="TIME", help="time limit of each task: MM, "
                       "HH:MM:SS or D-HH:MM:SS (required on SLURM); a task that reaches it is "
                       "requeued and resumes")  # fmt: skip
    group.add_argument("--slurm-array-parallelism", type=int, metavar="N",
                       help="at most N tasks of the array at a time")  # fmt: skip
    group.add_argument("--slurm-param", action="append", metavar="KEY=VALUE",
                       help="another slurm_* parameter of submitit, e.g. account=proj, "
                       "qos=high, mem=64G, cpus_per_task=8 (repeatable)")  # fmt: skip
    group.add_argument("--wait", action="store_true",
                       help="wait for the jobs to end, then write the report")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, built from :mod:`.config`'s fields without importing torch."""
    parser = _Parser(prog=PROG, description="Smooth top-k SVM experiments (Berrada et al., 2018)")
    sub = parser.add_subparsers(
        dest="command", metavar="{train,report,demo,sweep}", parser_class=_Parser
    )
    sub.required = True
    for add in (_add_train, _add_report, _add_demo, _add_sweep):
        add(sub)
    return parser


def _log(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message)


def _train_config(args):
    """The config and run directory of ``train``: defaults < preset < file < command line, or,
    with --resume of an existing run, its saved config with the options that may change; and
    whether the loss was chosen (by the command line, the file or the resumed run)."""
    from . import records, rundir

    given = {k: v for k, v in vars(args).items() if k in config_mod.FIELDS and k != "preset"}
    yaml_values = config_mod.load_yaml(args.config) if args.config is not None else {}
    preset = config_mod.pick_preset(args.preset, yaml_values.pop("preset", None))
    cfg = config_mod.resolve(preset, yaml_values, given)
    run_dir = args.out if args.out is not None else rundir.default_run_dir(cfg)
    chosen = "loss" in given or "loss" in yaml_values
    if args.resume and rundir.is_run_dir(run_dir):
        explicit = {**yaml_values, **given, "preset": preset}
        cfg = rundir.resume_config(records.read_config(run_dir), explicit)
        chosen = True
    return cfg, run_dir, chosen


def _prepare_train(args, parser):
    """The config, run directory, whether the loss was chosen, and the prepared run; else
    every reason the run cannot start, one line, exit 2 (options refused: also the
    ``--out`` and ``--device`` checks that need no valid config, :func:`_start_reasons`)."""
    from . import distributed
    from .train import prepare

    cfg = None
    try:
        cfg, run_dir, chosen = _train_config(args)
        distributed.init(cfg.device, cfg.dist_timeout)  # under torchrun: join the group
        prepared = prepare(cfg, run_dir, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, TypeError, OSError) as err:
        distributed.finish()
        reasons = config_mod.reasons_of(err) if isinstance(err, ValueError) else [repr(err)]
        if cfg is None and isinstance(err, ValueError):
            reasons += _start_reasons(args)
        parser.error(str(config_mod.Problems(reasons)))
    return cfg, run_dir, chosen, prepared


def _start_reasons(args) -> list[str]:
    """Why ``--out`` and ``--device`` refuse the run, without a config (whose options were
    refused): :func:`.rundir.check_run_dir` and :func:`.train.pick_device`."""
    from . import distributed, rundir
    from .train import pick_device

    checks = []
    if args.out is not None:
        checks.append(lambda: rundir.check_run_dir(args.out, args.resume, args.overwrite))
    device = getattr(args, "device", "auto")
    if config_mod.device_ok(device) and not distributed.launched():
        checks.append(lambda: pick_device(device))
    try:
        config_mod.check_all(*checks)
    except config_mod.Problems as err:
        return err.reasons
    return []


def _train(args, parser) -> int:
    from . import distributed
    from .train import fit

    cfg, run_dir, chosen, prepared = _prepare_train(args, parser)
    try:
        distributed.barrier()  # every process has checked the run directory before rank 0 writes
        with _run_lock(prepared, parser):
            if not chosen and distributed.is_writer():  # after the checks: errors stay one line
                print(f"{PROG}: no --loss given: training the default loss, "
                      f"{cfg.loss_spec.label()} ({cfg.loss}); choose one with --loss",
                      file=sys.stderr)  # fmt: skip
            summary = fit(prepared, log=_log)
    except RuntimeError as err:
        if not distributed.is_timeout(err):
            raise
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise RuntimeError(
            f"a torch.distributed collective failed or waited more than --dist-timeout "
            f"{cfg.dist_timeout:g} s for another process ({first})"
        ) from None
    finally:
        writer = distributed.is_writer()
        distributed.finish()
    if writer and summary.get("best_epoch") is not None:
        print(
            f"{run_dir}: best validation top-5 at epoch {summary['best_epoch']}: "
            f"test top-1 {100 * summary['test_top1']:.2f}%, top-5 {100 * summary['test_top5']:.2f}%"
        )
    return 0


@contextlib.contextmanager
def _run_lock(prepared, parser):
    """Rank 0 holds the run directory's lock while it trains (:func:`.rundir.run_locked`): a
    second ``train`` into the same ``--out`` is refused, one line, exit 2, nothing written."""
    from . import distributed, rundir

    if not distributed.is_writer():
        yield
        return
    resume, overwrite = prepared.resume_from is not None, prepared.overwrite
    entered = False
    try:
        with rundir.run_locked(prepared.run_dir, resume, overwrite):
            entered = True
            yield
    except ValueError as err:
        if entered:  # raised by the training, not by the lock or its check
            raise
        parser.error(str(err).splitlines()[0])  # _train's finally leaves the process group


def _report(args, parser) -> int:
    from .records import check_archive_name, write_archive
    from .report.load import archive_entries
    from .report.write import write_report
    from .rundir import check_writable

    try:
        out = _report_dir(args.out, args.runs)
        check_writable(out, "report directory")
        if args.archive is not None:
            check_archive_name(args.archive)
            check_writable(os.path.dirname(os.path.abspath(args.archive)), "archive directory")
        result = write_report(args.runs, out, select=True if args.select else None)
        if args.archive is not None:
            write_archive(args.archive, archive_entries(args.runs))
            result["files"]["archive"] = args.archive
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    except OSError as err:  # e.g. a read-only file system that os.access did not see
        parser.error(f"cannot write the report to {out}: {err.strerror or err}")
    print(result["table"], end="")
    if result.get("selection_table"):
        print()
        print(result["selection_table"], end="")
    for path in result["files"].values():
        print(f"wrote {path}")
    return 0


def _report_dir(out: str | None, runs: list[str]) -> str:
    """``--out``, or its default (the help of ``--out``)."""
    from .records import ARCHIVE_SUFFIX, is_archive

    if out == "":
        raise ValueError("the report directory (--out) must not be empty")
    if out is not None:
        return out
    if len(runs) == 1 and is_archive(runs[0]):
        return runs[0][: -len(ARCHIVE_SUFFIX)] + "-report"
    parents = {os.path.dirname(os.path.abspath(p.rstrip("/"))) for p in runs}
    base = runs[0] if len(runs) == 1 else os.path.commonpath(sorted(parents))
    return os.path.join(base, "report")


def _demo(args, parser) -> int:
    """``demo`` = ``sweep --preset demo-sweep`` with one worker per core by default."""
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    if args.resume and not (os.path.isdir(args.out) and os.listdir(args.out)):
        parser.error(f"nothing to resume: {args.out} does not hold a demo; run it without --resume")
    axes = {}
    if args.noise is not None:
        from .sweep import parse_list

        try:
            axes["noise"] = list(dict.fromkeys(parse_list("noise", args.noise)))
        except ValueError as err:
            parser.error(str(err))
    fixed = {"progress": args.progress}
    if args.epochs is not None:
        fixed["epochs"] = args.epochs
    return _run_sweep(parser, "demo-sweep", {}, axes, fixed, args.out, args.overwrite, args.jobs)


def _sweep(args, parser) -> int:
    from . import sweep

    swept = [n for n in sweep.SWEPT if hasattr(args, n)]
    try:
        *lists, yaml_values, grid, launch = config_mod.check_all(
            *(partial(sweep.parse_list, n, getattr(args, n)) for n in swept),
            lambda: config_mod.load_yaml(args.config) if args.config is not None else {},
            lambda: sweep.parse_grid(args.grid) if args.grid else None,
            lambda: _launch_of(args),
        )
    except ValueError as err:
        parser.error(str(err))
    axes = dict(zip(swept, lists, strict=True))
    fixed = {k: v for k, v in vars(args).items() if k in config_mod.FIELDS}
    fixed = {k: v for k, v in fixed.items() if k not in sweep.SWEPT and k != "preset"}
    return _run_sweep(parser, args.preset, yaml_values, axes, fixed, args.out, args.overwrite,
                      args.jobs, grid, launch)  # fmt: skip


#: the --slurm-* options and the parameters of :class:`.cluster.Launch` they set
_SLURM = {"slurm_partition": "partition", "slurm_gpus_per_node": "gpus_per_node",
          "slurm_time": "time_min", "slurm_array_parallelism": "array_parallelism",
          "slurm_param": "extra", "submitit_cluster": "cluster", "wait": "wait"}  # fmt: skip


def _launch_of(args):
    """The :class:`.cluster.Launch` of ``--launcher submitit`` (``None``: local); every bad
    value of the cluster options at once, before anything is written."""
    from . import cluster

    given = [k for k in _SLURM if getattr(args, k) not in (None, False, "auto")]
    if args.launcher == "local":
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ValueError(f"{flags} {'is' if len(given) == 1 else 'are'} for --launcher "
                             "submitit")  # fmt: skip
        return None
    launch = cluster.Launch(cluster=args.submitit_cluster, wait=args.wait)
    values = config_mod.check_all(
        lambda: args.slurm_time and cluster.parse_time(args.slurm_time),
        lambda: cluster.parse_params(args.slurm_param or []),
        *(
            _at_least_one(f"--slurm-{k.replace('_', '-')}", getattr(args, f"slurm_{k}"))
            for k in ("gpus_per_node", "array_parallelism")
        ),  # fmt: skip
    )
    launch.time_min, launch.extra = values[0] or None, values[1]
    launch.partition, launch.gpus_per_node = args.slurm_partition, args.slurm_gpus_per_node
    launch.array_parallelism = args.slurm_array_parallelism
    return launch


def _at_least_one(flag: str, value):
    def check():
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")

    return check


def _run_sweep(parser, preset, yaml_values, axes, fixed, out, overwrite, jobs, grid=None,
               launch=None) -> int:  # fmt: skip
    """Expand, plan (bad input: exit 2, nothing written), train (or submit) and report a sweep
    (with the selection table when a grid is given, by the command line, the file or the
    preset)."""
    from . import cluster, sweep
    from .claims import Busy

    if jobs is not None and jobs < 1:
        parser.error(f"--jobs must be >= 1, got {jobs}")
    try:
        has_grid = bool(grid) or "grid" in (yaml_values or {}) or sweep.has_grid(preset)
        _, runs = config_mod.check_all(
            lambda: launch is None or cluster.check(launch),
            lambda: _plan_sweep(preset, yaml_values, axes, fixed, grid, out, overwrite),
        )
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    progress = all(r.cfg.progress for r in runs)
    try:
        result = sweep.run(out, runs, overwrite=overwrite, jobs=jobs, progress=progress, log=_log,
                           select=True if has_grid else None, launch=launch)  # fmt: skip
    except Busy as err:  # another sweep took the directory after this one's check
        parser.error(str(err))
    _print_sweep(result)
    return 0


def _plan_sweep(preset, yaml_values, axes, fixed, grid, out, overwrite) -> list:
    from . import sweep

    named = sweep.expand_named(preset, yaml_values, axes, fixed, grid)
    configs, names = [c for c, _ in named], [n for _, n in named]
    return sweep.plan(out, configs, overwrite=overwrite, names=names)


def _print_sweep(result: dict) -> None:
    if result.get("table") is not None:
        print()
        print(result["table"], end="")
    if result.get("selection_table"):
        print()
        print(result["selection_table"], end="")
    for path in result["files"].values():
        print(f"wrote {path}")
    if result.get("note"):
        print(result["note"])
    done = (f"{len(result['submitted'])} runs submitted" if "submitted" in result
            else f"{len(result['trained'])} runs trained")  # fmt: skip
    ended = "finished" if result.get("table") is not None else "ended"
    print(f"sweep {ended} in {result['seconds']:.0f} s: {done}, {len(result['skipped'])} "
          "already complete")  # fmt: skip


def missing_extra() -> list[str]:
    """The distributions of the ``experiments`` extra that are not installed (none imported)."""
    missing = []
    for module, dist in EXTRA.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or half-imported module: let it speak
            found = True
        if not found:
            missing.append(dist)
    return missing


def _needs_extra(parser, command: str, missing: list[str]):
    parser.error(f"{command} needs the experiments extra ({', '.join(missing)} not installed): "
                 f"{INSTALL_EXTRA}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The ``smoothtopk`` command; parsing and ``--help`` import neither torch nor the extra."""
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = missing_extra()
    if missing:
        _needs_extra(parser, args.command, missing)
    handler = {"train": _train, "report": _report, "demo": _demo, "sweep": _sweep}[args.command]
    try:
        return handler(args, parser)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in EXTRA:
            raise
        _needs_extra(parser, args.command, [EXTRA[err.name.split(".")[0]]])
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished epochs are saved (continue with --resume)",
              file=sys.stderr)  # fmt: skip
        return 130
    except (FloatingPointError, RuntimeError, OSError) as err:
        print(f"{PROG}: error: {err}".splitlines()[0], file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
