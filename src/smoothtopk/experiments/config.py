"""The run configuration: one dataclass, presets, YAML files and command-line overrides.

Resolution order (later wins): the dataclass defaults, the preset (``--preset`` or ``preset:`` in
the YAML file), the preset's per-loss settings (e.g. the ImageNet recipe uses lr 1 and tau 0.1
for the smooth loss), the YAML file (``--config``), the command-line options. A ``preset:`` key
in the file and ``--preset`` must name the same preset (an error otherwise): neither is
silently dropped.

This module imports neither torch nor YAML at import time (the command line builds its parser
from :data:`FIELDS` and :data:`PRESETS` without them); the checks and the loss are imported
when a config is validated or built.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import loss_options
from .loss_options import FLOAT32_MAX

#: seconds a torchrun process waits for the others (the default of ``--dist-timeout``)
DIST_TIMEOUT = 600.0
SEED_LIMIT = 2**63  #: seeds are in [0, SEED_LIMIT): 64-bit generators, room for seed + rank


class Problems(ValueError):
    """Every reason a run cannot start, as one ValueError whose message is one line: the
    reason, or ``N problems: (1) first; (2) second; ...`` (:func:`check_all`)."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(dict.fromkeys(reasons))  # each reason once
        if len(self.reasons) == 1:
            super().__init__(self.reasons[0])
            return
        text = "; ".join(f"({i}) {reason}" for i, reason in enumerate(self.reasons, 1))
        super().__init__(f"{len(self.reasons)} problems: {text}")


def reasons_of(err: ValueError) -> list[str]:
    """The reasons of a refusal: those of :class:`Problems`, else its message's first line."""
    if isinstance(err, Problems):
        return err.reasons
    return [(str(err) or type(err).__name__).splitlines()[0]]


def check_all(*checks: Callable[[], object]) -> list:
    """Run every check, even after one fails, and raise :class:`Problems` with the reasons of
    all that raised ValueError; else return their results in order.

    Example:
        >>> def bad(reason):
        ...     raise ValueError(reason)
        >>> check_all(lambda: 1, lambda: bad("lr must be > 0"), lambda: bad("epochs >= 1"))
        Traceback (most recent call last):
        ...
        smoothtopk.experiments.config.Problems: 2 problems: (1) lr must be > 0; (2) epochs >= 1
    """
    results, reasons = [], []
    for check in checks:
        try:
            results.append(check())
        except ValueError as err:
            reasons += reasons_of(err)
    if reasons:
        raise Problems(reasons)
    return results


