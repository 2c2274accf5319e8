"""Strict JAX settings for the whole suite (Equinox-style): implicit rank promotion is an error.

Figures are drawn at 30 dpi in tests (``experiments.plotting.DPI``): the plotting conventions they are audited
for do not depend on the resolution, the runtime does (a fifth of an analyze run at 110 dpi).

JAX's persistent compilation cache lives in ``.pytest_cache/jax-compilation-cache`` (every compile, however
short), so a second run of the suite — and each mutant run of the mutant kit, which clears JAX's in-memory
caches but recompiles only what its patch changed — loads executables instead of compiling them again. The
environment variables reach the subprocesses too (notebook kernels, CLI runs).
"""

import os
from pathlib import Path

# Eight fake CPU devices for the sharding tests; must be set before JAX initializes its backend.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True, scope="session")
def _figures_at_low_resolution():
    from experiments import plotting

    plotting.DPI = 30
