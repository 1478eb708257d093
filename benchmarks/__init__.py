"""Benchmark suite: time and peak memory of the losses against ``F.cross_entropy``.

Run with ``make bench`` (quick subset) or ``make bench-full``; see ``docs/benchmarks.md``.
"""
