"""Theorem 8's R-repeat sweep: vmapped + jitted (lax.map in chunks) vs a Python loop of jitted trials.

Both compute the same per-repeat numbers (tests/test_rademacher.py checks values and gradients); the
ratio is the speed-up of batching the repeats (target ≥ 1.0: batching must not be slower).
"""

from __future__ import annotations

import jax

from experiments.benchmarks.timing import compare
from tvvar.theory.transformer import rademacher as rd


def run(quick: bool) -> list[dict]:
    M, R, steps = (1000, 32, 50) if quick else (10000, 64, 100)
    teacher = rd.LinearSoftmaxTeacher.create(jax.random.key(0), 8, 4, 6.0)
    X_fresh = teacher.sample_x(jax.random.key(1), 2**14)
    kw = dict(M=M, R=R, Lam=8.0, steps=steps, n_sigma=8)

    def loop():
        return rd.linear_sweep_reference(jax.random.key(2), teacher, X_fresh, **kw)

    def fast():
        return rd.linear_sweep(jax.random.key(2), teacher, X_fresh, **kw)

    return [compare(f"rademacher sweep M={M} R={R}", ("python loop of jitted trials", loop),
                    ("vmapped+jitted sweep", fast), target=1.0, direction=">=", repeats=3, M=M, R=R, steps=steps)]
