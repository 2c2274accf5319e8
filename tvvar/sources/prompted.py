"""A prompted source with exact probabilities: prompt S_{1:n}, continuation U_{n+1:T}, end token ◁.

Section III of the paper measures a prompted model P(U_t | U_{n+1:t−1}, S_{1:n}; Φ) in tokens. To check
those measures against exact values this source makes every probability computable:

    S = s_k,  k ~ p                       a finite, enumerable prompt set {s_1..s_K} ⊂ C^n with law p
                                          (``prompt_law="random"``: K distinct random prompts, Dirichlet(1)
                                          law; ``"markov"``: every prompt in C^n, p from a Markov chain on C;
                                          ``"uniform"``: K random prompts, uniform law)
    c = topic[k]                          the prompt's topic (default: first prompt token mod C_topics)
    U_{n+1} ~ P_c[s_n, ·],  U_t ~ P_c[U_{t−1}, ·]   a Markov continuation whose transition depends on S

C = {0..V−2} are the content tokens and ◁ = V−1 the end token; every content row of P_c puts mass
``end_prob`` on ◁, and ◁ is absorbing (P_c[◁, ◁] = 1), so T_◁ = min{t : U_t = ◁} is a stopping time
and a fixed-length array of continuations is padded with ◁ after it.

Exact quantities (index convention of DESIGN.md: continuation arrays are 0-based, ``u[:, t]`` is the
paper's U_{n+1+t}):

    P(U_t = v | U_{<t}, s_k)      :meth:`log_conditionals`  [B, K, T, V] (log; −inf where impossible)
    P(s_k | U_{<t})               :func:`tvvar.theory.information.directed.prompt_posterior` (Bayes over the set)
    P(U_t = v | U_{<t})           :func:`tvvar.theory.information.directed.marginal_log_conditionals`
                                  = Σ_k P(s_k | U_{<t}) P(U_t = v | U_{<t}, s_k)

and the true directed information I(S → U^ħ) by enumeration (:func:`tvvar.theory.information.directed.
directed_information`) or by Monte-Carlo with exact per-sample densities.

:meth:`batch` (pure JAX) returns ``"tokens"`` int32 [B, seq_len + 1] = [prompt ‖ continuation] with
continuation length T = seq_len + 1 − n, ``"entropy"`` [B, seq_len] (exact H(x_{i+1} | x_{≤i}) of every
row: the prompt law's conditional on prompt rows, H(P_c[x_i, ·]) on continuation rows) and ``"prompt"``
int32 [B] (the index k drawn).
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.core import check_token_ids
from tvvar.sources.base import DataSource, entropy_np, finite_number, is_int, register_source, split_key
from tvvar.typing import Array, PRNGKey

__all__ = ["PromptedSource", "KIND", "PROMPT_LAWS"]

KIND = "prompted"
PROMPT_LAWS = ("random", "uniform", "markov")


@register_source
class PromptedSource(DataSource):
    """Prompts from a finite law, continuations from a prompt-dependent Markov chain (module docstring).

    ``vocab_size`` V ≥ 3 (V − 1 content tokens and ◁ = V − 1), ``prompt_len`` n ≥ 1, ``num_prompts`` K ≥ 1
    (ignored for ``prompt_law="markov"``, where K = (V−1)^n), ``num_topics`` ≥ 1 transition matrices,
    ``end_prob`` ∈ [0, 1) the mass of ◁ in each content row, ``alpha`` > 0 the Dirichlet concentration of
    the content rows (small: nearly deterministic continuations, so the prompt carries information),
    ``eps`` ∈ [0, 1] uniform mass mixed into them, ``seed``. ``prompts`` [K, n], ``prompt_probs`` [K] and
    ``topics`` [K] may be given instead of drawn (two rows with the same tokens and different topics are
    refused: the continuation may depend on the prompt only through its tokens).
    """

    kind = KIND

    def __init__(self, vocab_size: int = 5, prompt_len: int = 2, *, num_prompts: int = 8, num_topics: int = 4,
                 end_prob: float = 0.1, alpha: float = 0.2, eps: float = 0.02, prompt_law: str = "random",
                 seed: int = 0, prompts: Any = None, prompt_probs: Any = None, topics: Any = None):
        if not (is_int(vocab_size) and vocab_size >= 3):
            raise ValueError(f"vocab_size must be an int ≥ 3 (≥ 2 content tokens and the end token), "
                             f"got {vocab_size!r}")
        if not (is_int(prompt_len) and prompt_len >= 1):
            raise ValueError(f"prompt_len must be an int ≥ 1, got {prompt_len!r}")
        if not (is_int(num_topics) and num_topics >= 1):
            raise ValueError(f"num_topics must be an int ≥ 1, got {num_topics!r}")
        if not (is_int(seed) and seed >= 0):
            raise ValueError(f"seed must be an int ≥ 0, got {seed!r}")
        if prompt_law not in PROMPT_LAWS:
            raise ValueError(f"prompt_law must be one of {PROMPT_LAWS}, got {prompt_law!r}")
        end_prob = finite_number("end_prob", end_prob)
        if not 0.0 <= end_prob < 1.0:
            raise ValueError(f"end_prob must lie in [0, 1), got {end_prob!r}")
        alpha, eps = finite_number("alpha", alpha), finite_number("eps", eps)
        if not alpha > 0:
            raise ValueError(f"alpha (Dirichlet concentration) must be > 0, got {alpha!r}")
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must lie in [0, 1], got {eps!r}")
        V, n, C = int(vocab_size), int(prompt_len), int(num_topics)
        self.vocab_size, self.prompt_len, self.num_topics, self.seed = V, n, C, int(seed)
        self.end_token = V - 1
        self.end_prob, self.alpha, self.eps, self.prompt_law = end_prob, alpha, eps, prompt_law
        nc = V - 1
        rng = np.random.default_rng(self.seed)
        trans = np.zeros((C, V, V))
        content = (1.0 - eps) * rng.dirichlet(np.full(nc, alpha), size=(C, nc)) + eps / nc
        trans[:, :nc, :nc] = (1.0 - end_prob) * content
        trans[:, :nc, self.end_token] = end_prob
        trans[:, self.end_token, self.end_token] = 1.0
        self.transitions = trans
        self._given: dict[str, Any] = {}
        if prompts is not None:
            drawn_prompts, drawn_probs = None, None
        elif prompt_law == "markov":
            all_prompts = np.array(list(itertools.product(range(nc), repeat=n)), np.int64)
            chain = rng.dirichlet(np.full(nc, 0.5), size=nc)
            p = np.full(len(all_prompts), 1.0 / nc)
            for j in range(1, n):
                p = p * chain[all_prompts[:, j - 1], all_prompts[:, j]]
            drawn_prompts, drawn_probs = all_prompts, p / p.sum()
        else:
            if not (is_int(num_prompts) and 1 <= num_prompts <= nc**n):
                raise ValueError(f"num_prompts must be an int in [1, (V−1)^n = {nc ** n}], got {num_prompts!r}")
            codes = rng.choice(nc**n, size=int(num_prompts), replace=False)
            drawn_prompts = np.stack([(codes // nc**(n - 1 - j)) % nc for j in range(n)], axis=1).astype(np.int64)
            drawn_probs = (rng.dirichlet(np.ones(num_prompts)) if prompt_law == "random"
                           else np.full(num_prompts, 1.0 / num_prompts))
        if prompts is not None:
            a = np.asarray(prompts)
            if a.ndim != 2 or a.shape[1] != n or a.shape[0] < 1 or not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"prompts must be a non-empty integer array of shape [K, n={n}], "
                                 f"got shape {a.shape} and dtype {a.dtype}")
            if a.min() < 0 or a.max() >= nc:
                raise ValueError(f"prompts must hold content tokens in [0, V−1={nc}), got values in "
                                 f"[{a.min()}, {a.max()}]")
            drawn_prompts = self._given["prompts"] = a.astype(np.int64)
            if prompt_probs is None:
                drawn_probs = np.full(len(a), 1.0 / len(a))
        K = len(drawn_prompts)
        if prompt_probs is not None:
            q = np.asarray(prompt_probs, np.float64)
            if q.shape != (K,) or not np.all(np.isfinite(q)) or np.any(q < 0) or abs(q.sum() - 1) > 1e-9:
                raise ValueError(f"prompt_probs must be a probability vector of shape [K={K}] (≥ 0, sum 1), got {q!r}")
            drawn_probs = self._given["prompt_probs"] = q
        self.prompts, self.prompt_probs = drawn_prompts, drawn_probs
        tp = drawn_prompts[:, 0] % C
        if topics is not None:
            tp = np.asarray(topics)
            if tp.shape != (K,) or not np.issubdtype(tp.dtype, np.integer) or tp.min() < 0 or tp.max() >= C:
                raise ValueError(f"topics must be integers in [0, num_topics={C}) of shape [K={K}], got {tp!r}")
            self._given["topics"] = tp
        self.topics = tp.astype(np.int64)
        self._check_consistent_topics()
        self.prompt_entropy = self._prompt_row_entropy()

    def _check_consistent_topics(self) -> None:
        """Two prompt rows with the same tokens must have the same topic: the continuation may depend on the
        prompt only through its tokens (otherwise the index k would carry information the tokens S do not, and
        the model, which reads only the tokens, could not represent the source)."""
        first: dict[tuple[int, ...], int] = {}
        for k, row in enumerate(map(tuple, self.prompts.tolist())):
            j = first.setdefault(row, k)
            if self.topics[j] != self.topics[k]:
                raise ValueError(f"prompts {j} and {k} have the same tokens {list(row)} but different topics "
                                 f"({int(self.topics[j])} and {int(self.topics[k])}): the continuation must depend on "
                                 "the prompt's tokens only; give equal rows the same topic (or merge them)")

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    @property
    def has_entropy(self) -> bool:
        return True

    def _prompt_row_entropy(self) -> np.ndarray:
        """H(s_{j+1} | s_{≤j}) under the prompt law, for each prompt k and row j < n − 1: [K, n − 1]."""
        K, n = self.prompts.shape
        out = np.zeros((K, max(n - 1, 0)))
        for j in range(n - 1):
            for k in range(K):
                same = np.all(self.prompts[:, : j + 1] == self.prompts[k, : j + 1], axis=1)
                w = np.bincount(self.prompts[same, j + 1], weights=self.prompt_probs[same], minlength=self.vocab_size)
                out[k, j] = entropy_np(w / w.sum()) if w.sum() > 0 else 0.0
        return out

    # ----------------------------------------------------------------------------------------------
    # the exact quantities
    # ----------------------------------------------------------------------------------------------

    def check_continuation(self, u: Array, name: str = "continuation") -> None:
        check_token_ids(u, self.vocab_size, name=name, ndim=2)

    def log_conditionals(self, u: Array, dtype: Any = None) -> Array:
        """log P(U_t = v | U_{<t} = u_{<t}, S = s_k) for every continuation b, prompt k, step t and token v:
        [B, K, T, V] (−inf where a transition is impossible, e.g. leaving ◁)."""
        self.check_continuation(u)
        dt = jnp.asarray(1.0).dtype if dtype is None else dtype
        u = jnp.asarray(u)
        B, T = u.shape
        K = self.num_prompts
        last = jnp.asarray(self.prompts[:, -1])                                   # s_n: [K]
        prev_BxKxT = jnp.concatenate([jnp.broadcast_to(last[None, :, None], (B, K, 1)),
                                      jnp.broadcast_to(u[:, None, :-1], (B, K, T - 1))], axis=-1)
        with np.errstate(divide="ignore"):
            logP = jnp.asarray(np.log(self.transitions), dt)                      # [C, V, V]
        topic_K = jnp.asarray(self.topics)
        return logP[topic_K[None, :, None], prev_BxKxT]

    def log_prior(self, dtype: Any = None) -> Array:
        """log p(s_k): [K]."""
        dt = jnp.asarray(1.0).dtype if dtype is None else dtype
        with np.errstate(divide="ignore"):
            return jnp.asarray(np.log(self.prompt_probs), dt)

    def conditional_fn(self):
        """``u [B, T] -> log P(U_t = v | u_{<t}, s_k)`` [B, K, T, V], the form the information functions take."""
        return self.log_conditionals

    # ----------------------------------------------------------------------------------------------
    # sampling
    # ----------------------------------------------------------------------------------------------

    def sample(self, key: PRNGKey, batch_size: int, cont_len: int) -> tuple[Array, Array]:
        """(prompt index k int32 [B], continuation u int32 [B, T]) drawn from the source (pure JAX)."""
        if not (is_int(batch_size) and batch_size >= 1):
            raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}")
        if not (is_int(cont_len) and cont_len >= 1):
            raise ValueError(f"cont_len must be an int ≥ 1, got {cont_len!r}")
        dt = jnp.asarray(1.0).dtype
        kk, ku = jax.random.split(key)
        k = jax.random.categorical(kk, jnp.broadcast_to(self.log_prior(dt), (batch_size, self.num_prompts)))
        with np.errstate(divide="ignore"):
            logP = jnp.asarray(np.log(self.transitions), dt)
        topic = jnp.asarray(self.topics)[k]
        prev0 = jnp.asarray(self.prompts[:, -1])[k]

        def step(prev, i):
            x = jax.random.categorical(jax.random.fold_in(ku, i), logP[topic, prev], axis=-1).astype(jnp.int32)
            return x, x

        _, u_TxB = jax.lax.scan(step, prev0.astype(jnp.int32), jnp.arange(cont_len))
        return k.astype(jnp.int32), u_TxB.T

    def batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> dict[str, Array]:
        n = self.prompt_len
        if not (is_int(seq_len) and seq_len + 1 > n):
            raise ValueError(f"seq_len must be an int with seq_len + 1 > prompt_len = {n} (room for a continuation), "
                             f"got {seq_len!r}")
        k, u = self.sample(split_key(key, split), batch_size, seq_len + 1 - n)
        tokens = jnp.concatenate([jnp.asarray(self.prompts, jnp.int32)[k], u], axis=1)
        prev = tokens[:, n - 1:-1]
        H_cont = jnp.asarray(entropy_np(self.transitions), jnp.float32)[jnp.asarray(self.topics)[k][:, None], prev]
        H_prompt = jnp.asarray(self.prompt_entropy, jnp.float32)[k]
        return {"tokens": tokens, "entropy": jnp.concatenate([H_prompt, H_cont], axis=1), "prompt": k}

    # ----------------------------------------------------------------------------------------------
    # description
    # ----------------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        d = {"kind": self.kind, "vocab_size": self.vocab_size, "prompt_len": self.prompt_len,
             "num_prompts": self.num_prompts, "num_topics": self.num_topics, "end_prob": self.end_prob,
             "alpha": self.alpha, "eps": self.eps, "prompt_law": self.prompt_law, "seed": self.seed}
        for name, a in self._given.items():
            d[name] = np.asarray(a).tolist()
        return d

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> PromptedSource:
        if info.get("kind") != KIND:
            raise ValueError(f"info['kind'] must be {KIND!r}, got {info.get('kind')!r}")
        keys = ("num_prompts", "num_topics", "end_prob", "alpha", "eps", "prompt_law", "seed",
                "prompts", "prompt_probs", "topics")
        return cls(info["vocab_size"], info["prompt_len"], **{k: info[k] for k in keys if k in info})
