"""Side-by-side timing: compile first, block_until_ready, interleave contenders, report medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["time_interleaved", "compare"]


def _once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int = 7, warmup: int = 1, settle: int = 1
) -> dict[str, float]:
    """Median seconds of each zero-argument callable, run alternately in one process.

    Every callable is called ``warmup`` times first (compilation), then the contenders take turns so
    that drift in machine load hits them alike. In each turn a contender runs ``settle`` untimed calls
    before the timed one: measured on CPU, the first call after a ``lax.scan`` gradient (which frees
    hundreds of MiB of saved states) ran 1.6× slower than a steady-state call of the same function —
    most likely page faults on freshly allocated buffers — a cost of the previous contender, not of
    this one. Timed calls are therefore steady-state calls, as in a training loop.
    """
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            for _ in range(settle):
                jax.block_until_ready(fn())
            times[k].append(_once(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def compare(
    name: str,
    baseline: tuple[str, Callable[[], Any]],
    contender: tuple[str, Callable[[], Any]],
    *,
    target: float | None,
    direction: str = "<=",
    repeats: int = 7,
    **extra: Any,
) -> dict:
    """One benchmark.json entry: ratio = contender_s / baseline_s, ``met`` against ``target``.

    ``direction="<="``: the contender should take at most ``target`` × the baseline's time (e.g. 1.10);
    ``direction=">="``: speed-up, ratio reported as baseline_s / contender_s, should be ≥ target.
    """
    (bname, bfn), (cname, cfn) = baseline, contender
    med = time_interleaved({bname: bfn, cname: cfn}, repeats=repeats)
    b, c = med[bname], med[cname]
    ratio = c / b if direction == "<=" else b / c
    met = None if target is None else (ratio <= target if direction == "<=" else ratio >= target)
    entry = {"name": name, "baseline": bname, "contender": cname, "baseline_s": b, "contender_s": c,
             "ratio": ratio,
             "ratio_definition": "contender_s / baseline_s" if direction == "<=" else "baseline_s / contender_s",
             "target": target, "met": met}
    entry.update(extra)
    return entry
