"""Analyse a checkpoint as a TV-VAR: π heatmaps, ‖A_tj‖ maps and the Theorem 6 terms of one layer.

    python -m experiments.analyze --model PATH (--text FILE | --prompt STR) --out DIR [--layer L] [--window W]

``PATH`` is a Hugging Face folder (config.json + safetensors; gpt2 / llama / mistral, see
:mod:`tvvar.pretrained`). The prompt is tokenized with the folder's tokenizer.json; without one it must be
space-separated token ids. Writes into DIR:

* ``pi_layer{l}.png`` — π^h[i, j] (Theorem 5) of every head of every layer;
* ``coef_norm_layer{l}.png`` — ‖A[i, j]‖_F, the coefficient matrices of the layer's mixer (Eq. 53) restricted
  to the last ``window`` positions (the full [T, T, D, D] tensor is O(T²D²));
* ``theorem6_layer{l}.png`` — per position: log P, the ELBO and the posterior gap KL(Q ‖ P(J | U)) of the
  latent-position model of layer ``l`` (Theorem 6, by enumeration of every (h, j); the readout after layer
  l is the model's own final norm and head — for l < L − 1 a "logit lens" reading of that layer);
* ``results.json`` — the numbers and three checks (π rows are distributions; the coefficients reproduce the
  mixer's output, the TV-VAR law; ELBO ≤ log P with the gap ≥ 0).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from experiments.common import check, format_check, save_figure, to_jsonable

__all__ = ["analyze", "tokenize", "check_pi_rows", "check_law", "check_elbo_bound", "main"]


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


# ---- the layer's latent-position model --------------------------------------------------------------


class _Shift:
    def __init__(self, b):
        self.b = b

    def __call__(self, x):
        return x + self.b.reshape((1,) * (x.ndim - 1) + (-1,))


class _BiasFolded:
    """Block l with its intercept b moved into the residual input: the elbo module sees x' = x + b, a norm
    z = norm₁(x' − b) = norm₁(x) and x' + Σ π A z = x + (mixer(z) + b) — the same block, exactly."""

    def __init__(self, block, b):
        self.inner, self.b = block, b
        self.residual, self.psi, self.norm2, self.mixer = block.residual, block.psi, block.norm2, block.mixer

    def norm1(self, x):
        x = x - self.b.reshape((1,) * (x.ndim - 1) + (-1,))
        return self.inner.norm1(x) if self.inner.norm1 is not None else x

    def _sub(self, f, norm, x):
        return self.inner._sub(f, norm, x)


class _Truncated:
    """The model's layers 0..l with its own final norm and readout (what tvvar.theory.elbo reads)."""

    def __init__(self, model, layer):
        self.cfg, self.embed_tokens = model.cfg, model.embed_tokens
        self.final_norm, self.readout = model.final_norm, model.readout
        blocks = list(model.blocks[: layer + 1])
        last = blocks[-1]
        if getattr(last, "mixer_bias", None) is not None:
            if not last.residual:
                raise ValueError("a mixer intercept without a residual cannot be folded (layer has residual=False)")
            b = last.mixer_bias[...]
            blocks = [*blocks[:-1], _Shift(b), _BiasFolded(last, b)]
        self.blocks = blocks


# ---- the analysis ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    layer: int = -1
    window: int = 16
    max_heads_plotted: int = 16


def analyze(model, ids: np.ndarray, out: Path, opts: Options = Options(), tokens: list[str] | None = None) -> dict:
    """Run every measure on ``model`` for ``ids`` [1, T]; writes PNGs and returns the results dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    from tvvar.core import mix_dense
    from tvvar.theory.elbo import elbo_terms

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
    pis, law_fast, law_coef, coef_norms = [], [], [], []
    for li, block in enumerate(tqdm(list(model.blocks), desc="analyze: layers")):
        z = block.norm1(x) if block.norm1 is not None else x
        mixer = block.mixer
        pi = np.asarray(mixer.pi(z)) if hasattr(mixer, "pi") else None
        if pi is not None:
            pis.append(pi)
            H = pi.shape[1]
            nh = min(H, opts.max_heads_plotted)
            cols = min(nh, 4)
            rows = -(-nh // cols)
            fig, axs = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
            for h in range(rows * cols):
                ax = axs[h // cols][h % cols]
                if h < nh:
                    ax.imshow(pi[0, h], cmap="viridis", vmin=0, vmax=1)
                    ax.set_title(f"layer {li} head {h}", fontsize=8)
                ax.axis("off")
            fig.suptitle("π^h[i, j] (row i: query, column j: key)")
            figures.append(save_figure(fig, out, f"pi_layer{li}.png"))
        # coefficients on the last W positions: the window is a prefix-free slice, so run the mixer on the
        # full sequence and compare its rows T−W..T−1 with Σ_j A[i, j] u_j over j < T (A zero outside S(i))
        zw = z[:, :]
        A = mixer.coefficients(zw)  # [1, T, T, D, D]
        h_coef = np.asarray(mix_dense(A, zw))[:, T - W:]
        h_fast = np.asarray(mixer(zw))[:, T - W:]
        law_fast.append(h_fast)
        law_coef.append(h_coef)
        norms = np.asarray(jnp.sqrt(jnp.sum(jnp.square(A[0, T - W:, T - W:]), axis=(-2, -1))))
        coef_norms.append(norms)
        del A
        fig, ax = plt.subplots(figsize=(4, 3.5))
        im = ax.imshow(norms, cmap="magma")
        ax.set_title(f"layer {li}: ‖A[i, j]‖_F, positions {T - W}..{T - 1}", fontsize=8)
        fig.colorbar(im, ax=ax)
        figures.append(save_figure(fig, out, f"coef_norm_layer{li}.png"))
        x = block(x)
    if pis:
        checks.append(check_pi_rows(np.concatenate([p.reshape(-1, p.shape[-1]) for p in pis])[None, None]))
    checks.append(check_law(np.concatenate(law_fast, -1), np.concatenate(law_coef, -1)))
    data["coef_norms"] = coef_norms
    data["pi"] = pis

    t0 = time.perf_counter()
    trunc = _Truncated(model, layer)
    targets = jnp.concatenate([ids_j[:, 1:], ids_j[:, -1:]], axis=1)
    terms = elbo_terms(trunc, ids_j[:, :], targets, method="enumerate")
    n = T - 1  # the last row has no next token
    log_p, elbo, gap = (np.asarray(getattr(terms, k))[0, :n] for k in ("log_p", "elbo", "gap"))
    checks.append(check_elbo_bound(log_p, elbo, gap))
    data["theorem6"] = {"log_p": log_p, "elbo": elbo, "gap": gap, "seconds": time.perf_counter() - t0}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(log_p, label="log P(U)")
    ax.plot(elbo, label="ELBO")
    ax.plot(gap, label="gap KL(Q‖P(J|U))")
    ax.set_xlabel("position i")
    ax.set_ylabel("nats")
    ax.set_title(f"Theorem 6 terms, layer {layer}")
    ax.legend(fontsize=8)
    figures.append(save_figure(fig, out, f"theorem6_layer{layer}.png"))
    if tokens is not None:
        data["tokens"] = tokens
    return {"checks": checks, "figures": figures, "data": data}


def main(argv: list[str] | None = None) -> dict:
    import json

    from tvvar.pretrained import load_pretrained

    p = argparse.ArgumentParser(prog="python -m experiments.analyze", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="Hugging Face checkpoint folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", type=Path, help="a text file to analyse")
    g.add_argument("--prompt", type=str, help="a prompt string")
    p.add_argument("--out", type=Path, required=True, help="output directory (results.json, PNGs)")
    p.add_argument("--layer", type=int, default=-1, help="layer for the Theorem 6 terms (default: last)")
    p.add_argument("--window", type=int, default=16, help="positions of the ‖A_ij‖ maps (default 16)")
    p.add_argument("--max-tokens", type=int, default=64, help="truncate the input to this many tokens")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    pre = load_pretrained(args.model, dtype=args.dtype)
    text = args.text.read_text() if args.text is not None else args.prompt
    ids = tokenize(text, pre.tokenizer, pre.model.cfg.vocab_size)[:, : args.max_tokens]
    toks = None if pre.tokenizer is None else [pre.tokenizer.id_to_token(int(i)) for i in ids[0]]
    res = analyze(pre.model, ids, args.out, Options(layer=args.layer, window=args.window), tokens=toks)
    results = {"experiment": "analyze", "config": {"model": str(args.model), "model_type": pre.model_type,
                                                    "layer": args.layer, "window": args.window, "T": ids.shape[1]},
               "seconds": round(time.perf_counter() - t0, 3), "checks": res["checks"], "figures": res["figures"],
               "data": to_jsonable(res["data"])}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    for c in res["checks"]:
        print(format_check(c))
    print(f"analyze: wrote {len(res['figures'])} figures and results.json to {args.out}")
    return results


if __name__ == "__main__":
    main()
