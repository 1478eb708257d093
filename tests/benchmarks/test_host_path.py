"""The CUDA code path's host-side harness (``benchmarks/host_path.py``, issue #20): what it
counts is the launch structure of a forward+backward, which does not depend on the machine —
its timings are published, never asserted."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")  # the stubs stand in for the triton.jit kernels, found by name

from benchmarks import host_path  # noqa: E402


def test_one_program_per_row_launches_four_kernels():
    """At n = 1000 (one program per row on an H200): the fill of the zeroed stats (the
    counter of the kernel's last program), the forward kernel, autograd's seed and the backward
    kernel — no reduction or check kernel (the kernel asserts the targets), at most the 8 of
    issue #20."""
    result = host_path.measure(256, 1000, 5)["kernels"]
    assert result["smooth_topk_triton"] == ["forward_row_kernel", "backward_kernel"]
    assert sorted(result["smooth_topk_aten"]) == ["ones_like", "zeros"]
    assert result["smooth_topk"] <= 8


def test_split_rows_launch_four_forward_kernels():
    """At n = 10^4, batch 256, the modelled H200 splits the rows: the segments' top-k, the
    row's, the segments' polynomials and the finish, then one backward kernel."""
    result = host_path.measure(256, 10_000, 5)["kernels"]
    assert result["smooth_topk_triton"] == [
        "top_segment_kernel", "select_kernel", "rest_segment_kernel", "finish_kernel",
        "backward_kernel",
    ]  # fmt: skip
    assert result["smooth_topk"] <= 8


def test_the_stubs_are_undone():
    """After a measurement the real kernels, the backend checks and fresh plans and launches
    are back."""
    from smoothtopk import smooth_topk
    from smoothtopk.backends import triton as triton_backend

    kernels, unavailable = triton_backend._kernels, triton_backend.unavailable
    host_path.host_time(5, seconds=0.01, rounds=1)
    assert triton_backend._kernels is kernels and triton_backend.unavailable is unavailable
    assert not smooth_topk._PLANS and not triton_backend._SPLITS and not triton_backend._LAUNCHES
