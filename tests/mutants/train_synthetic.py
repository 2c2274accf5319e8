"""Mutants of experiments.train_synthetic: the synthetic TV-VAR source (tvvar.sources.TVVARSource, its exact
entropy floor), the Eq. 44 pipeline both the source and the learner run (sphere token vectors, causal
support, readout /Ξ), and the next-token cross-entropy objective (tvvar.train)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from experiments.train_synthetic import Config
from mutants import Mutant


def tiny() -> Config:
    # a smaller source (V = D = 8) that a one-layer learner reaches within 0.05 nats in 200 steps
    return Config(V=8, D_source=8, d_model=32, num_layers=1, num_heads=4, steps=200, batch_size=32, seq_len=16,
                  warmup=20, eval_every=200, eval_batches=4, ref_batch=256)


def _entropy_bits(orig):
    def entropy_of_logits(logits):
        return orig(logits) / math.log(2.0)  # log2 where nats are meant

    return entropy_of_logits


def _causal_leak(orig):
    def support_mask(mask, T, S=None):
        S = T if S is None else S
        if mask == "bidirectional":
            return jnp.ones((T, S), dtype=bool)
        return jnp.arange(S)[None, :] <= jnp.arange(T)[:, None] + 1  # j ≤ i + 1: off by one

    return support_mask


def _ce_unshifted(orig):
    def cross_entropy(model, batch, rng):
        tokens = batch["tokens"]
        logp = jax.nn.log_softmax(model(tokens[:, :-1]).astype(jnp.float32), axis=-1)
        targets = tokens[:, :-1]  # the input token scored instead of the next one
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        loss = jnp.mean(nll)
        metrics = {"ce": loss, "accuracy": jnp.mean((jnp.argmax(logp, -1) == targets).astype(jnp.float32))}
        if "entropy" in batch:
            H = batch["entropy"].astype(jnp.float32)
            metrics["entropy"], metrics["excess"] = jnp.mean(H), jnp.mean(nll - H)
        return loss, metrics

    def get_objective(name):
        return cross_entropy if name == "cross_entropy" else orig(name)

    return get_objective


def _not_on_sphere(orig):
    def vectors(self):
        return self.table[...]  # the raw table: the projection onto S^{D−1} forgotten

    return vectors


def _xi_multiplied(orig):
    def __call__(self, h):
        U = self.embedding.vectors()
        return jnp.einsum("...d,vd->...v", h, U) * jnp.asarray(self.xi, h.dtype)  # ·Ξ instead of /Ξ

    return __call__


def _log_softmax_time(orig):
    def log_softmax32(logits):
        x = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        return jax.nn.log_softmax(x, axis=1)  # normalised over positions, not over the vocabulary

    return log_softmax32


def _entropy_late(orig):
    def batch(self, key, batch_size, seq_len, split="train"):
        out = orig(self, key, batch_size, seq_len, split)
        H = out["entropy"]
        # the entropy of the previous step's logits stored with each target (the floor one step late)
        return {**out, "entropy": jnp.concatenate([H[:, :1], H[:, :-1]], axis=1)}

    return batch


MUTANTS = (
    Mutant("entropy_in_bits", "tvvar.sources.base:entropy_of_logits", _entropy_bits,
           "the source's conditional entropy in bits (log2) where nats are meant"),
    Mutant("causal_mask_off_by_one", "tvvar.core:support_mask", _causal_leak,
           "causal support j ≤ i + 1: row i sees the token it predicts"),
    Mutant("ce_targets_unshifted", "tvvar.train:get_objective", _ce_unshifted,
           "cross-entropy scores row i against x_i instead of x_{i+1} (targets not shifted)"),
    Mutant("token_vectors_off_sphere", "tvvar.core:SphereEmbedding.vectors", _not_on_sphere,
           "token vectors ũ not projected onto the unit sphere (Def. 11)"),
    Mutant("readout_times_xi", "tvvar.core:Readout.__call__", _xi_multiplied,
           "readout multiplies by the temperature Ξ instead of dividing"),
    Mutant("log_softmax_over_time", "tvvar.core:log_softmax32", _log_softmax_time,
           "log-softmax over the time axis instead of the vocabulary"),
    Mutant("entropy_one_step_late", "tvvar.sources.synthetic:TVVARSource.batch", _entropy_late,
           "each target's entropy floor taken from the previous position's logits (off by one)"),
)
