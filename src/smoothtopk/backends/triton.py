r"""The Triton backend of the smooth top-k SVM loss (CUDA; CPU tensors in Triton's interpreter).

Same algorithm as the fused CPU kernel (``docs/algorithm.md``), float64 inside: per row the k
largest non-target scores ``T`` (anchor ``a`` their smallest), ``u_j = e^{(s_j - a)/(k tau)}``
on the rest, ``e_b(u)`` by the subtraction-free products ``(1 + u_j X)`` in lanes, then
``sigma_b(w)``, ``A``, ``B``, the loss ``tau softplus(z)`` and the gradient factors. Rows are
streamed in chunks (any ``n``); with few rows, several programs share a row (per-segment top-k
candidates and polynomials in a small scratch buffer, then merged). ``weight``, per-class
margins, ``ignore_index`` and the reduction are folded in: each direction is one operator,
``torch.ops.smoothtopk.triton_forward`` / ``triton_backward``, defined with its fake by
:mod:`smoothtopk.backends._abi` and implemented here for CUDA (and CPU, for the interpreter)
tensors, whether or not Triton is installed; Triton itself is imported on first use.

With ``TRITON_INTERPRET=1`` in the environment, CPU tensors run the same kernels in Triton's
interpreter (slow; for tests). The backend contract: ``NAME``, :func:`unavailable`,
:func:`forward`, :func:`backward`, and :func:`self_check`, which ``auto`` calls.

**Self-check.** Until the kernel has been measured on GPU hardware, ``auto`` does not trust it
blindly: the first call of each kind (device, dtype, ``k``, ``n``, programs per row, weight,
per-class margins, reduction) also runs the kernel and the PyTorch path on the call's first
:data:`PROBE_ROWS` rows and compares loss and gradient (one host sync, once per kind). On
disagreement one warning says so and ``auto`` takes the PyTorch path for that kind;
``SMOOTHTOPK_BACKEND=triton`` skips the check. A ``torch.compile`` trace cannot run it: a kind
not yet checked is compiled on the PyTorch path (call the loss once eagerly before compiling).

Example:
    >>> import torch
    >>> from smoothtopk.backends import triton
    >>> triton.unavailable(torch.zeros(2, 10, dtype=torch.float64), 3) is not None
    True
"""

import importlib.metadata
import importlib.util
import math
import os
import sys
import warnings

import torch

from .._convention import working_dtype
from .._validation import check_target_range, user_stacklevel
from . import _abi, every_class, pytorch

NAME = "triton"
#: the forward kernels assert an out-of-range target on the device (as F.cross_entropy's
#: kernels do; CPU tensors, the interpreter's, are checked on the host before the launch): no
#: separate check kernels per call
CHECKS_TARGETS = True
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_K = 32
REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}


#: read once at import: ``find_spec`` inside a ``torch.compile`` trace breaks the graph (torch 2.11)
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
#: the kernels use ``tl.gather`` and tuples inside kernels (Triton 3.2)
MIN_TRITON = (3, 2)