def option(default=None, help: str = "", factory=None):
    """A config field with its command-line help (the one place the help is written)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class LossSpec:
    """The loss of a run and all its options (every option of :data:`.loss_options.OPTIONS`;
    those the loss does not use are ignored): the one object that travels from the config to
    :mod:`.losses`."""

    name: str
    options: Mapping

    def build(self, class_counts=None):
        """The loss module (:func:`.losses.build_loss`); ``class_counts``, the training
        samples per class, reach the losses that need them (logit adjustment, LDAM margins)."""
        from .losses import build_loss

        return build_loss(self.name, self.options, class_counts=class_counts)

    def label(self) -> str:
        """A short human label, e.g. ``L_{5,1} (alpha=1)``."""
        from .losses import loss_label

        return loss_label(self.name, self.options)

    def slug(self) -> str:
        """The loss and the options it uses, for directory names: ``hinge-alpha-k5-alpha1``."""
        from .losses import loss_slug

        return loss_slug(self.name, self.options)

    def check(self, num_classes: int) -> None:
        """ValueError unless the options suit ``num_classes`` classes (k < C for every loss:
        k is recorded with the run and names the top-k metric)."""
        from .losses import check_loss_args

        check_loss_args(self.name, self.options, num_classes)


def _with_loss_options(cls):
    """Insert one field per loss option (:data:`.loss_options.OPTIONS`: its type, default and
    help) after ``loss``, before :func:`dataclasses.dataclass` sees the class."""
    notes = {}
    for name, hint in cls.__annotations__.items():
        notes[name] = hint
        if name == "loss":
            for opt in loss_options.OPTIONS.values():
                notes[opt.name] = opt.hint
                setattr(cls, opt.name, option(opt.default, opt.help))
    cls.__annotations__ = notes
    return cls


@dataclass
@_with_loss_options
class Config:
    # data
    dataset: str = option("embedded", "embedded (default, generated), cifar100, imagenet or folder")
    data_dir: str | None = option(
        None, "where the data set lives (cifar100: the folder holding cifar-100-python/)"
    )
    download: bool = option(False, "download CIFAR-100 with torchvision if it is missing")
    data_seed: int = option(
        0,
        "seed of the data set itself: the embedded data and the train/validation split "
        "(fixed across --seed)",
    )
    subsample_seed: int | None = option(
        None,
        "seed of the training subsample (--subset, --imbalance-ratio); default: --seed, so "
        "each seed draws its own subsample; give it to pin one draw for every seed",
    )
    val_size: int | None = option(
        None, "validation images split off the training set (cifar100 5000, embedded 500)"
    )
    val_per_class: int = option(50, "validation images per class held out (imagenet, folder)")
    subset: str = option("all", "balanced training subset, e.g. 64k, 128k, 320k, 640k or all "
                         "(not cifar100)")  # fmt: skip
    imbalance_ratio: float | None = option(
        None,
        "long-tailed training split (CIFAR-100-LT's exponential profile, classes in a "
        "seeded order): the largest class has about R times the images of the smallest; R >= 1, "
        "validation and test stay as they are (default: none)",
    )
    lookalike_group_size: int | None = option(
        None,
        "embedded data only: classes per look-alike group, 2 to 50 (default 5: 20 groups; 3: 32 "
        "groups of 3 and one of 4; 10: 10 groups); the 100 classes and the images' other draws "
        "stay (#22: is k = 5 = the group size an artefact?)",
    )
    image_size: int = option(224, "crop size for imagenet/folder data")
    augment: bool = option(True, "training augmentation (random crop and flip)")
    # label noise (training split only)
    noise: float = option(0.0, "label noise level p in [0, 1] (training labels only)")
    noise_groups: str = option(
        "consecutive", "consecutive (as the public code) or superclass (cifar100's semantic groups)"
    )
    group_size: int = option(5, "classes per group for consecutive noise groups")
    noise_seed: int | None = option(
        None,
        "seed of the label noise draw; default: --seed, so each seed draws its own noise "
        "(and every loss at that seed the same); give it to pin one draw for every seed",
    )
    # model and loss
    model: str | None = option(
        None, "small-cnn, densenet-bc, resnet18 or resnet18-cifar (default: by data set)"
    )
    loss: str = option("ce", "a loss of the registry smoothtopk.registry.LOSSES, e.g. ce, "
                       "smooth-svm, hard-svm, hinge-alpha (an unknown name lists them "
                       "all)")  # fmt: skip
    # k, tau, alpha, epsilon, label_smoothing, tau_la, max_margin: from .loss_options
    # optimisation: SGD, Nesterov momentum, lr multiplied by gamma at each milestone
    epochs: int = option(15, "number of epochs")
    batch_size: int = option(64, "global training batch size (split evenly across torchrun "
                             "processes)")  # fmt: skip
    eval_batch_size: int = option(500, "evaluation batch size")
    lr: float = option(0.1, "initial learning rate")
    momentum: float = option(0.9, "Nesterov momentum")
    nesterov: bool = option(True, "use Nesterov momentum")
    weight_decay: float = option(1e-4, "weight decay")
    # batch mixing (training batches only; evaluation and top-k accuracy keep hard labels)
    mixup: float = option(0.0, "MixUp on the training batches: alpha of its Beta(alpha, alpha) "
                          "(torchvision's v2.MixUp; 0: off); needs a loss that takes "
                          "probability targets")  # fmt: skip
    cutmix: float = option(0.0, "CutMix on the training batches: alpha of its Beta(alpha, "
                           "alpha) (torchvision's v2.CutMix; 0: off); with --mixup, one of "
                           "the two per batch, at random")  # fmt: skip
    milestones: list[int] = option(
        help="epochs after which the learning rate is multiplied by gamma", factory=lambda: [8, 12]
    )
    gamma: float = option(0.1, "learning rate factor at each milestone")
    seed: int = option(0, "seed of model initialisation, data order and augmentation")
    # execution
    workers: int = option(0, "data loading worker processes")
    device: str = option(
        "auto", "auto, cpu, cuda or cuda:N (under torchrun: each process uses cuda:LOCAL_RANK)"
    )
    checkpoint_every: int = option(0, "also save last.pt every N training steps, for mid-epoch "
                                   "--resume (0: at epoch ends only)")  # fmt: skip
    dist_timeout: float = option(DIST_TIMEOUT, "seconds a torchrun process waits for the "
                                 "others in a collective before the job fails")  # fmt: skip
    progress: bool = option(True, "tqdm progress bars (shown on a terminal only)")
    preset: str | None = option(None, "a recipe of the paper (or the demo)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def long_tailed(self) -> bool:
        """Whether the run follows the long-tailed protocol (``--imbalance-ratio`` given): the
        one answer that training (``long_tail.json``, per-third metrics), run names and reports
        ask."""
        return self.imbalance_ratio is not None

    @property
    def regrouped(self) -> bool:
        """Whether the embedded data has look-alike groups of another size than its default 5
        (``--lookalike-group-size``): the one answer that run names, the default directory's
        hash and reports ask."""
        from .datasets.embedded import GROUP_SIZE

        return self.lookalike_group_size not in (None, GROUP_SIZE)

    @property
    def noise_draw_seed(self) -> int:
        """The seed of the label noise draw: ``noise_seed`` when pinned, else ``seed`` (each
        seed its own draw; losses at one seed share it)."""
        return self.seed if self.noise_seed is None else self.noise_seed

    @property
    def subsample_draw_seed(self) -> int:
        """The seed of the training subsample (balanced subset, long-tailed split):
        ``subsample_seed`` when pinned, else ``seed``."""
        return self.seed if self.subsample_seed is None else self.subsample_seed

    @property
    def loss_spec(self) -> LossSpec:
        return LossSpec(self.loss, {name: getattr(self, name) for name in loss_options.NAMES})


PRESETS: dict[str, dict] = {
    # The paper's CIFAR-100 with label noise (docs/experiments.md): DenseNet-BC 40/40, 300
    # epochs, batch 64.
    "cifar100-noise": {
        "dataset": "cifar100",
        "data_dir": "data",
        "model": "densenet-bc",
        "epochs": 300,
        "batch_size": 64,
        "lr": 0.1,
        "weight_decay": 1e-4,
        "milestones": [150, 225],
        "k": 5,
        "tau": 1.0,
        "alpha": 1.0,
        "workers": 4,
    },
    # The paper's ImageNet with reduced training sets (docs/experiments.md): ResNet-18, 120
    # epochs, batch 256.
    "imagenet-subsets": {
        "dataset": "imagenet",
        "data_dir": "data/imagenet",
        "model": "resnet18",
        "epochs": 120,
        "batch_size": 256,
        "eval_batch_size": 256,
        "lr": 0.1,
        "weight_decay": 1e-4,
        "milestones": [30, 60, 90],
        "val_per_class": 50,
        "image_size": 224,
        "k": 5,
        "alpha": 1.0,
        "workers": 8,
        "by_loss": {"smooth-svm": {"lr": 1.0, "tau": 0.1, "weight_decay": 2.5e-5}},
    },
    # The demo on the embedded data: minutes on two CPU cores. Same recipe for every loss.
    "demo": {
        "dataset": "embedded",
        "model": "small-cnn",
        "epochs": 15,
        "batch_size": 64,
        "lr": 0.1,
        "weight_decay": 1e-4,
        "milestones": [8, 12],
        "k": 5,
        "tau": 1.0,
        "alpha": 1.0,
        "workers": 0,
    },
}

FIELDS = {f.name: f for f in dataclasses.fields(Config)}
#: the batch-mixing options (Beta parameters, 0: off): recipe options of the training batches,
#: not loss options; they need a loss that takes probability targets
MIXING = ("mixup", "cutmix")
#: options that ``sweep`` takes as comma-separated lists (one run per value); ``train`` takes
#: one value of each, ``demo`` a list of noise levels
SWEPT = ("loss", "noise", "subset", "seed", *loss_options.NAMES, "imbalance_ratio",
         "lookalike_group_size")  # fmt: skip
TYPES = typing.get_type_hints(Config)  #: field name -> its type (``int | None``, ...)


def help_of(name: str) -> str:
    """The command-line help of config field ``name``."""
    return FIELDS[name].metadata["help"]


def default_of(name: str):
    """The default of config field ``name`` (without a preset)."""
    spec = FIELDS[name]
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def coerce(name: str, value):
    """Check (and widen int -> float) a value from a YAML file against the field's type."""
    hint = TYPES[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ValueError(f"config option {name!r} cannot be null")
    base = hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        base = next(a for a in args if a is not type(None))
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if name == "subset" and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            return value
    elif typing.get_origin(base) is list:
        if isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return list(value)
    raise ValueError(f"config option {name!r} must be of type {hint}, got {value!r}")


def load_yaml(path: str) -> dict:
    """The mapping in the YAML file ``path``; ValueError naming the file if it cannot be read,
    is not UTF-8 text, not YAML or not a mapping."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"config file {path} is a directory, not a YAML file") from None
    except OSError as err:
        raise ValueError(f"cannot read config file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"config file {path} is not UTF-8 text (byte {err.start}); expected YAML"
        ) from None
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of options")
    return data


def _check_keys(values: dict, where: str) -> None:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown option(s) in {where}: {', '.join(unknown)}")


def resolve(
    preset: str | None = None, yaml_values: dict | None = None, cli_values: dict | None = None
) -> Config:
    """Merge defaults, preset, YAML and command line into a validated :class:`Config`."""
    yaml_values = dict(yaml_values or {})
    cli_values = dict(cli_values or {})
    check_all(
        lambda: _check_keys(yaml_values, "the config file"),
        lambda: _check_keys(cli_values, "the command line"),
    )
    yaml_values = dict(
        zip(yaml_values, check_all(*(_coercing(k, v) for k, v in yaml_values.items())), strict=True)
    )
    preset = pick_preset(cli_values.pop("preset", None) or preset, yaml_values.pop("preset", None))
    values: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values.update({k: v for k, v in PRESETS[preset].items() if k != "by_loss"})
    loss = cli_values.get("loss", yaml_values.get("loss", values.get("loss", Config.loss)))
    if preset is not None:
        values.update(PRESETS[preset].get("by_loss", {}).get(loss, {}))
    values.update(yaml_values)
    values.update(cli_values)
    values["preset"] = preset
    cfg = Config(**values)
    validate(cfg)
    return cfg


def pick_preset(given: str | None, in_file: str | None) -> str | None:
    """The preset of a run: ``--preset`` or the file's ``preset:``; both must agree."""
    if given is not None and in_file is not None and given != in_file:
        raise ValueError(
            f"--preset {given} and 'preset: {in_file}' in the config file disagree; give one"
        )
    return given if given is not None else in_file


def _coercing(name: str, value):
    return lambda: coerce(name, value)


def validate(cfg: Config) -> Config:
    """Checks that need no data; fills in the data set's default model. Every value that
    training could not use is refused here (ValueError naming the option), before anything is
    written, and every bad value at once (:class:`Problems`)."""
    from .losses import LOSSES, check_loss, default_label_smoothing
    from .noise import check_rate

    if cfg.label_smoothing is None and cfg.loss in LOSSES:  # the loss's own (0.1 or none)
        cfg.label_smoothing = default_label_smoothing(cfg.loss)
    check_all(
        lambda: _check_names(cfg),
        lambda: check_loss(cfg.loss),
        lambda: check_rate(cfg.noise),
        *_count_checks(cfg),
        *_real_checks(cfg),
        *_schedule_checks(cfg),
        lambda: _check_device(cfg.device),
        *_target_checks(cfg, known=cfg.loss in LOSSES),
    )
    cfg.loss_spec.build()  # the loss's own checks, once its name and options passed
    return cfg


def _target_checks(cfg: Config, known: bool) -> list[Callable[[], None]]:
    """``--mixup``/``--cutmix`` only for a loss that takes probability targets
    (:func:`.losses.target_reasons`)."""
    from .losses import target_reasons

    if not known:
        return []  # refused by its name
    mixing = {name: getattr(cfg, name) for name in MIXING}
    return [_reason(r) for r in target_reasons(cfg.loss, mixing)]


def _check_names(cfg: Config) -> None:
    """The data set, its noise grouping and the model (the data set's default when not given)."""
    from .datasets import DATASETS, check_dataset
    from .models import DEFAULT_MODEL, check_model
    from .noise import GROUPINGS

    if cfg.model is None and cfg.dataset in DATASETS:
        cfg.model = DEFAULT_MODEL[cfg.dataset]
    check_all(
        lambda: check_dataset(cfg.dataset),
        lambda: cfg.model is None or check_model(cfg.model),
        lambda: _check_grouping(cfg, GROUPINGS, known=cfg.dataset in DATASETS),
        lambda: cfg.dataset not in DATASETS or _check_lookalike(cfg),
    )


def _check_lookalike(cfg: Config) -> None:
    """The embedded data's look-alike group size (:func:`.datasets.embedded.check_group_size`),
    filled in (5) when not given; refused for the other data sets, whose groups are fixed."""
    from .datasets import embedded

    if cfg.dataset != "embedded":
        if cfg.lookalike_group_size is not None:
            raise ValueError(f"lookalike_group_size is an option of the embedded data only, not "
                             f"of dataset {cfg.dataset!r}")  # fmt: skip
        return
    if cfg.lookalike_group_size is None:
        cfg.lookalike_group_size = embedded.GROUP_SIZE
    embedded.check_group_size(cfg.lookalike_group_size)


def _check_grouping(cfg: Config, groupings, known: bool) -> None:
    if cfg.noise_groups not in groupings:
        raise ValueError(
            f"unknown noise grouping {cfg.noise_groups!r}; choose from {', '.join(groupings)}"
        )
    if known and cfg.noise_groups == "superclass" and cfg.dataset not in ("cifar100", "embedded"):
        raise ValueError(f"dataset {cfg.dataset!r} has no superclasses; use consecutive groups")


def device_ok(device: str) -> bool:
    """Whether ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (not whether it exists)."""
    return re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", device) is not None


def _check_device(device: str) -> None:
    if not device_ok(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def _at_least(name: str, value, least: int) -> Callable[[], None]:
    def check():
        if value is not None and value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")

    return check


def _count_checks(cfg: Config) -> list[Callable[[], object]]:
    """The integer options: sizes >= 1, counts >= 0, seeds in [0, 2**63); the imbalance ratio."""
    positive = ("epochs", "batch_size", "eval_batch_size", "group_size", "image_size",
                "val_per_class", "val_size")  # fmt: skip
    checks = [_at_least(name, getattr(cfg, name), 1) for name in positive]
    checks += [_at_least(name, getattr(cfg, name), 0) for name in ("checkpoint_every", "workers")]
    checks.append(lambda: check_imbalance_ratio(cfg.imbalance_ratio))
    return checks + [
        _seed(name, getattr(cfg, name)) for name in SEEDS if getattr(cfg, name) is not None
    ]


#: the seed options (``noise_seed`` and ``subsample_seed`` may be None: derived from ``seed``)
SEEDS = ("seed", "data_seed", "noise_seed", "subsample_seed")


def _seed(name: str, value: int) -> Callable[[], int]:
    return lambda: check_seed(name, value)


def check_seed(name: str, value: int) -> int:
    """A seed is an integer in [0, 2**63 - 1]: torch's generators take 64 bits, and training
    adds the process's rank and the epoch to it. ValueError naming the option."""
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**63 - 1], got {value}")
    return value


def _real_checks(cfg: Config) -> list[Callable[[], None]]:
    """The real options: finite, in their range, and usable in float32 training; the loss
    options by their checks in :data:`.loss_options.OPTIONS` (each bad one a reason)."""
    checks = [_real(name, getattr(cfg, name), positive=True) for name in ("lr", "dist_timeout")]
    checks += [_real(name, getattr(cfg, name))
               for name in ("weight_decay", "momentum", "gamma", *MIXING)]  # fmt: skip
    return checks + [_reason(r) for r in loss_options.reasons(cfg.loss_spec.options)]


def _real(name: str, value: float, positive: bool = False) -> Callable[[], None]:
    def check():
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise ValueError(f"{name} must be {'>' if positive else '>='} 0, got {value}")
        if name in ("weight_decay", "momentum", *MIXING) and value > FLOAT32_MAX:
            raise ValueError(
                f"{name} must be at most {FLOAT32_MAX:.4g} (training computes in float32), "
                f"got {value:g}"
            )

    return check


def _reason(text: str) -> Callable[[], None]:
    def check():
        raise ValueError(text)

    return check


def _schedule_checks(cfg: Config) -> list[Callable[[], None]]:
    """Momentum for Nesterov, increasing milestones, and a learning rate that stays a float32
    at every epoch (lr, times gamma at each milestone)."""
    return [lambda: _check_nesterov(cfg), lambda: _check_milestones(cfg.milestones),
            lambda: _check_lr_range(cfg)]  # fmt: skip


def _check_nesterov(cfg: Config) -> None:
    if cfg.nesterov and cfg.momentum == 0:
        raise ValueError("Nesterov momentum needs momentum > 0")


def _check_milestones(milestones: list[int]) -> None:
    if sorted(milestones) != list(milestones) or any(m < 1 for m in milestones):
        raise ValueError(f"milestones must be increasing epochs >= 1, got {milestones}")


def _check_lr_range(cfg: Config) -> None:
    if not (math.isfinite(cfg.lr) and math.isfinite(cfg.gamma)):
        return  # refused by their own checks
    rate, where = cfg.lr, "lr"
    for milestone in [m for m in cfg.milestones if m < cfg.epochs]:
        if rate > FLOAT32_MAX:
            break
        rate, where = rate * cfg.gamma, f"lr * gamma from epoch {milestone + 1}"
    if rate > FLOAT32_MAX:
        raise ValueError(
            f"the learning rate overflows float32 ({FLOAT32_MAX:.4g}): {where} is {rate:g}; "
            "lower --lr or --gamma"
        )


def check_imbalance_ratio(ratio) -> float | None:
    """``None`` (no long tail) or a finite number >= 1; ValueError naming the option."""
    if ratio is None:
        return None
    if isinstance(ratio, bool) or not isinstance(ratio, int | float):
        raise ValueError(f"imbalance_ratio must be a finite number >= 1, got {ratio!r}")
    if not (math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"imbalance_ratio must be a finite number >= 1, got {ratio}")
    return float(ratio)


def lr_at(cfg: Config, epoch: int) -> float:
    """The learning rate of (0-based) ``epoch``: lr * gamma^(milestones passed)."""
    return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)


