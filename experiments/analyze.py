"""Analyse a checkpoint as a TV-VAR: π heatmaps, ‖A_tj‖ maps and the Theorem 6 terms of one layer.

    python -m experiments.analyze --model PATH (--text FILE | --prompt STR) --out DIR [--layer L] [--window W]
                                  [--prompts FILE [--cont-len T] [--samples B]] [--html]

``PATH`` is a Hugging Face folder (config.json + safetensors; gpt2 / llama / mistral / mamba2, see
:mod:`tvvar.pretrained`) or a tvvar run directory (``train_config.json`` + checkpoints, see
:func:`tvvar.train.load_run`). The prompt is tokenized with the folder's tokenizer.json (a run: with its
vocabulary); without one it must be space-separated token ids. Writes into DIR:

* ``pi_layer{l}.png`` — π^h[i, j] (Theorem 5) of every head of every layer;
* ``coef_norm_layer{l}.png`` — ‖A[i, j]‖_F, the coefficient matrices of the layer's mixer (Eq. 53) restricted
  to the last ``window`` positions; for attention computed from π and the value maps' Gram matrix, for the
  selective SSMs and the Mamba-2 block from their mixing matrices L and Gram matrices of their maps, never
  materialising the [T, T, D, D] tensor (O(T²D²)), which other mixers (dense, ssm_dense, mamba1) still build;
* ``theorem6_layer{l}.png`` — per position: log P, the ELBO and the posterior gap KL(Q ‖ P(J | U)) of the
  latent-position model of layer ``l`` (Theorem 6, by enumeration of every (h, j); the readout after layer
  l is the model's own final norm and head — for l < L − 1 a "logit lens" reading of that layer); the
  enumeration runs in tiles of b query rows × b source positions
  (:func:`tvvar.theory.transformer.elbo.chunked_terms`), b chosen so a tile's [b, H, b, V] logits fit
  ``--memory-budget`` GiB (default 1), never the [T, H, T, V] array;
* with ``--prompts FILE`` (one prompt per line, K ≥ 2 distinct prompts of the same length n), ``flow.png`` —
  the semantic information flow i(S → U_{n+1:t}) (Def. 8) of B continuations sampled from the model under a
  uniform prompt law, its Doob compensator A_t = Σ KL_τ and the Monte-Carlo directed information
  I(S → U_{n+1:n+T}) (Def. 2, :mod:`tvvar.theory.information.directed`), with three checks: the chain rule (the flow
  from per-step Bayes predictives equals the one from sequence probabilities), the Doob martingale
  M_T = i_T − A_T has mean 0 (Theorem 2; within 4 standard errors from its exact predictable variance) and
  I(S → U) ≤ H(S) = log K;
* ``results.json`` — the numbers and the checks (π rows are distributions; the coefficients reproduce the
  mixer's output, the TV-VAR law; ELBO ≤ log P with the gap ≥ 0, for an attention layer);
* with ``--html``, ``view.html`` — one self-contained interactive page of results.json (:mod:`experiments.view`).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import plotting
from experiments.common import check, fail, format_check, save_figure, to_jsonable

__all__ = ["analyze", "information_flow", "load_model", "tokenize", "read_prompts", "check_pi_rows", "check_law",
           "check_elbo_bound", "check_chain_rule", "check_martingale", "check_di_bound", "build_parser", "main", "cli"]


# ---- the verdicts (each a function, so a test can feed it a perturbed input) ------------------------


def check_pi_rows(pi: np.ndarray, tol: float = 1e-5) -> dict:
    """π [B, H, T, T]: every row is a distribution over S(i) (max |Σ_j π − 1|, entries ≥ 0)."""
    dev = float(np.max(np.abs(pi.sum(-1) - 1.0)))
    if np.min(pi) < 0:
        dev = max(dev, float(-np.min(pi)) + tol + 1.0)
    return check("π rows sum to 1 (Theorem 5)", dev, 0.0, "<=", tol, "Eq. 47")


def check_law(h_fast: np.ndarray, h_coef: np.ndarray, tol: float = 1e-4) -> dict:
    """The mixer's fast output equals Σ_j A[i, j] u_j from ``coefficients`` (relative max difference)."""
    scale = max(float(np.max(np.abs(h_fast))), 1e-30)
    return check("mixer(u) = Σ_j A_ij u_j (TV-VAR law)", float(np.max(np.abs(h_fast - h_coef))) / scale, 0.0,
                 "<=", tol, "Definition 13")


