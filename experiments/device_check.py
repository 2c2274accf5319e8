"""GPU/TPU readiness check (issue 17, item 8): one prepared run, one summary table.

    python -m experiments.device_check [--quick] [--out DIR]      (scripts/device_check.sh wraps it)

Rows (each a dict ``{"check", "measured", "target", "relation", "passed", "skipped", "detail"}``):

(a) cuDNN attention (``implementation="cudnn"``, bfloat16) against the einsum path in float32 on the same
    bf16-rounded weights and inputs, forward and backward: max |difference| / max |reference| ≤ 2e-2
    (bf16 has an 8-bit mantissa, 2^-8 ≈ 4e-3 per rounding; a few roundings through softmax and two matmuls).
(b) model-FLOPs utilisation of a forward+backward step of a ~350M-parameter attention model (24 layers,
    D 1024, H 16, K 64, V 32768) at T = 2048 in bf16: :func:`experiments.benchmarks.peers.step_flops` over
    the step time, against the device's bf16 peak (:data:`PEAK_BF16`) and a bf16 matmul rate measured in the
    same run (8192³). Target ≥ 35 % of peak.
(c) chunked SSD vs ``lax.scan`` forward+backward on the device (reported; speed-up ≥ 1 expected).
(d) the sharded training step (``tvvar.sharding``: parameters born on their shards, batch over ``data``)
    on the real device mesh: its loss equals the unsharded step's (relative 1e-5 in float32).

On a machine without a GPU the cuDNN row is skipped with its reason and the others run at ``--quick`` sizes,
which is what the tests do (tests/test_device_check.py), so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.benchmarks.peers import mfu, step_flops
from experiments.benchmarks.timing import time_interleaved

# dense bf16 peak FLOP/s by device_kind substring (vendor data sheets, without sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
             "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v4": 275e12}
CUDNN_TOLERANCE = 2e-2
MFU_TARGET = 0.35
SHARDED_RTOL = 1e-5


def peak_bf16(device_kind: str) -> float | None:
    """The data-sheet bf16 peak for ``device_kind`` (longest matching name), None when unknown."""
    hits = [k for k in PEAK_BF16 if k.lower() in device_kind.lower()]
    return PEAK_BF16[max(hits, key=len)] if hits else None


def row(check: str, measured: float | None, target: float | None, relation: str, detail: str = "",
        skipped: str | None = None) -> dict:
    """One summary row; ``passed`` from the relation (``<=`` or ``>=``), None when skipped or no target."""
    if relation not in ("<=", ">=", "report"):
        raise ValueError(f"relation must be '<=', '>=' or 'report', got {relation!r}")
    if skipped is not None or measured is None or target is None or relation == "report":
        passed = None
    elif not math.isfinite(measured):
        passed = False
    else:
        passed = measured <= target if relation == "<=" else measured >= target
    return {"check": check, "measured": measured, "target": target, "relation": relation,
            "passed": passed, "skipped": skipped, "detail": detail}


def summary_table(rows: list[dict]) -> str:
    """The Markdown table the script prints (and the note quotes)."""
    lines = ["| check | measured | target | verdict | detail |", "|---|---|---|---|---|"]
    for r in rows:
        if r["skipped"] is not None:
            verdict, meas = f"skipped: {r['skipped']}", "—"
        else:
            verdict = {True: "met", False: "NOT met", None: "reported"}[r["passed"]]
            meas = "—" if r["measured"] is None else f"{r['measured']:.4g}"
        tgt = "—" if r["target"] is None else f"{r['relation']} {r['target']:g}"
        lines.append(f"| {r['check']} | {meas} | {tgt} | {verdict} | {r['detail']} |")
    return "\n".join(lines)


# ---- (a) cuDNN attention ----------------------------------------------------------------------------


def _rel(a, b) -> float:
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


def check_cudnn(quick: bool) -> list[dict]:
    from tvvar.decompositions.attention import Attention

    name_f, name_b = "(a) cuDNN bf16 attention forward vs einsum f32", "(a) cuDNN bf16 attention backward vs einsum f32"
    if jax.default_backend() != "gpu":
        why = f"no GPU (backend {jax.default_backend()!r})"
        return [row(name_f, None, CUDNN_TOLERANCE, "<=", skipped=why),
                row(name_b, None, CUDNN_TOLERANCE, "<=", skipped=why)]
    B, T, H, K = (2, 256, 4, 64) if quick else (4, 2048, 16, 64)
    D = H * K
    ref = Attention(D, rngs=nnx.Rngs(0), num_heads=H, implementation="einsum")
    fast = Attention(D, rngs=nnx.Rngs(0), num_heads=H, implementation="cudnn", dtype=jnp.bfloat16)
    gd_r, st_r = nnx.split(ref)
    gd_f, st_f = nnx.split(fast)
    st_f = jax.tree.map(lambda a: a.astype(jnp.bfloat16), st_r)
    st_r = jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(jnp.float32), st_r)  # same rounded weights
    u = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float32).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(2), (B, T, D), jnp.float32)

    def loss(gd, st, x):
        return jnp.sum(w * nnx.merge(gd, st)(x).astype(jnp.float32))

    out_f = jax.jit(lambda s, x: nnx.merge(gd_f, s)(x))(st_f, u)
    out_r = jax.jit(lambda s, x: nnx.merge(gd_r, s)(x))(st_r, u.astype(jnp.float32))
    g_f = jax.jit(jax.grad(lambda s, x: loss(gd_f, s, x), argnums=(0, 1)))(st_f, u)
    g_r = jax.jit(jax.grad(lambda s, x: loss(gd_r, s, x), argnums=(0, 1)))(st_r, u.astype(jnp.float32))
    g_err = max(_rel(a, b) for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_r), strict=True))
    detail = f"B={B} T={T} H={H} K={K}, causal, max|Δ|/max|ref|"
    return [row(name_f, _rel(out_f, out_r), CUDNN_TOLERANCE, "<=", detail),
            row(name_b, g_err, CUDNN_TOLERANCE, "<=", detail + ", all parameter and input gradients")]


# ---- (b) MFU ----------------------------------------------------------------------------------------


def matmul_rate_bf16(n: int) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(jnp.bfloat16)
    f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
    return 2 * n**3 / time_interleaved({"dot": lambda: f(a)}, repeats=5)["dot"]


def check_mfu(quick: bool) -> list[dict]:
    from tvvar.model import ModelConfig, TVVARModel

    B, T, L, D, H, V = (2, 128, 2, 128, 2, 256) if quick else (8, 2048, 24, 1024, 16, 32768)
    K = D // H
    gpu = jax.default_backend() == "gpu"
    dtype = "bfloat16" if gpu or not quick else "float32"
    impl = "cudnn" if gpu else "auto"
    cfg = ModelConfig(V, D, num_layers=L, mixer={"num_heads": H, "implementation": impl}, dtype=dtype)
    gd, st = nnx.split(TVVARModel(cfg, rngs=nnx.Rngs(0)))
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, V)

    def nll(s, x):
        logp = jax.nn.log_softmax(nnx.merge(gd, s)(x)[:, :-1].astype(jnp.float32))
        return -jnp.mean(jnp.take_along_axis(logp, x[:, 1:, None], axis=-1))

    step = jax.jit(jax.value_and_grad(nll))
    step_s = time_interleaved({"step": lambda: step(st, ids)}, repeats=3 if quick else 5)["step"]
    flops = step_flops(B=B, T=T, L=L, D=D, H=H, K=K, V=V)["total"]
    kind = jax.devices()[0].device_kind
    peak = peak_bf16(kind)
    rate = matmul_rate_bf16(1024 if quick else 8192)
    n_params = sum(x.size for x in jax.tree.leaves(st))
    detail = (f"{n_params / 1e6:.0f}M params, B={B} T={T} L={L} D={D} {dtype} {impl}; {flops / 1e12:.2f} TFLOP "
              f"in {step_s * 1e3:.1f} ms; device {kind}")
    rows = [row("(b) MFU vs measured bf16 matmul rate", mfu(flops, step_s, rate), None, "report",
                detail + f"; matmul {rate / 1e12:.1f} TFLOP/s")]
    if peak is None:
        rows.append(row("(b) MFU vs device bf16 peak", None, MFU_TARGET, ">=", skipped=f"peak unknown for {kind!r}"))
    else:
        rows.append(row("(b) MFU vs device bf16 peak", mfu(flops, step_s, peak), MFU_TARGET, ">=",
                        detail + f"; peak {peak / 1e12:.0f} TFLOP/s"))
    return rows


# ---- (c) chunked SSD vs scan ------------------------------------------------------------------------


def check_ssd(quick: bool) -> list[dict]:
    from tvvar.decompositions.ssm_kernels import ssd_chunked, ssd_scan

    B, T, H, P, N, Q = (1, 256, 2, 16, 16, 64) if quick else (4, 2048, 16, 64, 64, 128)
    ks = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(ks[0], (B, T, H, P))
    la = -jax.nn.softplus(jax.random.normal(ks[1], (B, T, H, 1)))
    Bm, Cm = (jax.random.normal(k, (B, T, N)) for k in ks[2:])

    def g(fn):
        return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)[0] ** 2), argnums=(0, 1, 2, 3)))

    chunk, scan = g(lambda *a: ssd_chunked(*a, Q)), g(ssd_scan)
    med = time_interleaved({"chunked": lambda: chunk(x, la, Bm, Cm), "scan": lambda: scan(x, la, Bm, Cm)},
                           repeats=3 if quick else 5)
    return [row("(c) chunked SSD speed-up over lax.scan (fwd+bwd)", med["scan"] / med["chunked"], None, "report",
                f"B={B} T={T} H={H} P={P} N={N} chunk={Q}; chunked {med['chunked'] * 1e3:.2f} ms, "
                f"scan {med['scan'] * 1e3:.2f} ms")]


# ---- (d) sharded training step ----------------------------------------------------------------------


def check_sharded(quick: bool) -> list[dict]:
    from tvvar import sharding
    from tvvar.model import ModelConfig, TVVARModel

    n = len(jax.devices())
    B, T, L, D, V = (n * 2, 64, 2, 64, 128) if quick else (n * 8, 1024, 4, 512, 4096)
    cfg = ModelConfig(V, D, num_layers=L, mixer={"num_heads": 4})
    make = lambda: TVVARModel(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    mesh = sharding.make_mesh({"data": n, "model": 1})
    gd, st, _ = sharding.sharded_init(make, mesh)
    ids = jax.device_put(jax.random.randint(jax.random.key(1), (B, T), 0, V), sharding.batch_sharding(mesh))

    def nll(s, x):
        logp = jax.nn.log_softmax(nnx.merge(gd, s)(x)[:, :-1].astype(jnp.float32))
        return -jnp.mean(jnp.take_along_axis(logp, x[:, 1:, None], axis=-1))

    with jax.set_mesh(mesh):
        loss_sharded, _ = jax.jit(jax.value_and_grad(nll))(st, ids)
    gd1, st1 = nnx.split(make())
    loss_one = jax.jit(lambda s, x: nll(s, x))(st1, jax.device_get(ids))
    rel = abs(float(loss_sharded) - float(loss_one)) / max(abs(float(loss_one)), 1e-30)
    return [row("(d) sharded step loss vs unsharded (relative)", rel, SHARDED_RTOL, "<=",
                f"mesh data={n} × model=1 on {jax.devices()[0].device_kind}; B={B} T={T} L={L} D={D}")]


CHECKS = (check_cudnn, check_mfu, check_ssd, check_sharded)


def run(quick: bool) -> list[dict]:
    rows = []
    for fn in CHECKS:
        t0 = time.perf_counter()
        try:
            rows.extend(fn(quick))
        except Exception as e:  # one failing part must not hide the others' results
            rows.append(row(f"{fn.__name__}", float("nan"), 0.0, "<=", f"raised {type(e).__name__}: {e}"[:300]))
        print(f"[device_check] {fn.__name__} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.device_check", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    p.add_argument("--out", type=Path, default=Path("runs") / "device_check")
    args = p.parse_args(argv)
    rows = run(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"backend": jax.default_backend(), "devices": [d.device_kind for d in jax.devices()],
            "quick": args.quick, "rows": rows}
    (args.out / "device_check.json").write_text(json.dumps(info, indent=2))
    table = summary_table(rows)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)
    return 1 if any(r["passed"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