def to_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def from_saved(values: dict) -> Config:
    _check_keys(values, "the saved config")
    values = _saved_before_mixing(_saved_before_draws(_saved_before_group_size(values)))
    return Config(**{k: coerce(k, v) for k, v in values.items()})


def _saved_before_draws(values: dict) -> dict:
    """A config saved before each seed drew its own subsample (no ``subsample_seed`` key) drew
    it with ``data_seed``: pinned to that, so that the run reads (and resumes) as it trained.
    Its ``noise_seed`` was always saved as a number, which pins it already."""
    if "subsample_seed" in values:
        return values
    return {**values, "subsample_seed": values.get("data_seed", Config.data_seed)}


def _saved_before_group_size(values: dict) -> dict:
    """A config saved before ``lookalike_group_size`` existed trained the embedded data with
    its groups of 5: filled in, so that the run reads (and resumes) as it trained."""
    if "lookalike_group_size" in values or values.get("dataset", Config.dataset) != "embedded":
        return values
    from .datasets.embedded import GROUP_SIZE

    return {**values, "lookalike_group_size": GROUP_SIZE}


def _saved_before_mixing(values: dict) -> dict:
    """A config saved before ``--mixup`` existed (no ``mixup`` key) holds ``label_smoothing:
    0.1`` for every loss, used then only by the losses that register the option
    (``ce-label-smoothing``); for the others it is ``None`` (none) now, so that the run reads
    as it trained (``ce`` takes label smoothing since) and a sweep or ``--resume`` meets it
    with the same options."""
    from .losses import LOSSES, default_label_smoothing

    if "mixup" in values or values.get("label_smoothing") is None:
        return values
    loss = values.get("loss", Config.loss)
    if loss in LOSSES and default_label_smoothing(loss) is not None:
        return values
    return {**values, "label_smoothing": None}