def check_elbo_bound(log_p: np.ndarray, elbo: np.ndarray, gap: np.ndarray, tol: float = 1e-4) -> dict:
    """ELBO ≤ log P and gap = log P − ELBO ≥ 0 at every position (largest violation)."""
    viol = max(float(np.max(elbo - log_p)), float(np.max(-gap)), float(np.max(np.abs(log_p - elbo - gap))))
    return check("ELBO ≤ log P, gap = log P − ELBO ≥ 0 (Theorem 6)", viol, 0.0, "<=", tol, "Theorem 6")


def check_chain_rule(flow_steps: np.ndarray, flow_seq: np.ndarray, tol: float = 1e-3) -> dict:
    """i(S → U) from the per-step Bayes predictives equals log P(u | s) − log P(u) from sequence
    probabilities (the chain rule; max abs difference in nats over paths)."""
    return check("flow by steps = flow by sequence probabilities (chain rule)",
                 float(np.max(np.abs(flow_steps - flow_seq))), 0.0, "<=", tol, "Def. 8, Eq. 24")


def check_martingale(M_T: np.ndarray, V_T: np.ndarray, z: float = 4.0) -> dict:
    """The Doob martingale part M_T = i_T − A_T of the flow has mean 0 under the model's own law (Theorem 2):
    |mean| ≤ z standard errors, reported in units of the standard error.

    The standard error is √(mean V_T / B) with V_T the predictable quadratic variation (E[M_T²] = E[V_T],
    each V_T exact over the next tokens), not the sample deviation of M_T: the flow's increments are heavy
    tailed (a rare token can move the posterior far), so a few dozen paths that miss the rare ones give a
    sample deviation far too small — measured on a random-weight Mamba-2, B 32: 15.9 sample s.e. but 0.19 of
    this one."""
    B = len(M_T)
    se = float(np.sqrt(np.mean(V_T) / B)) if B > 0 else float("nan")
    ratio = abs(float(np.mean(M_T))) / se if se > 0 else (0.0 if abs(float(np.mean(M_T))) < 1e-12 else float("inf"))
    return check("Doob martingale M_T has mean 0 (|mean| / s.e.)", ratio, 0.0, "<=", z, "Theorem 2, Eqs. 26–28")


def check_di_bound(di: float, di_se: float, K: int, z: float = 3.0) -> dict:
    """I(S → U) ≤ H(S) = log K under a uniform law on K prompts (the estimate minus z s.e.)."""
    return check("I(S → U) ≤ H(S) = log K (nats)", di - z * di_se, math.log(K), "<=", 0.0, "Def. 2")


# ---- input ---------------------------------------------------------------------------------------


def tokenize(text: str, tokenizer, vocab_size: int) -> np.ndarray:
    """Token ids [1, T] of ``text``: the tokenizer's, or without one space-separated integer ids."""
    if tokenizer is not None:
        ids = tokenizer.encode(text).ids
    else:
        try:
            ids = [int(t) for t in text.split()]
        except ValueError:
            raise ValueError("the checkpoint has no tokenizer.json, so the prompt must be space-separated token ids, "
                             f"got {text[:40]!r}") from None
    if len(ids) < 2:
        raise ValueError(f"the prompt must have at least 2 tokens, got {len(ids)}")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got {bad[:5]}")
    return np.asarray(ids, np.int32)[None]