def _installed_version() -> str | None:
    """The installed Triton's version, from its distribution's metadata (no import of Triton);
    None when not installed or not found under a known distribution name."""
    for distribution in ("triton", "pytorch-triton", "triton-windows"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _release(version: str) -> tuple[int, ...]:
    """``(3, 2)`` of ``"3.2.0+git1234"``: the leading numeric fields.

    Example:
        >>> _release("3.2.0+git1234"), _release("3.10.1"), _release("nightly")
        ((3, 2, 0), (3, 10, 1), ())
    """
    fields = []
    for part in version.split("+")[0].split("."):
        if not part.isdigit():
            break
        fields.append(int(part))
    return tuple(fields)


TRITON_VERSION = _installed_version() if TRITON_INSTALLED else None


def _interpreting() -> bool:
    """``TRITON_INTERPRET=1``, read when Triton is first imported (in practice at process start:
    ``torch._dynamo`` imports Triton): its own jit functions (``tl.sum``, ...) are then
    interpreted, and kernels run on CPU tensors."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False
    language = sys.modules.get("triton.language")
    return language is None or type(language.sum).__name__ == "InterpretedFunction"


def unavailable(scores: torch.Tensor, k: int) -> str | None:
    """None if this backend computes ``scores`` (``(M, n)``) with this ``k``, else why not."""
    if scores.dtype not in DTYPES:
        return f"the Triton kernel takes float32, float16 or bfloat16 scores, not {scores.dtype}"
    if not 1 <= k <= MAX_K:
        return f"the Triton kernel takes 1 <= k <= {MAX_K}, not k={k}"
    classes = scores.shape[-1]
    if classes >= 2**31 or not _abi.fits(classes, k):
        return f"the Triton kernel's float64 sums could overflow at n={classes}, k={k}"
    if not TRITON_INSTALLED:
        return "triton is not installed"
    if TRITON_VERSION is not None and _release(TRITON_VERSION) < MIN_TRITON:
        needed = ".".join(map(str, MIN_TRITON))
        return f"the Triton kernel needs triton >= {needed}; found triton {TRITON_VERSION}"
    if scores.device.type == "cpu":
        if _interpreting():
            return None
        return "CPU tensors run the Triton kernel only with TRITON_INTERPRET=1 set at start-up"
    if scores.device.type != "cuda":
        return f"the Triton kernel runs on CUDA devices, not {scores.device.type}"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "TRITON_INTERPRET=1: Triton interprets kernels (CPU tensors only)"
    return None


#: rows of a call that the self-check computes on both paths
PROBE_ROWS = 8
#: relative tolerance of the self-check per scores dtype (float32: 10x the documented bounds)
PROBE_TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}
#: the self-check's verdicts in this process: kind -> None (agreed) or the disagreement
_CHECKED: dict[tuple, str | None] = {}


def self_check(scores, k, target, weight, ignore_index, tau, alpha, reduction) -> str | None:
    """None if the kernel agreed with the PyTorch path on this kind of call (checking it on the
    first call of the kind); else why ``auto`` should not use it. Arguments as :func:`forward`."""
    margins = isinstance(alpha, torch.Tensor)
    kind = (scores.device, scores.dtype, k, scores.shape[1], plan_splits(scores, k))
    kind += (weight is not None, margins, reduction)
    return _verdict(
        kind, lambda: _disagreement(scores, k, target, weight, ignore_index, tau, alpha, reduction)
    )


def self_check_expected(scores, k, beta, tau, alpha) -> str | None:
    """:func:`self_check` for the every-class kernel (probability targets, label smoothing):
    its loss and gradient on the call's first rows against the PyTorch operations, once per
    kind (device, dtype, ``k``, ``n``, per-class margins). Arguments as :func:`expected`."""
    kind = ("every class", scores.device, scores.dtype, k, scores.shape[1])
    kind += (isinstance(alpha, torch.Tensor),)
    return _verdict(kind, lambda: _expected_disagreement(scores, k, beta, tau, alpha))


def _verdict(kind: tuple, disagreement) -> str | None:
    """The self-check's verdict on ``kind``: ``disagreement()`` the first time (outside a
    trace), warned about once when it is not None."""
    if kind not in _CHECKED:
        if torch.compiler.is_compiling():
            return (
                "not yet checked against the PyTorch path for this kind of call, and a "
                "torch.compile trace cannot check it: call the loss once before compiling"
            )
        _CHECKED[kind] = disagreement()
        if _CHECKED[kind] is not None:
            warnings.warn(
                f"smoothtopk: {_CHECKED[kind]}; auto uses the PyTorch path for such calls "
                "(SMOOTHTOPK_BACKEND=triton uses the kernel anyway). Please report it.",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
    return _CHECKED[kind]


def _disagreement(scores, k, target, weight, ignore_index, tau, alpha, reduction) -> str | None:
    """Loss and gradient of the call's first rows by the kernel (with the call's programs per
    row) and by the PyTorch path: None if they agree, else the largest difference."""
    splits = plan_splits(scores, k)
    x, t = scores[:PROBE_ROWS].detach(), target[:PROBE_ROWS]
    with torch.no_grad():
        out, saved = forward(x, t, weight, ignore_index, k, tau, alpha, reduction, splits)
        grad_out = torch.ones_like(out)
        grad = backward(grad_out, x, t, weight, ignore_index, saved, k, tau, alpha, reduction)
        ref, ref_saved = pytorch.forward(x, t, weight, ignore_index, k, tau, alpha, reduction)
        ref_grad = pytorch.backward(
            grad_out, x, t, weight, ignore_index, ref_saved, k, tau, alpha, reduction
        )
    kind = f"k={k}, n={scores.shape[1]}, {scores.dtype}, {splits} program(s) per row"
    return _compare(scores, (out, grad), (ref, ref_grad), kind)


def _expected_disagreement(scores, k, beta, tau, alpha) -> str | None:
    """:func:`_disagreement` for the every-class kernel: loss and gradient of the first rows."""
    x, b = scores[:PROBE_ROWS].detach(), beta[:PROBE_ROWS].detach()
    alpha = alpha.detach() if isinstance(alpha, torch.Tensor) else alpha
    margins = alpha if isinstance(alpha, torch.Tensor) else None
    with torch.no_grad():
        out, grad = triton_every_class(x, b, k, tau, 0.0 if margins is not None else alpha,
                                       margins, True)  # fmt: skip
    with torch.enable_grad():
        leaf = x.clone().requires_grad_()
        ref = every_class.expected(leaf, b, k, tau, alpha)
        (ref_grad,) = torch.autograd.grad(ref.sum(), leaf)
    kind = f"probability targets, k={k}, n={scores.shape[1]}, {scores.dtype}"
    return _compare(scores, (out, grad), (ref.detach(), ref_grad), kind)


def _compare(scores, ours, reference, kind: str) -> str | None:
    """None if loss and gradient agree within :data:`PROBE_TOLERANCE`, else the message."""
    tolerance = PROBE_TOLERANCE[scores.dtype]
    errors = torch.stack([_error(ours[0], reference[0]), _error(ours[1], reference[1])])
    errors = errors.tolist()  # the one sync
    if max(errors) <= tolerance:
        return None
    return (
        f"the Triton kernel disagreed with the PyTorch path on {scores.device} ({kind}): "
        f"relative differences {errors[0]:.1e} (loss) and {errors[1]:.1e} (gradient)"
    )


def _error(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Largest difference relative to the reference's scale; NaN where one is NaN and the other
    is not counts as infinite.

    Example:
        >>> nan = float("nan")
        >>> _error(torch.tensor([1.0, 2.0, nan]), torch.tensor([1.0, 3.0, nan])).item()
        0.25
        >>> _error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, nan])).item()
        inf
    """
    value, reference = value.double(), reference.double()
    mismatch = torch.isnan(value) != torch.isnan(reference)
    difference = (value - reference).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).abs()
    scale = 1.0 + reference.nan_to_num(nan=0.0).abs().max()
    error = difference.max() / scale if difference.numel() else difference.new_zeros(())
    return torch.where(mismatch.any(), torch.inf, error)


