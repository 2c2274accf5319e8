"""Benchmarks: one module per concern, each with ``run(quick: bool) -> list[dict]``.

``python -m experiments.benchmark`` discovers every module here (no registry to edit); each entry has
the shape of DESIGN.md: {"name", "baseline", "contender", "baseline_s", "contender_s", "ratio",
"target", "met"} plus optional extra fields (e.g. memory). Use :func:`experiments.benchmarks.timing.compare`.
"""