def read_prompts(path: Path, encode) -> np.ndarray:
    """The K prompts of ``path`` (one per non-empty line) as ids [K, n]. Prompts must encode to the same number
    of tokens (the flow compares continuations of equally long prompts); different lengths are refused with
    the lengths named — never cut — and so are two lines that are the same prompt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {str(path)!r}: no such file")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"--prompts {str(path)!r} must hold at least 2 non-empty lines (one prompt each), got "
                         f"{len(lines)}")
    ids = [np.asarray(encode(ln)).reshape(-1) for ln in lines]
    lengths = [len(i) for i in ids]
    if min(lengths) < 1:
        raise ValueError(f"--prompts {str(path)!r}: line {lengths.index(0) + 1} encodes to no tokens")
    if len(set(lengths)) > 1:
        raise ValueError(f"--prompts {str(path)!r}: the prompts must encode to the same number of tokens, got "
                         f"lengths {lengths} (lines in file order); pad or trim them yourself")
    seen: dict[tuple, int] = {}
    for k, i in enumerate(ids):
        j = seen.setdefault(tuple(i.tolist()), k)
        if j != k:
            raise ValueError(f"--prompts {str(path)!r}: lines {j + 1} and {k + 1} are the same prompt (a prompt set "
                             "has distinct prompts)")
    return np.stack(ids).astype(np.int32)


class _Loaded(NamedTuple):
    """What ``load_model`` returns: the model, a text → ids encoder, an id → string decoder, its kind."""

    model: Any
    encode: Callable[[str], np.ndarray]
    decode: Callable[[int], str]
    kind: str


def load_model(path: Path, dtype: str = "float32") -> _Loaded:
    """A Hugging Face folder (:func:`tvvar.pretrained.load_pretrained`) or a tvvar run directory
    (:func:`tvvar.train.load_run`, its latest committed checkpoint)."""
    from tvvar.train import CONFIG_FILE, load_run

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {str(path)!r}: no such folder (a Hugging Face checkpoint or a tvvar run)")
    if (path / CONFIG_FILE).is_file():
        from experiments.generate import decode_tokens, encode_prompt

        model, _, info = load_run(path)
        V = model.cfg.vocab_size

        def encode(text):
            return encode_prompt(text, info, V)

        return _Loaded(model, encode, lambda i: decode_tokens([i], info), f"tvvar run ({info.get('kind', '?')})")
    from tvvar.pretrained import load_pretrained

    pre = load_pretrained(path, dtype=dtype)
    V = pre.model.cfg.vocab_size
    tok = pre.tokenizer
    return _Loaded(pre.model, lambda text: tokenize(text, tok, V)[0],
                   (lambda i: str(int(i))) if tok is None else (lambda i: tok.id_to_token(int(i))), pre.model_type)


# ---- the layer's latent-position model --------------------------------------------------------------


class _Truncated:
    """The model's layers 0..l with its own final norm and readout (what tvvar.theory.transformer.elbo reads; a block
    intercept such as GPT-2's folded biases is handled there, ``Block.mixer_bias``)."""

    def __init__(self, model, layer):
        self.cfg, self.embed_tokens = model.cfg, model.embed_tokens
        self.final_norm, self.readout = model.final_norm, model.readout
        self.blocks = list(model.blocks[: layer + 1])


# ---- the analysis ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    layer: int = -1
    window: int = 16
    max_heads_plotted: int = 16
    memory_budget: int | None = None  # bytes of one tile of the Theorem 6 enumeration (None: elbo's 1 GiB default)


def analyze(model, ids: np.ndarray, out: Path, opts: Options = Options(), tokens: list[str] | None = None) -> dict:
    """Run every measure on ``model`` for ``ids`` [1, T]; writes PNGs and returns the results dict."""
    import matplotlib

    matplotlib.use("Agg")
    from tqdm.auto import tqdm

    from tvvar.core import float32_or_better, log_softmax32, mix_dense
    from tvvar.decompositions.attention import SoftmaxBilinearAttention
    from tvvar.theory.transformer.elbo import DEFAULT_MEMORY_BUDGET, chunked_terms, enumeration_block

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L = len(model.blocks)
    layer = opts.layer % L if -L <= opts.layer < L else None
    if layer is None:
        raise ValueError(f"layer must be in [-{L}, {L}), got {opts.layer}")
    ids_j = jnp.asarray(ids)
    T = ids.shape[1]
    W = min(opts.window, T)
    figures, checks, data = [], [], {"T": T, "layers": L, "layer": layer, "window": W}
    x = model.embed_tokens(ids_j)
    pis, law_fast, law_coef, coef_norms, coef_rows = [], [], [], [], []
    for li, block in enumerate(tqdm(list(model.blocks), desc="analyze: layers")):
        z = block.mixer_input(x)
        mixer = block.mixer
        pi = np.asarray(mixer.pi(z)) if hasattr(mixer, "pi") else None
        if pi is not None:
            pis.append(pi)
            figures.append(_pi_figure(pi[0], li, out, opts.max_heads_plotted, tokens))
        # the law on the last W rows: the mixer's fast path against Σ_j A[i, j] u_j, and ‖A[i, j]‖_F of every (i, j)
        h_fast = np.asarray(mixer(z))[:, T - W:]
        factored = _factored_law_and_norms(mixer)
        if factored is not None:  # from the mixer's factors, never the [T, T, D, D] tensor
            h_coef, rows = factored(mixer, z)
        else:  # the explicit coefficients: O(T²D²) memory (DenseTVVAR, DenseSSM, Mamba1Block, a user's mixer)
            A = mixer.coefficients(z)  # [1, T, T, D, D]
            h_coef = np.asarray(mix_dense(A, z))
            rows = np.asarray(jnp.sqrt(jnp.sum(jnp.square(A[0]), axis=(-2, -1))))
            del A
        law_fast.append(h_fast)
        law_coef.append(h_coef[:, T - W:])
        coef_rows.append(rows)  # every row, for the view
        norms = rows[T - W:, T - W:]
        coef_norms.append(norms)
        figures.append(_coef_norm_figure(norms, li, T, out, tokens))
        x = block(x)
    if pis:
        checks.append(check_pi_rows(np.concatenate([p.reshape(-1, p.shape[-1]) for p in pis])[None, None]))
    checks.append(check_law(np.concatenate(law_fast, -1), np.concatenate(law_coef, -1)))
    data["coef_norms"] = coef_norms
    data["pi"] = pis
    data["coef_norm_rows"] = coef_rows  # ‖A[i, j]‖_F of every (i, j), [T, T] per layer
    # surprisal of token i + 1 from row i of the model's own output (nats), [T − 1]
    lp = log_softmax32(model(ids_j))[0, :-1]
    data["surprisal"] = -np.asarray(jnp.take_along_axis(lp, ids_j[0, 1:, None], axis=-1))[:, 0]

    if not isinstance(model.blocks[layer].mixer, SoftmaxBilinearAttention):
        # Theorem 6's latent positions are attention's (h, j); an SSM or other mixer has no such model
        data["theorem6"] = None
        data["theorem6_skipped"] = (f"layer {layer} is {type(model.blocks[layer].mixer).__name__}, not attention: "
                                    "no latent-position model (Theorem 6)")
        print(f"analyze: {data['theorem6_skipped']}")
    else:
        t0 = time.perf_counter()
        trunc = _Truncated(model, layer)
        targets = jnp.concatenate([ids_j[:, 1:], ids_j[:, -1:]], axis=1)
        # the enumeration in tiles of b rows × b positions: [b, H, b, V] logits at a time, never [T, H, T, V]
        budget = DEFAULT_MEMORY_BUDGET if opts.memory_budget is None else opts.memory_budget
        block = enumeration_block(1, model.blocks[layer].mixer.num_heads, model.cfg.vocab_size, model.cfg.d_model, T,
                                  float32_or_better(model.cfg.dtype), budget)
        terms = chunked_terms(trunc, ids_j, targets, block=block)
        n = T - 1  # the last row has no next token
        log_p, elbo, gap = (np.asarray(getattr(terms, k))[0, :n] for k in ("log_p", "elbo", "gap"))
        checks.append(check_elbo_bound(log_p, elbo, gap))
        data["theorem6"] = {"log_p": log_p, "elbo": elbo, "gap": gap, "seconds": time.perf_counter() - t0,
                            "block": block}
        figures.append(_theorem6_figure(data["theorem6"], layer, out, tokens))
    if tokens is not None:
        data["tokens"] = tokens
    return {"checks": checks, "figures": figures, "data": data}