def _elsewhere(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA device other than the current one. Triton launches on the
    current CUDA device, which need not be the scores' (a loss on ``cuda:1`` while ``cuda:0``
    is current faulted): the launchers call themselves again inside ``torch.cuda.device`` then.
    The common case, the current device, switches nothing (``torch.cuda.device`` costs a launch
    about 2 µs of host time, issue #20)."""
    return device.type == "cuda" and device.index != torch._C._cuda_getDevice()


_KERNELS = []


def _kernels():
    """The module of ``triton.jit`` kernels, imported on first use (then kept: the import
    system's lookup costs about a microsecond per call)."""
    if not _KERNELS:
        _KERNELS.append(importlib.import_module("smoothtopk.backends.triton_jit"))
    return _KERNELS[0]


def _every_class_kernels():
    """The module of the every-class ``triton.jit`` kernel, imported on first use."""
    return importlib.import_module("smoothtopk.backends.triton_every_class_jit")


def _cdiv(a: int, b: int) -> int:
    return -(a // -b)


def _pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _padded_k(k: int) -> int:
    """Slots of the anchor vectors: ``k`` anchors plus one lane for ``sigma(w)``."""
    return _pow2(k + 1)


def block_size(classes: int, k: int) -> int:
    """Classes per chunk: ``k`` float64 lane coefficients per class stay in registers; at most
    :func:`max_block`."""
    block = min(1024, max(128, _pow2(4096 // k + 1) // 2), max_block())
    return min(block, max(16, _pow2(classes)))


MAX_BLOCK_ENV = "SMOOTHTOPK_TRITON_MAX_BLOCK"


def max_block() -> int:
    """``SMOOTHTOPK_TRITON_MAX_BLOCK``: at most this many classes per chunk, a power of two in
    ``[16, 1024]`` (default 1024: :func:`block_size`'s rule alone). Smaller chunks hold fewer
    registers, so more programs share a multiprocessor, with fewer scores in flight each: for
    weighing the two on a GPU (docs/benchmarks.md). Read when a kind of call is set up.

    Example:
        >>> max_block()  # unset
        1024
    """
    raw = os.environ.get(MAX_BLOCK_ENV, "1024")
    value = int(raw) if raw.strip().isdigit() else 0
    if not (16 <= value <= 1024 and value & (value - 1) == 0):
        raise ValueError(f"{MAX_BLOCK_ENV} must be a power of two in [16, 1024], got {raw!r}")
    return value


_PROCESSORS: dict[int, int] = {}


def _device_processors(scores: torch.Tensor) -> int:
    """The multiprocessors of the scores' CUDA device, asked once per device (a plain dict:
    Dynamo warns on ``lru_cache``); 0 off CUDA (the interpreter: one program per row)."""
    if scores.device.type != "cuda":
        return 0
    index = scores.device.index or 0
    if index not in _PROCESSORS:
        _PROCESSORS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _PROCESSORS[index]


def plan_splits(scores: torch.Tensor, k: int) -> int:
    """Programs per row: enough to give every multiprocessor two, segments of >= 4 chunks."""
    rows, classes = scores.shape
    processors = _device_processors(scores)
    if processors == 0 or rows == 0:
        return 1
    wanted = _cdiv(2 * processors, rows)
    return max(1, min(wanted, classes // (4 * block_size(classes, k)), 256))


#: programs per row by ``(shape, k, device)``, and launches by kind of call (:class:`_Launch`),
#: both cleared when full (shapes that vary call by call)
_SPLITS: dict[tuple, int] = {}
_MAX_KINDS = 1024


def _planned_splits(scores: torch.Tensor, k: int) -> int:
    """:func:`plan_splits`, once per shape and device."""
    key = (scores.shape, k, scores.device)
    found = _SPLITS.get(key)
    if found is None:
        if len(_SPLITS) >= _MAX_KINDS:
            _SPLITS.clear()
        found = _SPLITS[key] = plan_splits(scores, k)
    return found


def class_tile(k: int) -> int:
    """Classes per block of the every-class kernel's class passes: a ``(tile, KP)`` float64
    tile of powers ``(-u_c)^m`` stays near 2048 numbers."""
    return max(16, min(256, 1024 // _padded_k(k)))


def _segment(classes: int, block: int, splits: int) -> tuple[int, int]:
    """``(segment length, splits)``: whole chunks per segment, no empty segment."""
    seg = _cdiv(_cdiv(classes, splits), block) * block
    return seg, _cdiv(classes, seg)


def _scalars(k: int, tau: float, alpha: float) -> dict:
    return dict(tau=float(tau), alpha=float(alpha), scale=1.0 / (k * float(tau)))


def wide(k: int, tau: float) -> bool:
    """Whether the streaming passes form ``u_j = e^{(s_j - a) / (k tau)}`` in float64: when
    ``1 / (k tau)`` is not a normal float32 at least ``MIN_FLOAT_SCALE`` (the CPU kernel's rule,
    ``exponent_in_double``); otherwise in float32, as the CPU kernel does for float32 scores."""
    scale = 1.0 / (k * float(tau))
    return not _abi.MIN_FLOAT_SCALE <= scale <= _abi.MAX_FLOAT


#: launch options of the kernels that check targets: ``debug`` compiles their device assertion
#: (``tl.device_assert``); ``sanitize_overflow`` off keeps it from adding overflow checks to every
#: 32-bit integer operation (``triton_jit``'s docstring)
ASSERTING = dict(debug=True, sanitize_overflow=False)


def _checks_on_host(device: torch.device) -> bool:
    """Whether a call's targets are checked on the host before the launch (a ValueError, as
    every CPU path's): on CPU tensors, which only Triton's interpreter runs and which ignores
    a launch's ``debug`` (so never asserts); on CUDA the kernel asserts."""
    return device.type == "cpu"


#: rows up to which the forward kernel's last program also sums the call's losses and weights
#: (``triton_jit``'s docstring): one program reads ``2 M`` numbers, a short serial tail; beyond,
#: torch sums them after the kernel (a few kernels more, in calls that are long anyway)
KERNEL_SUM_ROWS = 2048


class _Launch:
    """The launches of one kind of call, set up once (issue #20: the launcher's arithmetic,
    the kernels' scalar arguments and constexprs cost several µs per call otherwise): rows,
    classes, ``k``, ``tau``, ``alpha``, the reduction, whether a weight and per-class margins
    come, ``ignore_index``, the programs per row and the device (of the scores, given as
    ``scores``). :meth:`forward` then allocates and launches; :meth:`backward` allocates and
    launches. It is also the contract's prepared call (:func:`prepare`: ``forward(scores,
    target, weight) -> (out, saved)``, ``backward(grad_out, scores, target, saved)``,
    ``options``), called without the operators."""

    __slots__ = (
        "k", "reduction", "shape", "sum_after", "stats_alloc", "out_shape", "stats_shape",
        "forward_tail", "forward_flags", "backward_tail", "backward_flags", "split", "options",
        "host_check", "kernels", "workspace", "split_flags", "empty", "grids",
    )  # fmt: skip

    def __init__(self, scores, k, tau, alpha, reduction, flags, ignore_index, splits):
        (rows, classes), block = scores.shape, block_size(scores.shape[1], k)
        self.host_check = _checks_on_host(scores.device)
        self.kernels = _kernels()
        seg, splits = _segment(classes, block, max(1, splits))
        kp, code, scale = _padded_k(k), REDUCTIONS[reduction], 1.0 / (k * float(tau))
        self.k, self.reduction, self.shape = k, reduction, (block, kp, seg, splits)
        self.sum_after = reduction != "none" and rows > KERNEL_SUM_ROWS
        sums = reduction != "none" and not self.sum_after  # the kernel's last program sums
        self.stats_alloc = torch.zeros if sums else torch.empty  # zeroed: its counter
        self.out_shape = (rows,) if reduction == "none" else ()
        self.stats_shape = _abi.triton_stats_shape(rows, k)
        self.forward_tail = (
            classes, ignore_index, float(tau), float(alpha), scale, code, int(sums)
        )  # fmt: skip
        has_weight, has_alpha = flags
        self.forward_flags = dict(HAS_WEIGHT=has_weight, HAS_ALPHA=has_alpha, K=k, KP=kp,
                                  **ASSERTING)  # fmt: skip
        self.backward_tail = (classes, seg, ignore_index, scale)
        common = dict(K=k, KP=kp, BLOCK=block, WIDE=wide(k, tau))
        self.backward_flags = dict(common, REDUCTION=code)
        self.split = splits > 1
        if self.split:
            self._plan_split(rows, common)
        else:
            self.forward_flags.update(common, LOG=block.bit_length() - 1)
        self.options = (ignore_index, k, tau, alpha, reduction)
        self.grids = ((rows,), (rows, splits))  # the forward row kernel's, the backward's
        self.empty = rows == 0  # nothing to launch

    def _plan_split(self, rows, common):
        """The split rows' workspace and the constexprs of their four forward kernels."""
        block, kp, _, splits = self.shape
        self.workspace = split_workspace(rows, splits, kp)
        shapes, sp = dict(K=self.k, KP=kp), _pow2(splits)
        self.split_flags = (
            dict(shapes, BLOCK=block),
            dict(shapes, CANDIDATES=_pow2(splits * kp)),
            dict(common, LOG=block.bit_length() - 1),
            dict(self.forward_flags, SP=sp, LOG=sp.bit_length() - 1),
        )

    def forward(self, scores, target, weight, margins=None):
        """``(out, stats)``; ``margins``: per-class margins, or None. Every test on the way to
        the launches is of the kind's set-up (each branch and call costs a training step's
        host time, issue #20) but for the scores' device."""
        if scores.is_cuda and _elsewhere(scores.device):
            with torch.cuda.device(scores.device):
                return self.forward(scores, target, weight, margins)
        scores, target = scores.contiguous(), target.contiguous()
        weight = scores if weight is None else weight.contiguous()
        margins = scores if margins is None else margins.contiguous()
        out = torch.empty(self.out_shape, dtype=torch.float32, device=scores.device)
        stats = self.stats_alloc(self.stats_shape, dtype=torch.float64, device=scores.device)
        if self.empty:  # no launch: F.cross_entropy's sum (0) and mean (0 / 0)
            stats.zero_()
            return out.fill_(math.nan if self.reduction == "mean" else 0.0), stats
        if self.host_check:
            check_target_range(target, *self.forward_tail[:2])
        if self.split:
            self._forward_split(scores, target, weight, margins, (out, stats))
        else:
            self.kernels.forward_row_kernel[self.grids[0]](
                scores, target, weight, margins, out, stats, *self.forward_tail,
                **self.forward_flags,
            )  # fmt: skip
        if self.sum_after:
            _sum_rows(out, stats, self.k, self.reduction)
        return out, stats

    def _forward_split(self, scores, target, weight, margins, ends):
        """Split rows: the segments' top-k, the row's, the segments' polynomials, the finish."""
        rows, (_, _, seg, splits), kern = scores.shape[0], self.shape, self.kernels
        classes, ignore_index, *tail = self.forward_tail  # tail: tau, alpha, scale, the end's
        top, select, rest, finish = self.split_flags
        work = torch.empty(self.workspace, dtype=torch.float64, device=scores.device)
        kern.top_segment_kernel[(rows, splits)](scores, target, work, classes, seg, splits, **top)
        kern.select_kernel[(rows,)](work, splits, **select)
        kern.rest_segment_kernel[(rows, splits)](
            scores, target, work, classes, seg, splits, tail[2], **rest
        )
        kern.finish_kernel[(rows,)](
            scores, target, weight, margins, work, *ends, classes, splits, ignore_index, *tail,
            **finish,
        )  # fmt: skip

    def backward(self, grad_out, scores, target, stats):
        """``dOut/dscores`` in the scores' dtype."""
        if scores.is_cuda and _elsewhere(scores.device):
            with torch.cuda.device(scores.device):
                return self.backward(grad_out, scores, target, stats)
        scores = scores.contiguous()
        grad = torch.empty_like(scores)  # contiguous: scores are
        if not self.empty:
            self.kernels.backward_kernel[self.grids[1]](
                grad_out.contiguous(), scores, target.contiguous(), stats, grad,
                *self.backward_tail, **self.backward_flags,
            )  # fmt: skip
        return grad


def split_workspace(rows: int, splits: int, kp: int) -> int:
    """Float64 elements of the split rows' one workspace (``triton_jit._split_buffers``' layout:
    the segments' float64 polynomials, then float32 candidates and int32 indices and counts).

    Example:
        >>> split_workspace(rows=2, splits=3, kp=8)  # 48 + (64 float32 + 78 int32) / 2
        119
    """
    candidates = rows * splits * kp
    values = candidates + rows * kp
    index = values + rows * (2 * splits + 1)
    return candidates + _cdiv(values + index, 2)


_LAUNCHES: dict[tuple, _Launch] = {}  # the operators' (prepared calls hold their own)


def _launch(scores, k, tau, alpha, reduction, flags, ignore_index, splits) -> _Launch:
    """The :class:`_Launch` of this kind of call, set up on its first call."""
    key = (scores.shape, scores.device, k, tau, alpha, reduction, flags, ignore_index, splits)
    found = _LAUNCHES.get(key)
    if found is None:
        if len(_LAUNCHES) >= _MAX_KINDS:
            _LAUNCHES.clear()
        options = (k, tau, alpha, reduction, flags, ignore_index, splits)
        found = _LAUNCHES[key] = _Launch(scores, *options)
    return found


def _triton_forward(
    scores, target, weight, ignore_index, k, tau, alpha, reduction, alpha_per_class, splits
):
    """``(out, stats)``; ``stats`` ``(M + 1, 4 + 3k)`` float64 (the layout of ``triton_jit``:
    the shared one, the row's weighted loss and weight and its anchors' classes, and the total
    weight in the last row); row ``i``'s margin is ``alpha_per_class[t_i]`` when given, else
    ``alpha``.

    The kernels write every entry of their outputs, so they are allocated, not filled, but for
    the zeroed ``stats`` of a call whose last program sums (its counter); the kernel asserts
    the targets on the device as F.cross_entropy's kernels do (``triton_jit``), so that besides
    the Triton launches a call runs at most one fill and no other operator (issue #20: in a
    training step each small ATen operator costs the host about 3 us). The reductions are
    F.cross_entropy's (as ``_convention.reduce``): the mean is the float64 sum of weighted
    losses over the float64 total weight, rounded once to float32. Shape: scores ``(M, n)``,
    target ``(M,)``, weight and alpha_per_class ``(n,)``; out ``(M,)`` or ``()``.
    """
    flags = (weight is not None, alpha_per_class is not None)
    launch = _launch(scores, k, tau, alpha, reduction, flags, ignore_index, splits)
    return launch.forward(scores, target, weight, alpha_per_class)


def _sum_rows(out, stats, k, reduction) -> None:
    """The reduction of many rows, after the kernel: the total weight into stats' last row, the
    sum or the mean into ``out`` (one float32 rounding)."""
    losses = _abi.stats_width(k)  # the column of the weighted losses, then the weights'
    sums = stats[:-1, losses : losses + 2].sum(0)
    stats[-1, 0] = sums[1]
    if reduction == "mean":
        torch.div(sums[0], sums[1], out=out)
    else:
        out.copy_(sums[0])


def _triton_backward(grad_out, scores, target, stats, ignore_index, k, tau, reduction, splits):
    """``dOut/dscores`` in the scores' dtype; ignored rows exactly 0. Shape: ``(M, n)``."""
    launch = _launch(scores, k, tau, 0.0, reduction, (False, False), ignore_index, splits)
    return launch.backward(grad_out, scores, target, stats)


def _triton_every_class(scores, beta, k, tau, alpha, alpha_per_class, with_grad):
    """``(out (M,), grad (M, n) or (0,))``: ``sum_c beta_ic L(s_i, c)`` per row (float32; float64
    for float64 scores) and, with ``with_grad``, its gradient in the scores' dtype; class ``c``'s
    margin is ``alpha_per_class[c]`` when given, else ``alpha``. One program per row
    (``triton_every_class_jit``)."""
    if scores.dim() != 2 or beta.shape != scores.shape:
        raise RuntimeError("smoothtopk: scores and beta must be (rows, classes)")
    if _elsewhere(scores.device):
        with torch.cuda.device(scores.device):
            return _triton_every_class(scores, beta, k, tau, alpha, alpha_per_class, with_grad)
    rows, classes = scores.shape
    if not 1 <= k < classes:
        raise RuntimeError("smoothtopk: need 1 <= k < classes")
    scores, beta = scores.contiguous(), beta.contiguous()
    out = scores.new_empty(rows, dtype=working_dtype(scores.dtype))
    grad = torch.empty_like(scores, memory_format=torch.contiguous_format)
    grad = grad if with_grad else scores.new_empty(0)
    if rows == 0:
        return out, grad
    has_alpha = alpha_per_class is not None
    margins = alpha_per_class.to(torch.float64).contiguous() if has_alpha else scores
    exp_margins = torch.exp(margins / float(tau)) if has_alpha else scores
    block = block_size(classes, k)
    _every_class_kernels().every_class_kernel[(rows,)](
        scores,
        beta,
        margins,
        exp_margins,
        out,
        grad if with_grad else scores,
        classes,
        HAS_ALPHA=has_alpha,
        WITH_GRAD=with_grad,
        K=k,
        KP=_padded_k(k),
        BLOCK=block,
        LOG=block.bit_length() - 1,
        TILE=class_tile(k),
        **_scalars(k, tau, 0.0 if has_alpha else alpha),
    )
    return out, grad


# The implementations of the operators of _abi, for CUDA tensors (and CPU tensors, which only
# the interpreter runs; unavailable() keeps every other CPU call away).
torch.library.impl("smoothtopk::triton_forward", ("cuda", "cpu"), _triton_forward)
torch.library.impl("smoothtopk::triton_backward", ("cuda", "cpu"), _triton_backward)
triton_forward = torch.ops.smoothtopk.triton_forward.default
triton_backward = torch.ops.smoothtopk.triton_backward.default
torch.library.impl("smoothtopk::triton_every_class", ("cuda", "cpu"), _triton_every_class)
triton_every_class = torch.ops.smoothtopk.triton_every_class.default


def forward(scores, target, weight, ignore_index, k, tau, alpha, reduction, splits=None):
    """The contract's forward: ``(out, saved)``, one operator call (see module docstring);
    ``splits``: programs per row (default :func:`plan_splits`)."""
    splits = _planned_splits(scores, k) if splits is None else splits
    margins = alpha if isinstance(alpha, torch.Tensor) else None  # read as alpha[t_i]
    alpha = 0.0 if margins is not None else alpha
    op = _triton_forward if _abi.direct(scores) else triton_forward
    out, stats = op(scores, target, weight, ignore_index, k, tau, alpha, reduction, margins, splits)
    return out, (stats,)


def backward(
    grad_out, scores, target, weight, ignore_index, saved, k, tau, alpha, reduction, splits=None
):
    """The contract's backward: ``dOut/dscores``, shape ``(M, n)``, the scores' dtype."""
    (stats,) = saved
    splits = _planned_splits(scores, k) if splits is None else splits
    op = _triton_backward if _abi.direct(scores) else triton_backward
    return op(grad_out, scores, target, stats, ignore_index, k, tau, reduction, splits)


def prepare(scores, k, tau, alpha, weight, ignore_index, reduction) -> _Launch:
    """The contract's optional ``prepare``: this kind of eager call (the shape, dtype and device
    of ``scores``, a float ``alpha``, a weight or not, the options) set up once, its launches'
    arguments computed (:class:`_Launch`)."""
    flags = (weight is not None, False)
    splits = plan_splits(scores, k)
    return _Launch(scores, k, tau, alpha, reduction, flags, ignore_index, splits)


def expected(scores, beta, k, tau, alpha):
    """``sum_c beta_{ic} L(s_i, c)`` per row, ``(M,)`` float32: probability targets and label
    smoothing (:func:`smoothtopk.backends.every_class.expected`) in one kernel launch, which
    also forms the gradient when autograd needs it (:func:`every_class.fused_expected`)."""
    return every_class.fused_expected("triton_every_class", scores, beta, k, tau, alpha)
