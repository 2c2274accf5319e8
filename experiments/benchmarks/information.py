"""Section III bookkeeping cost: the information density and the Eq. 18 step vs the forward passes they need.

Both contenders need the model's conditionals under every prompt of the set, i.e. K·B forward passes of
[s_k ‖ u_b]; the Bayes marginal over the prompt set is then O(B·K·T·V) extra work. The baselines are exactly
those K·B passes:

- ``information density``: log-softmax of the K·B forwards (baseline) vs
  :func:`tvvar.theory.information.directed.information_density` of the same sequences (contender: the same forwards, the
  Bayes prompt-free marginal and the per-token density). Target ≤ 1.5.
- ``Eq. 18 step``: the gradient of the mean cross-entropy over the K·B sequences (baseline) vs the gradient of
  :func:`tvvar.theory.information.directed.eq18_loss` at K = 16 (contender: exact I(S; U_t | U_{<t}) over the prompt set
  plus λ · cross-entropy). Target ≤ 1.5. A cross-entropy step over the B paths alone is K times cheaper; Eq. 18
  cannot be computed from fewer than K·B forwards, so that comparison would measure K, not the bookkeeping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.benchmarks.timing import compare
from tvvar.model import ModelConfig, TVVARModel
from tvvar.theory.information import directed as I


def run(quick: bool) -> list[dict]:
    K, n, T, V = 16, 4, 28, 16
    B, D, L = (4, 32, 1) if quick else (8, 64, 2)
    cfg = ModelConfig(vocab_size=V, d_model=D, num_layers=L, decomposition="attention", max_len=n + T)
    model = TVVARModel(cfg, rngs=nnx.Rngs(0))
    gd, state = nnx.split(model)
    keys = jax.random.split(jax.random.key(1), 4)
    prompts = jax.random.randint(keys[0], (K, n), 0, V)
    u = jax.random.randint(keys[1], (B, T), 0, V)
    k = jax.random.randint(keys[2], (B,), 0, K)
    log_prior = jax.nn.log_softmax(jax.random.normal(keys[3], (K,)))
    ids = jnp.concatenate([jnp.broadcast_to(prompts[None], (B, K, n)),
                           jnp.broadcast_to(u[:, None, :], (B, K, T))], axis=-1).reshape(B * K, n + T)

    @jax.jit
    def forwards(st, ids):
        return jax.nn.log_softmax(nnx.merge(gd, st)(ids[:, :-1]).astype(jnp.float32), axis=-1)

    @jax.jit
    def density(st, prompts, u, k, log_prior):
        lc = I._log_cond_traced(nnx.merge(gd, st), prompts, u)
        return I.information_density(lc, log_prior, u, k)

    def ce(st, ids):
        logp = jax.nn.log_softmax(nnx.merge(gd, st)(ids[:, :-1]).astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    def eq18(st, prompts, u, k, log_prior):
        return I.eq18_loss(nnx.merge(gd, st), prompts, log_prior, u, k, 1.0)[0]

    ce_grad = jax.jit(jax.grad(ce))
    eq18_grad = jax.jit(jax.grad(eq18))
    shape = {"K": K, "B": B, "n": n, "T": T, "V": V, "D": D, "layers": L, "sequences": K * B}
    return [
        compare("information density of B paths under K prompts vs the K·B forwards",
                ("K·B forwards", lambda: forwards(state, ids)),
                ("information_density", lambda: density(state, prompts, u, k, log_prior)),
                target=1.5, **shape),
        compare("Eq. 18 gradient step vs a cross-entropy gradient over the same K·B sequences",
                ("cross-entropy grad", lambda: ce_grad(state, ids)),
                ("Eq. 18 grad", lambda: eq18_grad(state, prompts, u, k, log_prior)),
                target=1.5, **shape),
    ]