def information_flow(model, prompts: np.ndarray, out: Path, cont_len: int = 8, samples: int = 16,
                     seed: int = 0) -> dict:
    """The semantic information flow of ``model`` for the prompt set ``prompts`` [K, n] under a uniform law:
    B = ``samples`` continuations of ``cont_len`` tokens sampled from the model itself, their flow, its Doob
    decomposition and the Monte-Carlo I(S → U) (module docstring); writes ``flow.png``."""
    import jax
    import matplotlib

    matplotlib.use("Agg")

    from tvvar.theory.information import directed as I

    if not (isinstance(cont_len, int) and cont_len >= 1):
        raise ValueError(f"cont_len must be an int ≥ 1, got {cont_len!r}")
    if not (isinstance(samples, int) and samples >= 2):
        raise ValueError(f"samples must be an int ≥ 2 (a standard error needs two paths), got {samples!r}")
    t0 = time.perf_counter()
    K = prompts.shape[0]
    log_prior = jnp.full((K,), -math.log(K))
    k, u = I.sample_model(model, prompts, log_prior, jax.random.key(seed), samples, cont_len)
    lc = I.model_log_conditionals(model, prompts, u)  # [B, K, T, V]
    d = I.doob(lc, log_prior, u, k)
    seq = np.asarray(I.sequence_flow(lc, log_prior, u, k))[:, 1:]
    mc = I.directed_information_mc(lc, log_prior, u, k)
    flow, A, M, Vq = (np.asarray(d[n]) for n in ("flow", "A", "M", "V"))
    di, di_se = float(mc["rao_blackwell"]), float(mc["rao_blackwell_se"])
    checks = [check_chain_rule(flow, seq), check_martingale(M[:, -1], Vq[:, -1]), check_di_bound(di, di_se, K)]
    figures = [_flow_figure(flow, A, out, K=K, estimate=di, estimate_se=di_se,
                           estimate_name="Rao–Blackwell Monte-Carlo mean")]
    data = {"K": K, "n": int(prompts.shape[1]), "T": cont_len, "B": samples, "directed_information": di,
            "directed_information_se": di_se, "flow_estimate": float(mc["flow"]),
            "flow_estimate_se": float(mc["flow_se"]), "per_step": np.asarray(mc["per_step"]),
            "mean_flow": flow.mean(0), "mean_compensator": A.mean(0), "prompt_index": np.asarray(k),
            "continuations": np.asarray(u), "seconds": time.perf_counter() - t0,
            "density": np.asarray(I.information_density(lc, log_prior, u, k)), "prompts": np.asarray(prompts)}
    return {"checks": checks, "figures": figures, "data": data}


