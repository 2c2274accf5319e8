"""A tvvar model as the DV critic of token streams (issue 14, item 2) vs plain language-model training.

* ``DV critic step``: :func:`tvvar.theory.estimation.neural.make_token_dv_step` — the jitted forward, backward,
  Adam update and moving-average update of the full-past critic (ids [x_0, y_0, …, x_{m−1}], scores of the V_y
  candidates at the m rows of x_t, the exact off-diagonal marginal expectation with clipped exponent) — against
  a cross-entropy training step of the same model (same config, same Adam) on the same batch: next-token loss of
  the same 2m − 1 input ids against ids shifted by one, full-vocabulary log-softmax at every row.  Batch 1024.
  Target ≤ 1.2.
* ``DI step``: both critics of :func:`tvvar.theory.estimation.neural.directed_information_dv` (full and reduced,
  the reduced one on m tokens), one step each, against the same cross-entropy step; reported only (two models
  are trained, so the natural cost is up to about 1.5×).
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.benchmarks.timing import compare
from tvvar.model import TVVARModel
from tvvar.theory.estimation import neural as N


def _setup(cfg, tx, seed: int):
    graphdef, params, rest = nnx.split(TVVARModel(cfg, rngs=nnx.Rngs(seed)), nnx.Param, ...)
    return graphdef, params, rest, tx.init(params)


def run(quick: bool) -> list[dict]:
    B, Vx, Vy = 1024, 4, 4
    m, D, L = (8, 32, 1) if quick else (16, 64, 2)
    full = N.TokenCritic(Vx, Vy, m)
    reduced = N.TokenCritic(Vx, Vy, m, reduced=True)
    cfg = full.config(d_model=D, num_layers=L, mixer={"num_heads": 4})
    tx = optax.adam(1e-3)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, Vx, (B, m)), jnp.int32)
    y = jnp.asarray(rng.integers(0, Vy, (B, m)), jnp.int32)
    ids_full, ids_red = full.ids(x, y), reduced.ids(x, y)
    targets = jnp.concatenate([ids_full[:, 1:], (y[:, -1:] + Vx)], axis=1)  # the next token of every input id

    gd, params, rest, opt = _setup(cfg, tx, 0)
    gd_r, params_r, rest_r, opt_r = _setup(cfg, tx, 1)
    dv_step = N.make_token_dv_step(full, gd, tx)
    dv_step_r = N.make_token_dv_step(reduced, gd_r, tx)

    def ce_loss(p, ids, tgt):
        logits = nnx.merge(gd, p, rest)(ids)
        return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, tgt))

    @jax.jit
    def ce_step(p, s, ids, tgt):
        loss, g = jax.value_and_grad(ce_loss)(p, ids, tgt)
        upd, s = tx.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    state = {"ce": (params, opt), "dv": (params, opt, jnp.full((m,), -jnp.inf)),
             "red": (params_r, opt_r, jnp.full((m,), -jnp.inf))}

    def ce():
        p, s = state["ce"]
        p, s, loss = ce_step(p, s, ids_full, targets)
        state["ce"] = (p, s)
        return loss

    def dv():
        p, s, lr = state["dv"]
        p, s, lr, v = dv_step(p, rest, s, lr, ids_full, y)
        state["dv"] = (p, s, lr)
        return v

    def di():
        out = dv()
        p, s, lr = state["red"]
        p, s, lr, v = dv_step_r(p, rest_r, s, lr, ids_red, y)
        state["red"] = (p, s, lr)
        return out, v

    shape = {"B": B, "m": m, "seq_len": full.seq_len, "V_x": Vx, "V_y": Vy, "d_model": D, "layers": L}
    repeats = 7 if quick else 15
    return [
        compare("DV training step with a tvvar critic vs a cross-entropy step of the same model, batch 1024",
                ("cross-entropy step", ce), ("DV critic step", dv), target=1.2, repeats=repeats, **shape),
        compare("DI training step (full + reduced critics) vs the cross-entropy step, batch 1024",
                ("cross-entropy step", ce), ("DI step (two critics)", di), target=None, repeats=repeats, **shape),
    ]


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
