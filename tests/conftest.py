"""Strict JAX settings for the whole suite (Equinox-style): implicit rank promotion is an error.

Figures are drawn at 30 dpi in tests (``experiments.plotting.DPI``): the plotting conventions they are audited
for do not depend on the resolution, the runtime does (a fifth of an analyze run at 110 dpi).

JAX's persistent compilation cache lives in ``.pytest_cache/jax-compilation-cache`` (every compile, however
short), so a second run of the suite loads executables instead of compiling them again (a computation with a
host callback is never written there: keep callbacks out of what the experiments jit). The environment
variables reach the subprocesses too (notebook kernels, CLI runs).

The device count: the tests marked ``mesh`` need 8 fake CPU devices; every other test runs on one, which is faster
(a warm mutant run 10.3–10.6 s on one against 11.4–11.7 s on eight) and keeps cache entries of its own (the device
count is part of the compilation cache key). A run whose ``-m`` expression says ``not mesh`` gets one device, any
other run eight, so a plain ``pytest`` runs everything; ``scripts/test.sh`` runs the ``mesh`` tests on 8 devices
beside the rest on one. An explicit ``JAX_NUM_CPU_DEVICES`` wins.

Garbage collection: after each test the collector runs once and what survives is frozen (``gc.freeze``), so the
automatic full collections during later tests do not walk every object the worker has cached so far (JAX's
traces and executables, models held by fixtures). Measured on ``pytest -n 0 -m "not mesh" tests/test_elbo.py
tests/test_analyze.py tests/test_blockwise.py tests/test_ssm.py``: 15.3 s of collection → 4.7 s, 135 → 131 s,
peak memory unchanged (5.09 GB both); the whole suite warm, one run each: 539 → 476 s wall. A test that checks
an object is freed creates it in the test, so it is not frozen yet.
"""

import gc
import os
from pathlib import Path

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

MESH_DEVICES = 8


def pytest_configure(config):
    """The device count (see the module docstring); set before anything initializes JAX's backend, and in the
    environment for the subprocesses."""
    if "JAX_NUM_CPU_DEVICES" not in os.environ:
        one = "not mesh" in (config.option.markexpr or "").replace("(", " ").replace(")", " ")
        os.environ["JAX_NUM_CPU_DEVICES"] = "1" if one else str(MESH_DEVICES)
    jax.config.update("jax_num_cpu_devices", int(os.environ["JAX_NUM_CPU_DEVICES"]))


@pytest.fixture(autouse=True, scope="session")
def _figures_at_low_resolution():
    from experiments import plotting
    from experiments.common import SMALLEST_DPI

    plotting.DPI = SMALLEST_DPI  # the resolution the notebooks draw at in the suite, too


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Collect what the test left behind, then freeze the survivors (see the module docstring)."""
    gc.collect()
    gc.freeze()