def _pi_figure(pi: np.ndarray, layer: int, out: Path, max_heads: int, tokens: list[str] | None) -> str:
    """π^h[i, j] of one layer, one heatmap per head (at most ``max_heads``): ``pi_layer{layer}.png``."""
    H, T = pi.shape[0], pi.shape[-1]
    nh = min(H, max_heads)
    cols = min(nh, 4)
    rows = -(-nh // cols)
    fig, axs = plotting.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for h in range(rows * cols):
        ax = axs[h // cols][h % cols]
        if h < nh:
            plotting.heatmap(ax, pi[h], range(T), tokens, "π^h[i, j]", vmin=0, vmax=1)
            ax.set_title(f"head {h}", fontsize=8)
        else:
            ax.set_visible(False)
    fig.suptitle(f"layer {layer}: attention π^h[i, j] (row i: query, column j: key)", fontsize=9)
    return save_figure(fig, out, f"pi_layer{layer}.png")


def _attention_law_and_norms(mixer, z: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Theorem 5's form without the [T, T, D, D] tensor: Σ_j A[i, j] u_j = Σ_h A_h Σ_j π^h[i, j] u_j
    (``head_outputs``), and ‖A[i, j]‖²_F = Σ_{h,h'} π^h[i, j] π^{h'}[i, j] ⟨A_h, A_{h'}⟩_F with the H × H Gram matrix
    of the value maps — O(H·T² + H·D²) memory, so a 124M-class model at T = 2048 fits where the tensor (T²D² ≈
    10¹² numbers) does not. Both exact, and tested against the explicit tensor."""
    pi = mixer.pi(z)  # [B, H, T, T]
    h = np.asarray(mixer.head_outputs(pi, z).sum(1))
    Ah = mixer.value_maps().astype(pi.dtype)  # [H, D_out, D]
    G = jnp.einsum("hde,gde->hg", Ah, Ah, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.einsum("hij,hg,gij->ij", pi[0], G, pi[0], precision=jax.lax.Precision.HIGHEST)
    return h, np.asarray(jnp.sqrt(jnp.maximum(sq, 0)))


def _factored_law_and_norms(mixer) -> Callable | None:
    """The function that gives (Σ_j A[i, j] u_j, ‖A[i, j]‖_F) of ``mixer`` from its factors, or None where only the
    explicit tensor is known: attention (Theorem 5), the selective SSMs (``ssm``, ``ssm_diagonal``, ``ssm_lti``) and
    the Mamba-2 block (``mamba``) — each only where the class keeps the library's ``coefficients`` (a subclass that
    overrides it gets the explicit tensor, whose definition it changed)."""
    from tvvar.decompositions.attention import SoftmaxBilinearAttention
    from tvvar.decompositions.ssm import MambaBlock, SelectiveSSM

    if isinstance(mixer, SoftmaxBilinearAttention):
        return _attention_law_and_norms
    if isinstance(mixer, MambaBlock):
        return _mamba_law_and_norms if type(mixer).coefficients is MambaBlock.coefficients else None
    if isinstance(mixer, SelectiveSSM):
        return _ssm_law_and_norms if type(mixer).coefficients is SelectiveSSM.coefficients else None
    return None


def _ssm_law_and_norms(mixer, z: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 78 for the selective SSMs, A[i, j] = Σ_h L^h[i, j] M_h with M_h = (W_x^h W_o^h)ᵀ (``mixing_matrix``,
    ``value_maps``) — attention's form with L in place of π: Σ_j A[i, j] u_j = Σ_h Σ_j L^h[i, j] M_h u_j and
    ‖A[i, j]‖²_F = Σ_{h,h'} L^h[i, j] L^{h'}[i, j] ⟨M_h, M_{h'}⟩_F. O(H·T² + H·T·D) memory; exact (tested)."""
    hi = jax.lax.Precision.HIGHEST
    L = mixer.mixing_matrix(z)  # [B, H, T, T]
    M = mixer.value_maps().astype(L.dtype)  # [H, D_out, D]
    h = jnp.einsum("bhij,bhje->bie", L, jnp.einsum("hed,bjd->bhje", M, z.astype(L.dtype), precision=hi), precision=hi)
    G = jnp.einsum("hed,ged->hg", M, M, precision=hi)
    sq = jnp.einsum("hij,hg,gij->ij", L[0], G, L[0], precision=hi)
    return np.asarray(h), np.asarray(jnp.sqrt(jnp.maximum(sq, 0)))


def _mamba_law_and_norms(mixer, z: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """The Mamba-2 block (``MambaBlock``'s decomposition, its class docstring): with k = (h, p) one of the E inner
    channels, A_lin[i, m] = Σ_k c_k[i, m] W_o[k]ᵀ W_x[:, k]ᵀ, where c_k[i, m] = γ_i[k] Σ_{l<K} L^h[i, m + l]
    σ_{m+l}[k] w_l[k] (the SSM, the σ-gate and the short convolution's taps w_l; K = 1, w = 1 without one), so

        ‖A_lin[i, m]‖²_F = Σ_{k,k'} c_k c_k' (W_o W_oᵀ)[k, k'] (W_xᵀ W_x)[k, k']      (two E × E Gram matrices)

    and on the diagonal the conv-bias fold A[i, i] = A_lin[i, i] + r_i u_iᵀ/‖u_i‖² adds 2 r_iᵀ A_lin[i, i] u_i/‖u_i‖²
    + ‖r_i‖²/‖u_i‖². The law: Σ_m A[i, m] u_m = Σ_k W_o[k] Σ_m c_k[i, m] (W_x[:, k]·u_m) + r_i. O(T²·E + E²) memory
    instead of O(T²·D²); exact (tested against ``coefficients``)."""
    hi = jax.lax.Precision.HIGHEST
    L, s, aff, gamma = mixer._factors(z)  # [B, H, T, T], [B, T, H, P], …, [B, T, H, P] or None
    adt = L.dtype
    Bsz, T = z.shape[:2]
    H, P = mixer.num_heads, mixer.head_dim
    if mixer.d_conv:
        K = mixer.d_conv
        w = mixer.conv_w[...][:, : H * P].reshape(K, H, P).astype(adt)
        Lp = jnp.pad(L, [(0, 0), (0, 0), (0, 0), (0, K - 1)])
        sp = jnp.pad(s, [(0, 0), (0, K - 1), (0, 0), (0, 0)])
        c = sum(jnp.einsum("bhim,bmhp->bimhp", Lp[..., k:k + T], sp[:, k:k + T] * w[k][None, None], precision=hi)
                for k in range(K))
    else:
        c = jnp.einsum("bhim,bmhp->bimhp", L, s, precision=hi)
    if gamma is not None:
        c = c * gamma[:, :, None]
    c = c.reshape(Bsz, T, T, H * P)  # [B, i, m, k]
    Wx = mixer.W_x[...].astype(adt).reshape(-1, H * P)  # [D, E]
    Wo = mixer.W_o[...].astype(adt).reshape(H * P, -1)  # [E, D_out]
    xw = jnp.einsum("bmd,dk->bmk", z.astype(adt), Wx, precision=hi)  # W_x[:, k]·u_m
    h = jnp.einsum("bimk,bmk,ke->bie", c, xw, Wo, precision=hi)
    K2 = jnp.einsum("ke,le->kl", Wo, Wo, precision=hi) * jnp.einsum("dk,dl->kl", Wx, Wx, precision=hi)
    sq = jnp.einsum("imk,kl,iml->im", c[0], K2, c[0], precision=hi)
    if aff is not None:
        r = mixer._intercept(L, aff, gamma, None)  # [B, T, D_out]
        uu = z.astype(adt)
        n2 = jnp.sum(jnp.square(uu), axis=-1)  # [B, T]
        inv = jnp.where(n2 > 0, 1.0 / jnp.where(n2 > 0, n2, 1.0), 0.0)
        h = h + jnp.where(n2[..., None] > 0, r, 0)
        diag = jnp.einsum("bik,bik,ke->bie", jnp.diagonal(c, axis1=1, axis2=2).swapaxes(1, 2), xw, Wo,
                          precision=hi)  # A_lin[i, i] u_i
        extra = 2 * inv[0] * jnp.sum(r[0] * diag[0], -1) + jnp.square(inv[0]) * jnp.sum(jnp.square(r[0]), -1) * n2[0]
        sq = sq + jnp.diag(extra)
    return np.asarray(h), np.asarray(jnp.sqrt(jnp.maximum(sq, 0)))


def _coef_norm_figure(norms: np.ndarray, layer: int, T: int, out: Path, tokens: list[str] | None) -> str:
    """‖A[i, j]‖_F on the window of the last W positions, labelled by absolute position: ``coef_norm_layer*.png``."""
    W = norms.shape[0]
    fig, ax = plotting.subplots(figsize=(4.4, 3.8))
    window_tokens = None if tokens is None else tokens[T - W:]
    plotting.heatmap(ax, norms, range(T - W, T), window_tokens, "‖A[i, j]‖_F", cmap="magma")
    ax.set_title(f"layer {layer}: coefficient norms, positions {T - W}..{T - 1}", fontsize=8)
    return save_figure(fig, out, f"coef_norm_layer{layer}.png")


def _theorem6_figure(t6: dict, layer: int, out: Path, tokens: list[str] | None) -> str:
    """log P(U), the ELBO and their gap per position: ``theorem6_layer{layer}.png``."""
    n = len(t6["log_p"])
    i = np.arange(n)
    fig, ax = plotting.subplots(figsize=(6, 3.5))
    ax.plot(i, t6["log_p"], label="log P(U)")
    ax.plot(i, t6["elbo"], label="ELBO")
    ax.plot(i, t6["gap"], label="gap KL(Q‖P(J|U))")
    plotting.token_axis(ax, "x", i, None if tokens is None else tokens[:n], label="position i (predicting token i+1)")
    ax.set_ylabel(plotting.nats("log-probability"))
    ax.set_title(f"Theorem 6 terms, layer {layer}")
    ax.legend(fontsize=8)
    return save_figure(fig, out, f"theorem6_layer{layer}.png")


def _flow_figure(flow: np.ndarray, A: np.ndarray, out: Path, *, K: int, estimate: float, estimate_se: float,
                estimate_name: str, name: str = "flow.png") -> str:
    """The semantic information flow of B sampled paths (``flow``, ``A``: [B, T]): the median and 10–90 % band of
    i(S → U_{≤t}) with five highlighted paths, the compensator A_t beside it, and the reported estimate of
    I(S → U) with its standard error in the title."""
    B, T = flow.shape
    t = np.arange(1, T + 1)
    pick = plotting.highlighted(B, 5)
    fig, (a0, a1) = plotting.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    plotting.flow_panels(a0, a1, t, plotting.quantiles(flow), plotting.quantiles(A), flow[pick], A[pick], H=math.log(K),
                  comp_name="compensator A_t = Σ_τ KL_τ")
    a0.set_title("flow i(S → U_{≤t}) of each path", fontsize=9)
    a1.set_title("its predictable part (Doob)", fontsize=9)
    fig.suptitle(f"I(S → U) = {estimate:.3f} ± {estimate_se:.3f} nats ({estimate_name} ± 1 s.e.; "
                 f"K = {K} prompts, B = {B} paths)", fontsize=9)
    return save_figure(fig, out, name)


DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_BUDGET_GIB = 1.0  # --memory-budget: tvvar.theory.transformer.elbo.DEFAULT_MEMORY_BUDGET


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one ``error:`` line (the full usage is one ``--help`` away)."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    def positive(name):
        def parse(v: str) -> int:
            try:
                n = int(v)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name} must be an integer ≥ 1, got {v!r}") from None
            if n < 1:
                raise argparse.ArgumentTypeError(f"{name} must be an integer ≥ 1, got {n}")
            return n
        return parse

    def budget(v: str) -> float:
        try:
            g = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--memory-budget must be a number of GiB > 0, got {v!r}") from None
        if not (math.isfinite(g) and g > 0):
            raise argparse.ArgumentTypeError(f"--memory-budget must be a number of GiB > 0, got {v}")
        return g

    p = _Parser(prog="python -m experiments.analyze", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="Hugging Face checkpoint folder or tvvar run directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--text", type=Path, help="a text file to analyse")
    g.add_argument("--prompt", type=str, help="a prompt string (default with --prompts: its first prompt)")
    p.add_argument("--out", type=Path, required=True,
                   help="output directory (results.json, PNGs); written whole at the end, or not at all")
    p.add_argument("--layer", type=int, default=-1, help="layer for the Theorem 6 terms (default: last; −L..L−1)")
    p.add_argument("--window", type=positive("--window"), default=16, help="positions of the ‖A_ij‖ maps (default 16)")
    p.add_argument("--max-tokens", type=positive("--max-tokens"), default=64,
                   help="truncate the input to this many tokens (default 64)")
    p.add_argument("--memory-budget", type=budget, default=DEFAULT_BUDGET_GIB, metavar="GIB",
                   help="working set of one tile of the Theorem 6 enumeration, in GiB (default "
                        f"{DEFAULT_BUDGET_GIB:g}; tiles of b rows × b positions, [b, H, b, V] logits each)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="parameter and compute dtype of a Hugging Face checkpoint (default float32)")
    p.add_argument("--prompts", type=Path,
                   help="a prompt set (one per line, same token length) for the semantic information flow")
    p.add_argument("--cont-len", type=positive("--cont-len"), default=8, help="output tokens T of the flow (default 8)")
    p.add_argument("--samples", type=int, default=16, help="continuations B sampled for the flow (default 16, ≥ 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampled continuations (default 0)")
    p.add_argument("--html", action="store_true",
                   help="also write view.html: an interactive, self-contained page of the results (experiments.view)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable), so a run trained with your own decomposition loads")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Parse, analyse, write ``--out`` whole (a temporary folder beside it, moved into place at the end: a failed
    run leaves nothing). A mistake in the arguments or the inputs is one ``error:`` line and ``SystemExit(2)``;
    returns the results (:func:`cli` turns a failed check into exit status 1)."""
    import json

    from tvvar.train import CheckpointError

    args = build_parser().parse_args(argv)
    if args.text is None and args.prompt is None and args.prompts is None:
        fail("give the input to analyse: --prompt STR, --text FILE or --prompts FILE")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        fail(f"--out {str(out)!r} exists and is not a folder")
    t0 = time.perf_counter()
    work = None
    try:
        from experiments.train import import_modules

        import_modules(args.imports)
        lm = load_model(args.model, dtype=args.dtype)
        L = len(lm.model.blocks)
        if not -L <= args.layer < L:
            raise ValueError(f"--layer must be in [−{L}, {L - 1}] (the model has {L} layers), got {args.layer}")
        prompts = read_prompts(args.prompts, lm.encode) if args.prompts is not None else None
        if args.text is not None:
            if not args.text.is_file():
                raise FileNotFoundError(f"--text {str(args.text)!r}: no such file")
            text = args.text.read_text()
            ids = np.asarray(lm.encode(text), np.int32).reshape(1, -1)
        elif args.prompt is not None:
            ids = np.asarray(lm.encode(args.prompt), np.int32).reshape(1, -1)
        else:
            ids = prompts[:1]
        ids = ids[:, : args.max_tokens]
        if ids.shape[1] < 2:
            raise ValueError(f"the input must encode to at least 2 tokens, got {ids.shape[1]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        res = analyze(lm.model, ids, work, Options(layer=args.layer, window=args.window,
                                                   memory_budget=int(args.memory_budget * 2**30)),
                      tokens=[lm.decode(int(i)) for i in ids[0]])
        config = {"model": str(args.model), "model_type": lm.kind, "layer": args.layer, "window": args.window,
                  "T": ids.shape[1], "dtype": args.dtype, "memory_budget_gib": args.memory_budget}
        if prompts is not None:
            fl = information_flow(lm.model, prompts, work, args.cont_len, args.samples, args.seed)
            res["checks"] += fl["checks"]
            res["figures"] += fl["figures"]
            res["data"]["information_flow"] = fl["data"]
            fl["data"]["prompt_tokens"] = [[lm.decode(int(i)) for i in row] for row in prompts]
            fl["data"]["continuation_tokens"] = [[lm.decode(int(i)) for i in row]
                                                 for row in fl["data"]["continuations"]]
            config.update(prompts=str(args.prompts), cont_len=args.cont_len, samples=args.samples, seed=args.seed)
        results = {"experiment": "analyze", "config": config,
                   "seconds": round(time.perf_counter() - t0, 3), "checks": res["checks"], "figures": res["figures"],
                   "data": to_jsonable(res["data"])}
        (work / "results.json").write_text(json.dumps(results, indent=2))
        if args.html:
            from experiments.view import write_view

            write_view(results, work)
        _move_into_place(work, out)
        work = None
    except (ValueError, TypeError, KeyError, OSError, CheckpointError) as e:
        fail(str(e) if not isinstance(e, KeyError) else f"missing key {e}")
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    for c in results["checks"]:
        print(format_check(c))
    if "information_flow" in results["data"]:
        fl = results["data"]["information_flow"]
        print(f"I(S → U) ≈ {fl['directed_information']:.4f} ± {fl['directed_information_se']:.4f} nats (1 s.e.; "
              f"K = {fl['K']} prompts, B = {fl['B']} continuations of {fl['T']} tokens)")
    n_fail = sum(not c["passed"] for c in results["checks"])
    print(f"analyze: wrote {len(results['figures'])} figures, results.json{' and view.html' * args.html} to {out}"
          + (f"; {n_fail} check(s) FAILED" if n_fail else ""))
    return results


def _move_into_place(work: Path, out: Path) -> None:
    """``work`` becomes ``out``; a previous ``out`` is replaced only once the new one is complete."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def cli() -> int:
    """Console-script entry: 0 when every check passed, 1 when one failed (as ``reproduce``), 2 on bad input."""
    res = main()
    return 1 if any(not c["passed"] for c in res["checks"]) else 0


if __name__ == "__main__":
    sys.exit(cli())
