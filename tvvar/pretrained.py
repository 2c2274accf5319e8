"""Hugging Face checkpoints (GPT-2, Llama, Mistral, Qwen2, Phi-3, OLMo 2, Gemma, Gemma 2, GPT-NeoX, Mamba-1, Mamba-2) as
exact tvvar TV-VAR models.

``load_pretrained(path)`` reads ``config.json`` and ``model.safetensors`` (or the shards named by
``model.safetensors.index.json``) with the ``safetensors`` package (numpy arrays, no torch) and builds a
:class:`tvvar.model.TVVARModel` computing the same function, so every tvvar measure (π of Theorem 5, the
coefficients A_tj, the Theorem 6 terms) applies to it:

==========  ==========================================================================================
gpt2        LayerNorm (bias), attention with q/k biases (the v/o biases fold into the intercept
            ``mixer_bias`` = W_oᵀ b_v + b_o, exact because Σ_j π_tj = 1), GELU-tanh MLP with biases,
            learned absolute positions, tied plain (not sphere-normalised) embedding.
llama       RMSNorm, rotary attention (B(Δ) = W_q R(−Δ) W_kᵀ/√K), grouped-query heads, SwiGLU, untied head;
            ``rope_scaling`` of type ``llama3`` (Llama 3.1/3.2) or ``linear`` rescales the rotary frequencies
            (:func:`tvvar.decompositions.attention.rope_inv_freq`); ``dynamic`` (NTK) keeps them up to the original
            context L = max_position_embeddings, where its function is fixed, and longer inputs or caches are
            refused; ``yarn``, ``longrope`` are refused by name.
mistral     the Llama layout with ``sliding_window`` w: attention with a banded support S(i) = {i − w + 1, …, i}
            (transformers' PyTorch convention; its Flax Mistral keeps w + 1 keys), applied at every length —
            ``Attention(window=w)``, whose blockwise path skips the key blocks outside every row's band.
qwen2       the Llama layout with q/k/v biases (Qwen2 / Qwen2.5): the q/k biases, added before the rotation, make
            the score an affine relative form ū_iᵀ B̄_h(i − j) ū_j, ū = [u; 1]
            (:meth:`~tvvar.decompositions.attention.Attention.affine_relative_forms`; with rotary the bias terms
            vary with i − j and change π); the value bias folds into ``mixer_bias`` = Σ_h W_o^hᵀ b_v^h and is kept
            as loaded (``Pretrained.extras``) so that saving writes it back bit-exactly. A sliding window
            (``use_sliding_window``, ``layer_types``) is refused.
phi3        the Llama function with fused ``qkv_proj`` ([W_q; W_k; W_v] by rows) and ``gate_up_proj`` ([W_gate;
            W_up]) on disk, and a ``sliding_window`` as Mistral's; a ``partial_rotary_factor`` other than 1 and
            ``rope_scaling`` of type ``longrope`` (the 128k checkpoints) are refused by field.
gpt_neox    GPT-NeoX / Pythia: LayerNorm with biases, parallel residual x + attn(n₁ x) + mlp(n₂ x)
            (``ModelConfig.parallel_residual``), partial rotary (``Attention(rotary_dim=rotary_pct·K)``), fused
            per-head [q | k | v] with biases (q/k biases in π, the v and output biases folded into the intercept),
            exact or tanh GELU MLP with biases, untied ``embed_out``.
olmo2       the Llama projections and MLP with QK-norm (RMSNorm over the whole query width H·K and key width
            G·K, before the rotation: ``Attention(qk_norm=True)``) and post-sublayer norms x + norm(f(x))
            (``ModelConfig.norm_position="post"``); π is then no bilinear form, A[t, j] = Σ_h π^h[t, j] A_h holds.
gemma       the Llama layout with token vectors scaled by √D (``ModelConfig.embed_scale``, rounded to the compute
            dtype as transformers does), RMSNorm x/rms(x)·(1 + w) (norm ``"rms_offset"``), GeGLU with the tanh
            GELU (Ψ ``"geglu"``), head_dim ≠ D/H allowed, the head tied; A_tj keeps Theorem 5's rotary form
            (B_h(Δ) = W_q R(−Δ) W_kᵀ/√K): the √D scale multiplies u_j, not the coefficients.
gemma2      Gemma's layout (√D, RMSNorm (1 + w), GeGLU with the tanh GELU — ``hidden_activation`` —, head_dim free,
            tied head) with four norms a layer, x + n_post(attn(n_in x)), then x + n_post'(mlp(n_pre x))
            (``ModelConfig.norm_position="sandwich"``); scores q·k · query_pre_attn_scalar^(−1/2)
            (``Attention(score_scale=…)``) soft-capped s ↦ c·tanh(s/c), c = ``attn_logit_softcapping``
            (``Attention(logit_softcap=c)``, before the mask); a sliding window of ``sliding_window`` keys
            (Mistral's S(i)) on the layers whose ``layer_types`` entry is "sliding_attention" — without
            ``layer_types``, the even layers i = 0, 2, … as Gemma2Config fills it — full attention on the others
            (``ModelConfig.layer_mixer``); final logits soft-capped by ``final_logit_softcapping``
            (``ModelConfig.logit_softcap``); either cap null is off. A_tj = Σ_h π^h_tj A_h holds, π^h the softmax of
            capped relative bilinear scores, banded on the local layers: a TV-VAR whose π is no bilinear form (the
            form methods refuse). Absent fields take Gemma2Config's defaults (query_pre_attn_scalar 256,
            sliding_window 4096, caps 50 / 30, head_dim 256, 4 key/value heads).
mamba2      the state-spaces (``mamba_ssm``) layout: L × [x + mixer(RMSNorm x)], no MLP, final RMSNorm,
            tied or untied head; the mixer is :class:`tvvar.decompositions.MambaBlock` with grouped B/C, the
            x-channel conv bias, the gated RMSNorm (either order), D and Δ-bias per head, A = −exp(A_log).
mamba       Mamba-1, the state-spaces (``mamba_ssm``) layout or transformers' ``MambaForCausalLM``: L × [x +
            mixer(RMSNorm x)], final RMSNorm, tied or untied head; the mixer is
            :class:`tvvar.decompositions.ssm.Mamba1Block`: in_proj → (x, z), depthwise causal conv with bias, SiLU,
            x_proj(x) → (Δ̃ of rank R, B, C), Δ = softplus(dt_proj Δ̃), a diagonal SSM with A = −exp(A_log) of
            shape [E, N] (per channel and state), D, gate SiLU(z), out_proj.
==========  ==========================================================================================

Mamba-2 (``model_type: "mamba2"``, or a mamba_ssm config without ``model_type`` whose ``ssm_cfg.layer`` is
"Mamba2"): the fields of ``mamba_ssm``'s ``MambaConfig`` (``d_model``, ``n_layer``, ``vocab_size``,
``pad_vocab_size_multiple`` — the table is padded as mamba_ssm pads it —, ``tie_embeddings``, ``rms_norm``,
``norm_epsilon``, ``residual_in_fp32`` and ``fused_add_norm`` (precision / kernel choices only)) and of
``Mamba2`` (``d_state``, ``d_conv``, ``expand``, ``headdim``, ``ngroups``, ``rmsnorm``, ``norm_before_gate``,
``conv_bias``, …), flat or under ``ssm_cfg``. Keys: ``backbone.embedding`` (or transformers'
``backbone.embeddings``), ``backbone.layers.{i}.norm``, ``backbone.layers.{i}.mixer.{in_proj, conv1d,
A_log, D, dt_bias, norm, out_proj}`` (in_proj rows [z, x, B, C, Δ]), ``backbone.norm_f``, ``lm_head``; PyTorch
layout only. Refused by name: an MLP (``d_intermediate`` > 0), hybrid attention layers (``attn_layer_idx``),
LayerNorm blocks (``rms_norm: false``), ``D_has_hdim``, projection biases (``bias``), a ``dt_limit`` other
than (0, ∞), ``d_ssm`` < expand·d_model. transformers' ``Mamba2Config`` names (``hidden_size``, ``n_groups``,
``state_size``, …, ``model_type: "mamba2"``) load too, with its gated RMSNorm over all E channels (not per group)
and ``layer_norm_epsilon`` (``MambaBlock(norm_groups=1)``), no vocabulary padding and an untied head by default.

Mamba-1 (``model_type: "mamba"``, or a mamba_ssm config without ``model_type`` whose ``ssm_cfg`` names no layer or
"Mamba1"): mamba_ssm's ``MambaConfig`` fields as for Mamba-2 (``pad_vocab_size_multiple`` pads the table) and
``Mamba``'s (``d_state``, ``d_conv``, ``expand``, ``dt_rank`` — "auto" = ⌈d_model/16⌉ —, ``conv_bias``, ``bias``;
``dt_min`` / ``dt_max`` / ``dt_init`` / ``dt_scale`` / ``dt_init_floor`` only initialise), flat or under ``ssm_cfg``;
or transformers' ``MambaConfig`` (``hidden_size``, ``state_size``, ``num_hidden_layers``, ``expand``,
``conv_kernel``, ``use_bias``, ``use_conv_bias``, ``hidden_act``, ``time_step_rank``, ``layer_norm_epsilon``,
``tie_word_embeddings``; the ``time_step_*`` initialisation fields are ignored), with no vocabulary padding (the
``pad_vocab_size_multiple``, ``d_model``, ``n_layer``, ``intermediate_size``, ``rms_norm``, ``ssm_cfg: {}`` that
converted hub configs carry must agree and are otherwise ignored, as transformers ignores them). Keys:
``backbone.embedding`` (mamba_ssm) or ``backbone.embeddings`` (transformers), ``backbone.layers.{i}.norm``,
``backbone.layers.{i}.mixer.{in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj}`` (in_proj rows [x, z], x_proj
rows [Δ̃, B, C]), ``backbone.norm_f``, ``lm_head``; PyTorch layout only. Refused by name: in/out projection biases
(``bias`` / ``use_bias``), ``hidden_act`` other than silu, an MLP, attention layers, LayerNorm blocks, a non-empty
``ssm_cfg`` beside transformers' names.

Both layouts on disk load. *PyTorch* (what hub users have): GPT-2 ``h.0.attn.c_attn.weight`` with Conv1D's
(in, out) layout, optionally under ``transformer.``; Llama ``model.layers.0.self_attn.q_proj.weight`` as
(out, in). *Flax* (``FlaxPreTrainedModel.save_pretrained``): ``kernel`` / ``embedding`` / ``scale`` names,
GPT-2 kernels (out, in), Llama kernels (in, out). Internally every file is first renamed to the PyTorch
layout (the documented renaming: ``kernel``/``embedding``/``scale`` → ``weight``, transposing 2-D kernels
except GPT-2's, whose Flax kernels are already stored (out, in) = the Conv1D transpose), then mapped.

Any config field that would change the function and is not implemented is refused with a ValueError naming
the field (rope scaling, sliding window, attention/MLP biases in Llama, other activations, ...); unknown
fields outside the list of harmless ones are refused too — never a silently different model.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tvvar.decompositions.attention import check_rope_scaling
from tvvar.model import ModelConfig, TVVARModel

__all__ = ["Pretrained", "load_pretrained", "save_pretrained", "read_safetensors", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "phi3", "olmo2", "gemma", "gemma2",
                         "mamba2", "mamba")
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_DTYPES = ("float32", "float64", "bfloat16", "float16")

# fields that never change the function computed at inference (dropout, ids, bookkeeping)
_HARMLESS = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "initializer_range", "task_specific_params",
    "attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_activation", "summary_first_dropout",
    "summary_proj_to_labels", "summary_type", "summary_use_proj", "attention_dropout", "n_ctx",
    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id", "tokenizer_class",
    "prefix", "finetuning_task", "problem_type", "pretraining_tp", "gradient_checkpointing", "max_length",
    "do_sample", "num_beams", "temperature", "top_k", "top_p", "is_decoder", "is_encoder_decoder",
    "bad_words_ids", "decoder_start_token_id", "early_stopping", "length_penalty", "min_length",
    "no_repeat_ngram_size", "num_return_sequences", "repetition_penalty", "chunk_size_feed_forward",
    "cross_attention_hidden_size", "tie_encoder_decoder", "torchscript", "use_bfloat16", "pruned_heads",
    "diversity_penalty", "num_beam_groups", "output_scores", "return_dict_in_generate", "remove_invalid_values",
    "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "sep_token_id", "typical_p", "encoder_no_repeat_ngram_size", "tf_legacy_loss",
    "use_sliding_window", "max_window_layers",
}


@dataclass
class Pretrained:
    """A loaded checkpoint: the tvvar model, the raw ``config.json``, the tokenizer (None without a
    tokenizer.json) and the layout the weights were found in ("pytorch" or "flax")."""

    model: TVVARModel
    hf_config: dict[str, Any]
    tokenizer: Any
    layout: str
    embedding_key: str | None = None  # Mamba-1/2: the embedding's name on disk (mamba_ssm's or transformers')
    #: checkpoint tensors the TV-VAR form folds away (Qwen2's value biases, PyTorch-layout names), as loaded
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return _model_type(self.hf_config)


def _model_type(c: dict) -> Any:
    """``model_type``; for a mamba_ssm config (which has none): "mamba2" when its ssm_cfg.layer is Mamba2, "mamba"
    when it has ``d_model`` and its ssm_cfg names no layer or Mamba1 (mamba_ssm's default layer)."""
    mt = c.get("model_type")
    ssm = c.get("ssm_cfg", {})
    if mt is None and isinstance(ssm, dict) and ssm.get("layer") == "Mamba2":
        return "mamba2"
    if mt is None and isinstance(ssm, dict) and "d_model" in c and ssm.get("layer", "Mamba1") == "Mamba1":
        return "mamba"
    return mt


# ---- reading and writing safetensors -----------------------------------------------------------------


def read_safetensors(path: str | os.PathLike) -> dict[str, Callable[[], np.ndarray]]:
    """Lazy readers {key: () -> numpy array} of one file (memory-mapped by ``safetensors``); a missing,
    truncated or corrupt file raises a ValueError naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file {str(path)!r} does not exist")
    try:
        handle = safe_open(str(path), framework="numpy")
        keys = list(handle.keys())
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"cannot read safetensors file {str(path)!r} (truncated or corrupt?): {e}") from None
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    for k in keys:
        end = 8 + n + header[k]["data_offsets"][1]
        if end > size:
            raise ValueError(f"safetensors file {str(path)!r} is truncated: key {k!r} needs {end} bytes, "
                             f"the file has {size}")

    def reader(k):
        def read():
            # a memory map of this tensor's bytes only: once the caller has copied it (to a jax array) and
            # dropped it, its pages leave the process, so loading peaks near the weights' size, not twice it
            info = header[k]
            dt = _ST_DTYPES.get(info["dtype"])
            if dt is None:
                try:
                    return handle.get_tensor(k)
                except Exception as e:
                    raise ValueError(f"cannot read key {k!r} from {str(path)!r}: {e}") from None
            start = 8 + n + info["data_offsets"][0]
            shape = tuple(info["shape"])
            if math.prod(shape) == 0:
                return np.zeros(shape, dt)
            return np.memmap(path, dtype=dt, mode="r", offset=start, shape=shape)
        return read

    return {k: reader(k) for k in keys}


def _st_dtypes() -> dict[str, np.dtype]:
    import ml_dtypes

    return {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
            "BF16": np.dtype(ml_dtypes.bfloat16)}


_ST_DTYPES = _st_dtypes()


def _weight_readers(folder: Path) -> tuple[dict[str, Callable[[], np.ndarray]], dict[str, str]]:
    """Readers for every tensor of the checkpoint and the file each key lives in."""
    index = folder / INDEX_NAME
    single = folder / WEIGHTS_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"index file {str(index)!r} is not a safetensors index with a weight_map: {e}") from None
        files: dict[str, dict] = {}
        readers, where = {}, {}
        for key, shard in weight_map.items():
            if shard not in files:
                if not (folder / shard).is_file():
                    raise FileNotFoundError(f"index file {str(index)!r} names shard {shard!r} (key {key!r}), "
                                            "which does not exist")
                files[shard] = read_safetensors(folder / shard)
            if key not in files[shard]:
                raise ValueError(f"index file {str(index)!r} puts key {key!r} in shard {shard!r}, which lacks it")
            readers[key], where[key] = files[shard][key], str(folder / shard)
        return readers, where
    if single.is_file():
        r = read_safetensors(single)
        return r, {k: str(single) for k in r}
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {str(folder)!r}")


def _write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


# ---- config → ModelConfig ------------------------------------------------------------------------


def _refuse(cfg: dict, checks: dict[str, Callable[[Any], bool]], defaults: dict[str, Any], what: str) -> None:
    for name, value in cfg.items():
        if name in checks:
            if not checks[name](value):
                raise ValueError(f"config.json field {name!r} = {value!r} is not supported for {what} "
                                 "(tvvar would compute a different model)")
        elif name not in _HARMLESS and name not in defaults:
            raise ValueError(f"config.json field {name!r} = {value!r} is not implemented for {what}; "
                             "refusing rather than loading a possibly different model")


def _gpt2_config(c: dict, dtype: str) -> ModelConfig:
    known = {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "layer_norm_epsilon",
             "tie_word_embeddings"}
    _refuse(c, {
        "activation_function": lambda v: v in ("gelu_new", "gelu_pytorch_tanh"),
        "scale_attn_weights": lambda v: v is True,
        "scale_attn_by_inverse_layer_idx": lambda v: v is False,
        "reorder_and_upcast_attn": lambda v: v is False,
        "add_cross_attention": lambda v: v is False,
        "rope_scaling": lambda v: v is None,
    }, dict.fromkeys(known), "model_type 'gpt2'")
    D, H = c["n_embd"], c["n_head"]
    if D % H:
        raise ValueError(f"config.json: n_embd={D} is not divisible by n_head={H}")
    return ModelConfig(
        vocab_size=c["vocab_size"], d_model=D, num_layers=c["n_layer"], decomposition="attention",
        mixer={"num_heads": H, "qk_bias": True}, psi="gelu_mlp", psi_options={"d_ff": c.get("n_inner") or 4 * D},
        norm="layernorm", norm_eps=float(c.get("layer_norm_epsilon", 1e-5)), tied=c.get("tie_word_embeddings", True),
        max_len=c["n_positions"], embedding="plain", mixer_bias=True, param_dtype=dtype, dtype=dtype)


def _rope_scaling(c: dict) -> dict | None:
    """config.json's ``rope_scaling``, checked (:func:`check_rope_scaling`). A ``dynamic`` one (dynamic NTK) gets its
    original context L from the config: transformers keeps θ's frequencies while the length is at most
    ``max_position_embeddings`` (or a larger ``original_max_position_embeddings``), so L is the larger of the two."""
    rs = c.get("rope_scaling")
    if isinstance(rs, dict) and rs.get("rope_type", rs.get("type")) == "dynamic":
        known = [v for v in (c.get("max_position_embeddings"), rs.get("original_max_position_embeddings"))
                 if isinstance(v, int) and not isinstance(v, bool) and v > 0]
        if not known:
            raise ValueError("rope_scaling of type 'dynamic' needs max_position_embeddings (its original context) "
                             "in config.json")
        rs = {**rs, "original_max_position_embeddings": max(known)}
    return check_rope_scaling(rs)


def _llama_config(c: dict, dtype: str, *, check: bool = True, rope_scaling: dict | None = None,
                  window: int | None = None) -> ModelConfig:
    mt = c["model_type"]
    known = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
             "tie_word_embeddings", "rope_scaling"}
    if check:  # (a family built on this layout checks its own fields first and passes check=False)
        rope_scaling = _rope_scaling(c)  # a type not implemented is refused by name
        _refuse(c, {
            "hidden_act": lambda v: v == "silu",
            "attention_bias": lambda v: v is False,
            "mlp_bias": lambda v: v is False,
            # Mistral's sliding window (S(i) = {i − w + 1, …, i}, transformers' PyTorch convention): implemented,
            # applied at every length; Llama has none
            "sliding_window": lambda v: v is None or (mt == "mistral" and isinstance(v, int)
                                                      and not isinstance(v, bool) and v >= 1),
        }, dict.fromkeys(known), f"model_type {mt!r}")
        window = c.get("sliding_window") if mt == "mistral" else None
    D, H = c["hidden_size"], c["num_attention_heads"]
    K = c.get("head_dim") or D // H
    G = c.get("num_key_value_heads") or H
    if H % G:
        raise ValueError(f"config.json: num_attention_heads={H} is not divisible by num_key_value_heads={G}")
    return ModelConfig(
        vocab_size=c["vocab_size"], d_model=D, num_layers=c["num_hidden_layers"], decomposition="attention",
        mixer={"num_heads": H, "num_kv_heads": G, "head_dim": K, "rotary": True,
               "rope_theta": float(c.get("rope_theta", 10000.0)),
               **({"rope_scaling": rope_scaling} if rope_scaling is not None else {}),
               **({"window": window} if window is not None else {})},
        psi="swiglu", psi_options={"d_ff": c["intermediate_size"]}, norm="rms",
        norm_eps=float(c.get("rms_norm_eps", 1e-6)), tied=bool(c.get("tie_word_embeddings", False)),
        max_len=None, embedding="plain", param_dtype=dtype, dtype=dtype)


def _qwen2_config(c: dict, dtype: str) -> ModelConfig:
    """Qwen2 / Qwen2.5: the Llama layout with q/k/v biases (no output bias). The q/k biases are added before the
    rotation, so they enter π through the affine relative form of
    :meth:`tvvar.decompositions.attention.Attention.affine_relative_forms`; the value bias folds into the intercept
    ``mixer_bias`` = Σ_h W_o^hᵀ b_v^h (exact: Σ_j π_ij = 1), so A[i, j] = Σ_h π^h[i, j] A_h keeps its form."""
    known = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
             "tie_word_embeddings", "rope_scaling", "sliding_window", "max_window_layers"}
    rope_scaling = _rope_scaling(c)
    _refuse(c, {
        "hidden_act": lambda v: v == "silu",
        # a sliding window is used only with use_sliding_window (on the layers ≥ max_window_layers): not implemented
        "use_sliding_window": lambda v: v is False,
        "layer_types": lambda v: isinstance(v, list) and all(x == "full_attention" for x in v),
        "add_cross_attention": lambda v: v is False,
    }, dict.fromkeys(known), "model_type 'qwen2'")
    base = _llama_config({**c, "model_type": "qwen2", "attention_bias": False}, dtype, check=False,
                         rope_scaling=rope_scaling)
    return base.replace(mixer={**base.mixer, "qk_bias": True}, mixer_bias=True)


def _phi3_config(c: dict, dtype: str) -> ModelConfig:
    """Phi-3: the Llama function with fused projections on disk (``qkv_proj`` = [W_q; W_k; W_v], ``gate_up_proj`` =
    [W_gate; W_up]) and Mistral's sliding window (``sliding_window``, transformers' convention). Refused by field:
    a partial rotary factor other than 1, ``rope_scaling`` of type ``longrope`` (the 128k checkpoints)."""
    known = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
             "tie_word_embeddings", "rope_scaling", "original_max_position_embeddings", "resid_pdrop", "embd_pdrop",
             "sliding_window"}
    rope_scaling = _rope_scaling(c)
    _refuse(c, {
        "hidden_act": lambda v: v == "silu",
        "attention_bias": lambda v: v is False,
        "partial_rotary_factor": lambda v: v == 1.0,
        "sliding_window": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        "add_cross_attention": lambda v: v is False,
    }, dict.fromkeys(known), "model_type 'phi3'")
    return _llama_config({**c, "model_type": "phi3"}, dtype, check=False, rope_scaling=rope_scaling,
                         window=c.get("sliding_window"))


def _gpt_neox_config(c: dict, dtype: str) -> ModelConfig:
    """GPT-NeoX / Pythia: LayerNorm with biases, parallel residual (x + attn(n₁ x) + mlp(n₂ x)), partial rotary
    (the first rotary_pct·K channels of each head), fused per-head [q | k | v] projections with biases, a GELU
    MLP with biases, untied ``embed_out``."""
    known = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "rotary_pct", "partial_rotary_factor", "rotary_emb_base", "rope_theta", "max_position_embeddings",
             "layer_norm_eps", "use_parallel_residual", "tie_word_embeddings", "rope_scaling", "hidden_dropout",
             "classifier_dropout", "attention_bias"}
    rope_scaling = _rope_scaling(c)
    _refuse(c, {
        "hidden_act": lambda v: v in ("gelu", "gelu_new", "gelu_pytorch_tanh"),
        "attention_bias": lambda v: v is True,
        "tie_word_embeddings": lambda v: v is False,
        "add_cross_attention": lambda v: v is False,
    }, dict.fromkeys(known), "model_type 'gpt_neox'")
    D, H = c["hidden_size"], c["num_attention_heads"]
    if D % H:
        raise ValueError(f"config.json: hidden_size={D} is not divisible by num_attention_heads={H}")
    K = D // H
    pct = float(c.get("partial_rotary_factor", c.get("rotary_pct", 0.25)))
    rotary_dim = int(K * pct)
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"config.json: rotary_pct={pct} gives {rotary_dim} rotary channels of head_dim {K}; an even "
                         "number ≥ 2 is implemented")
    return ModelConfig(
        vocab_size=c["vocab_size"], d_model=D, num_layers=c["num_hidden_layers"], decomposition="attention",
        mixer={"num_heads": H, "head_dim": K, "rotary": True, "rotary_dim": rotary_dim, "qk_bias": True,
               "rope_theta": float(c.get("rope_theta", c.get("rotary_emb_base", 10000))),
               **({"rope_scaling": rope_scaling} if rope_scaling is not None else {})},
        psi="gelu_mlp", psi_options={"d_ff": c["intermediate_size"],
                                     "approximate": c.get("hidden_act", "gelu") != "gelu"},
        norm="layernorm", norm_eps=float(c.get("layer_norm_eps", 1e-5)), tied=False, max_len=None,
        embedding="plain", mixer_bias=True, parallel_residual=bool(c.get("use_parallel_residual", True)),
        param_dtype=dtype, dtype=dtype)


def _olmo2_config(c: dict, dtype: str) -> ModelConfig:
    """OLMo 2: the Llama projections and MLP with QK-norm (RMSNorm over the whole query and key widths, before the
    rotation) and sublayer post-norms, x + norm(f(x)) (``ModelConfig.norm_position="post"``)."""
    known = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings",
             "rope_scaling"}
    rope_scaling = _rope_scaling(c)
    _refuse(c, {
        "hidden_act": lambda v: v == "silu",
        "attention_bias": lambda v: v is False,
        "add_cross_attention": lambda v: v is False,
    }, dict.fromkeys(known), "model_type 'olmo2'")
    base = _llama_config({**c, "model_type": "olmo2"}, dtype, check=False, rope_scaling=rope_scaling)
    return base.replace(mixer={**base.mixer, "qk_norm": True, "qk_norm_eps": float(c.get("rms_norm_eps", 1e-6))},
                        norm_position="post")


def _gemma_config(c: dict, dtype: str) -> ModelConfig:
    """Gemma (1): the Llama layout with the token vectors scaled by √D, RMSNorm x/rms(x)·(1 + w), GeGLU with the
    tanh GELU, head_dim free of D/H, the head always tied."""
    known = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
             "rope_scaling", "hidden_act", "hidden_activation"}
    rope_scaling = _rope_scaling(c)
    # transformers' PyTorch Gemma applies hidden_act, its Flax Gemma hidden_activation (None: the tanh GELU); only
    # the tanh GELU is implemented, and both fields must agree on it (a hub config with hidden_act "gelu" is the
    # exact GELU to PyTorch: a different function)
    act, flax_act = c.get("hidden_act", "gelu_pytorch_tanh"), c.get("hidden_activation")
    if act != "gelu_pytorch_tanh" or flax_act not in (None, "gelu_pytorch_tanh"):
        raise ValueError(f"config.json: model_type 'gemma' with hidden_act={act!r}, hidden_activation={flax_act!r}: "
                         "only the tanh GELU ('gelu_pytorch_tanh') is implemented; refusing rather than loading a "
                         "possibly different model")
    _refuse(c, {
        "attention_bias": lambda v: v is False,
        "tie_word_embeddings": lambda v: v is True,
    }, dict.fromkeys(known), "model_type 'gemma'")
    base = _llama_config({**c, "model_type": "gemma"}, dtype, check=False, rope_scaling=rope_scaling)
    return base.replace(psi="geglu", norm="rms_offset", tied=True, embed_scale=math.sqrt(base.d_model))


#: transformers 4.57's Gemma2Config defaults of the fields that change the function (applied when a field is absent)
_GEMMA2_DEFAULTS = {"num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
                    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
                    "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "tie_word_embeddings": True}
_GEMMA2_LAYER_TYPES = ("sliding_attention", "full_attention")


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _gemma2_config(c: dict, dtype: str) -> ModelConfig:
    """Gemma 2: Gemma's layout with sandwich norms (input / post-attention / pre-feedforward / post-feedforward, all
    x/rms(x)·(1 + w)), scores scaled by query_pre_attn_scalar^(−1/2) and soft-capped (attn_logit_softcapping),
    a sliding window on the layers ``layer_types`` marks "sliding_attention" (by default the even ones), and soft-capped
    final logits (final_logit_softcapping). Absent fields take Gemma2Config's defaults."""
    c = {**_GEMMA2_DEFAULTS, **c}
    L = c["num_hidden_layers"]
    known = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
             "rope_scaling", "cache_implementation",
             # transformers' Gemma 2 reads hidden_activation only; hub configs also carry hidden_act, unused
             "hidden_act"}
    rope_scaling = _rope_scaling(c)
    _refuse(c, {
        "hidden_activation": lambda v: v == "gelu_pytorch_tanh",
        "attention_bias": lambda v: v is False,
        "tie_word_embeddings": lambda v: v is True,
        "query_pre_attn_scalar": _positive,
        "attn_logit_softcapping": lambda v: v is None or _positive(v),
        "final_logit_softcapping": lambda v: v is None or _positive(v),
        "sliding_window": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        "layer_types": lambda v: v is None or (isinstance(v, list) and len(v) == L
                                               and all(t in _GEMMA2_LAYER_TYPES for t in v)),
        # an older duplicate of sliding_window that transformers ignores: accepted only when it agrees
        "sliding_window_size": lambda v: v == c["sliding_window"],
        "add_cross_attention": lambda v: v is False,
    }, dict.fromkeys(known), "model_type 'gemma2'")
    layer_types = c.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L)]
    if c["sliding_window"] is None and "sliding_attention" in layer_types:
        raise ValueError("config.json field 'sliding_window' = None is not supported for model_type 'gemma2' with "
                         "sliding_attention layers (layer_types)")
    base = _llama_config({**c, "model_type": "gemma2"}, dtype, check=False, rope_scaling=rope_scaling)
    attn_cap = c["attn_logit_softcapping"]
    mixer = {**base.mixer, "score_scale": float(c["query_pre_attn_scalar"]) ** -0.5,
             **({"logit_softcap": float(attn_cap)} if attn_cap is not None else {})}
    layer_mixer = tuple({"window": c["sliding_window"]} if t == "sliding_attention" else {} for t in layer_types)
    final_cap = c["final_logit_softcapping"]
    return base.replace(psi="geglu", norm="rms_offset", tied=True, embed_scale=math.sqrt(base.d_model), mixer=mixer,
                        norm_position="sandwich", layer_mixer=layer_mixer,
                        logit_softcap=None if final_cap is None else float(final_cap))


# ---- key maps: both layouts → the PyTorch layout → tvvar parameters ---------------------------------

_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")
_NEOX_BUFFERS = (".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq")


def _to_pytorch_names(model_type: str, readers: dict) -> tuple[dict[str, Callable[[], np.ndarray]], dict, str]:
    """Rename every key to the PyTorch layout: readers of arrays in that layout, {new name: key on disk}, and
    the layout found."""
    flax = any(k.endswith((".kernel", ".embedding", ".scale")) for k in readers)
    out: dict[str, Callable[[], np.ndarray]] = {}
    origin: dict[str, str] = {}
    for key, read in readers.items():
        k = key
        if model_type == "gpt2":
            k = k.removeprefix("transformer.")
            if k.endswith(_GPT2_BUFFERS):
                continue  # the PyTorch causal-mask buffers, not parameters
        if model_type == "gpt_neox" and k.endswith(_NEOX_BUFFERS):
            continue  # causal-mask and rotary-frequency buffers older exports wrote
        transpose = False
        if k.endswith(".kernel"):
            k = k[: -len(".kernel")] + ".weight"
            # Flax GPT-2 kernels are (out, in), PyTorch Conv1D (in, out); Flax Llama kernels are (in, out),
            # PyTorch Linear (out, in): a transpose either way
            transpose = True
        elif k.endswith((".embedding", ".scale")):
            k = k.rsplit(".", 1)[0] + ".weight"
        if k in out:
            raise ValueError(f"weight files hold two tensors that map to {k!r} (one of them {key!r})")
        out[k] = (lambda r=read: np.swapaxes(r(), 0, 1)) if transpose else read
        origin[k] = key
    return out, origin, ("flax" if flax else "pytorch")


def _gpt2_params(cfg: ModelConfig, w: Callable[[str, tuple], np.ndarray]) -> dict[tuple, np.ndarray]:
    D, H = cfg.d_model, cfg.mixer["num_heads"]
    K, F = D // H, cfg.psi_options["d_ff"]
    p: dict[tuple, np.ndarray] = {("embed", "table"): w("wte.weight", (cfg.vocab_size, D)),
                                  ("pos",): w("wpe.weight", (cfg.max_len, D)),
                                  ("final_norm", "scale"): w("ln_f.weight", (D,)),
                                  ("final_norm", "bias"): w("ln_f.bias", (D,))}
    for i in range(cfg.num_layers):
        b = f"h.{i}."
        qkv = w(b + "attn.c_attn.weight", (D, 3 * D))
        qkv_b = w(b + "attn.c_attn.bias", (3 * D,))
        wproj = w(b + "attn.c_proj.weight", (D, D))
        bproj = w(b + "attn.c_proj.bias", (D,))
        L = ("blocks", i)
        p[L + ("mixer", "wq")] = qkv[:, :D].reshape(D, H, K)
        p[L + ("mixer", "wk")] = qkv[:, D:2 * D].reshape(D, H, K)
        p[L + ("mixer", "wv")] = qkv[:, 2 * D:].reshape(D, H, K)
        p[L + ("mixer", "wo")] = wproj.reshape(H, K, D)
        p[L + ("mixer", "bq")] = qkv_b[:D].reshape(H, K)
        p[L + ("mixer", "bk")] = qkv_b[D:2 * D].reshape(H, K)
        # Σ_j π_ij (W_vᵀu_j + b_v) = Σ_j π_ij W_vᵀu_j + b_v, so the value bias is the constant W_oᵀ b_v (+ b_o)
        bv = np.asarray(qkv_b[2 * D:], np.float64)
        const = bv @ np.asarray(wproj, np.float64) + np.asarray(bproj, np.float64)
        p[L + ("mixer_bias",)] = const.astype(np.dtype(qkv_b.dtype))
        for n, hf in (("norm1", "ln_1"), ("norm2", "ln_2")):
            p[L + (n, "scale")] = w(b + hf + ".weight", (D,))
            p[L + (n, "bias")] = w(b + hf + ".bias", (D,))
        p[L + ("psi", "w1")] = w(b + "mlp.c_fc.weight", (D, F))
        p[L + ("psi", "b1")] = w(b + "mlp.c_fc.bias", (F,))
        p[L + ("psi", "w2")] = w(b + "mlp.c_proj.weight", (F, D))
        p[L + ("psi", "b2")] = w(b + "mlp.c_proj.bias", (D,))
    if not cfg.tied:
        p[("readout", "embedding", "table")] = w("lm_head.weight", (cfg.vocab_size, D))
    return p


def _llama_params(cfg: ModelConfig, w: Callable[[str, tuple], np.ndarray]) -> dict[tuple, np.ndarray]:
    D, m = cfg.d_model, cfg.mixer
    H, G, K, F = m["num_heads"], m["num_kv_heads"], m["head_dim"], cfg.psi_options["d_ff"]
    p: dict[tuple, np.ndarray] = {("embed", "table"): w("model.embed_tokens.weight", (cfg.vocab_size, D)),
                                  ("final_norm", "scale"): w("model.norm.weight", (D,))}
    for i in range(cfg.num_layers):
        b, L = f"model.layers.{i}.", ("blocks", i)
        p[L + ("mixer", "wq")] = w(b + "self_attn.q_proj.weight", (H * K, D)).T.reshape(D, H, K)
        p[L + ("mixer", "wk")] = w(b + "self_attn.k_proj.weight", (G * K, D)).T.reshape(D, G, K)
        p[L + ("mixer", "wv")] = w(b + "self_attn.v_proj.weight", (G * K, D)).T.reshape(D, G, K)
        p[L + ("mixer", "wo")] = w(b + "self_attn.o_proj.weight", (D, H * K)).T.reshape(H, K, D)
        p[L + ("norm1", "scale")] = w(b + "input_layernorm.weight", (D,))
        p[L + ("norm2", "scale")] = w(b + "post_attention_layernorm.weight", (D,))
        p[L + ("psi", "w_gate")] = w(b + "mlp.gate_proj.weight", (F, D)).T
        p[L + ("psi", "w_up")] = w(b + "mlp.up_proj.weight", (F, D)).T
        p[L + ("psi", "w_down")] = w(b + "mlp.down_proj.weight", (D, F)).T
    if not cfg.tied:
        p[("readout", "embedding", "table")] = w("lm_head.weight", (cfg.vocab_size, D))
    return p


def _qwen2_params(cfg: ModelConfig, w: Callable[[str, tuple], np.ndarray]) -> dict[tuple, np.ndarray]:
    """The Llama tensors and the biases: q/k biases as the mixer's bq/bk; the value bias folded into the intercept
    Σ_h W_o^hᵀ b_v^{g(h)} (computed in float64, stored in the model's dtype) and kept as it was in ``("extras",)``
    so that :func:`save_pretrained` writes it back unchanged."""
    p = _llama_params(cfg, w)
    H, G, K = cfg.mixer["num_heads"], cfg.mixer["num_kv_heads"], cfg.mixer["head_dim"]
    extras = {}
    for i in range(cfg.num_layers):
        b, L = f"model.layers.{i}.self_attn.", ("blocks", i)
        p[L + ("mixer", "bq")] = w(b + "q_proj.bias", (H * K,)).reshape(H, K)
        p[L + ("mixer", "bk")] = w(b + "k_proj.bias", (G * K,)).reshape(G, K)
        bv = w(b + "v_proj.bias", (G * K,))
        extras[b + "v_proj.bias"] = np.asarray(bv)
        p[L + ("mixer_bias",)] = _fold_value_bias(np.asarray(bv), np.asarray(p[L + ("mixer", "wo")]),
                                                  H // G).astype(np.dtype(bv.dtype))
    p[("extras",)] = extras
    return p


def _phi3_params(cfg: ModelConfig, w: Callable[[str, tuple], np.ndarray]) -> dict[tuple, np.ndarray]:
    """The Llama tensors read out of Phi-3's fused ones: rows [0, H·K) of ``qkv_proj`` are W_q, the next G·K W_k,
    the last G·K W_v; the first F rows of ``gate_up_proj`` are W_gate, the last F W_up (transformers' chunk(2))."""
    D, H, G, K = cfg.d_model, cfg.mixer["num_heads"], cfg.mixer["num_kv_heads"], cfg.mixer["head_dim"]
    F = cfg.psi_options["d_ff"]
    parts = {"self_attn.q_proj": ("self_attn.qkv_proj", 0, H * K, (H + 2 * G) * K),
             "self_attn.k_proj": ("self_attn.qkv_proj", H * K, (H + G) * K, (H + 2 * G) * K),
             "self_attn.v_proj": ("self_attn.qkv_proj", (H + G) * K, (H + 2 * G) * K, (H + 2 * G) * K),
             "mlp.gate_proj": ("mlp.gate_up_proj", 0, F, 2 * F), "mlp.up_proj": ("mlp.gate_up_proj", F, 2 * F, 2 * F)}
    fused: dict[str, np.ndarray] = {}

    def w_split(key: str, shape: tuple) -> np.ndarray:  # key: model.layers.{i}.{name}.weight
        layer, name = _layer_and_name(key)
        if name not in parts:
            return w(key, shape)
        src, lo, hi, rows = parts[name]
        full = f"{layer}{src}.weight"
        if full not in fused:
            fused[full] = w(full, (rows, D))
        return fused[full][lo:hi]

    return _llama_params(cfg, w_split)


def _gpt_neox_params(cfg: ModelConfig, w: Callable[[str, tuple], np.ndarray]) -> dict[tuple, np.ndarray]:
    """query_key_value rows are per head [q_h | k_h | v_h] (transformers' view(H, 3K)); the value and output
    biases fold into the intercept W_oᵀ b_v + b_o (exact: Σ_j π_ij = 1), as GPT-2's."""
    D, H, K, F = cfg.d_model, cfg.mixer["num_heads"], cfg.mixer["head_dim"], cfg.psi_options["d_ff"]
    g = "gpt_neox."
    p: dict[tuple, np.ndarray] = {("embed", "table"): w(g + "embed_in.weight", (cfg.vocab_size, D)),
                                  ("final_norm", "scale"): w(g + "final_layer_norm.weight", (D,)),
                                  ("final_norm", "bias"): w(g + "final_layer_norm.bias", (D,)),
                                  ("readout", "embedding", "table"): w("embed_out.weight", (cfg.vocab_size, D))}
    for i in range(cfg.num_layers):
        b, L = f"{g}layers.{i}.", ("blocks", i)
        qkv = w(b + "attention.query_key_value.weight", (3 * D, D)).reshape(H, 3, K, D)
        qkv_b = w(b + "attention.query_key_value.bias", (3 * D,)).reshape(H, 3, K)
        wo = w(b + "attention.dense.weight", (D, D)).T.reshape(H, K, D)
        p[L + ("mixer", "wq")], p[L + ("mixer", "wk")], p[L + ("mixer", "wv")] = (
            qkv[:, s].transpose(2, 0, 1) for s in range(3))
        p[L + ("mixer", "wo")] = wo
        p[L + ("mixer", "bq")], p[L + ("mixer", "bk")] = qkv_b[:, 0], qkv_b[:, 1]
        bo = w(b + "attention.dense.bias", (D,))
        const = _fold_value_bias(np.asarray(qkv_b[:, 2]).reshape(-1), np.asarray(wo), 1) + np.asarray(bo, np.float64)
        p[L + ("mixer_bias",)] = const.astype(np.dtype(bo.dtype))
        for n, hf in (("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm")):
            p[L + (n, "scale")], p[L + (n, "bias")] = w(b + hf + ".weight", (D,)), w(b + hf + ".bias", (D,))
        p[L + ("psi", "w1")] = w(b + "mlp.dense_h_to_4h.weight", (F, D)).T
        p[L + ("psi", "b1")] = w(b + "mlp.dense_h_to_4h.bias", (F,))
        p[L + ("psi", "w2")] = w(b + "mlp.dense_4h_to_h.weight", (D, F)).T
        p[L + ("psi", "b2")] = w(b + "mlp.dense_4h_to_h.bias", (D,))
    return p


def _olmo2_params(cfg: ModelConfig, w: Callable[[str, tuple], np.ndarray]) -> dict[tuple, np.ndarray]:
    """The Llama projections and MLP; norm1 / norm2 are OLMo 2's post-attention / post-feedforward norms (it has
    no input norms), and the mixer's q_norm / k_norm its QK-norm gains."""
    H, G, K = cfg.mixer["num_heads"], cfg.mixer["num_kv_heads"], cfg.mixer["head_dim"]
    names = {"input_layernorm": "post_attention_layernorm", "post_attention_layernorm": "post_feedforward_layernorm"}

    def w_renamed(key: str, shape: tuple) -> np.ndarray:
        layer, name = _layer_and_name(key)
        return w(f"{layer}{names[name]}.weight", shape) if name in names else w(key, shape)

    p = _llama_params(cfg, w_renamed)
    for i in range(cfg.num_layers):
        b, L = f"model.layers.{i}.self_attn.", ("blocks", i, "mixer")
        p[L + ("q_norm",)] = w(b + "q_norm.weight", (H * K,)).reshape(H, K)
        p[L + ("k_norm",)] = w(b + "k_norm.weight", (G * K,)).reshape(G, K)
    return p


def _gemma2_params(cfg: ModelConfig, w: Callable[[str, tuple], np.ndarray]) -> dict[tuple, np.ndarray]:
    """The Llama tensors with Gemma 2's four norms: norm1 / norm1_out are its input / post-attention norms, norm2 /
    norm2_out its pre-feedforward / post-feedforward norms."""
    D = cfg.d_model

    def w_renamed(key: str, shape: tuple) -> np.ndarray:
        layer, name = _layer_and_name(key)
        return w(f"{layer}pre_feedforward_layernorm.weight", shape) if name == "post_attention_layernorm" else w(
            key, shape)

    p = _llama_params(cfg, w_renamed)
    for i in range(cfg.num_layers):
        b, L = f"model.layers.{i}.", ("blocks", i)
        p[L + ("norm1_out", "scale")] = w(b + "post_attention_layernorm.weight", (D,))
        p[L + ("norm2_out", "scale")] = w(b + "post_feedforward_layernorm.weight", (D,))
    return p


def _layer_and_name(key: str) -> tuple[str, str]:
    """("model.layers.{i}.", "self_attn.q_proj") of "model.layers.{i}.self_attn.q_proj.weight"; ("", key) otherwise."""
    parts = key.removesuffix(".weight").split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"]:
        return ".".join(parts[:3]) + ".", ".".join(parts[3:])
    return "", key


def _fold_value_bias(bv: np.ndarray, wo_HxKxD: np.ndarray, rep: int) -> np.ndarray:
    """Σ_h W_o^hᵀ b_v^{g(h)} in float64: the constant a value bias adds to every mixer output (Σ_j π_ij = 1)."""
    H, K, _ = wo_HxKxD.shape
    bv_H = np.repeat(np.asarray(bv, np.float64).reshape(H // rep, K), rep, axis=0)
    return np.einsum("hk,hkd->d", bv_H, np.asarray(wo_HxKxD, np.float64))


# ---- Mamba-2 (state-spaces layout) ----------------------------------------------------------------

# mamba_ssm.models.config_utils.MambaConfig and mamba_ssm.modules.mamba2.Mamba2 defaults
_MAMBA2_TOP = {"d_model": None, "n_layer": None, "vocab_size": None, "d_intermediate": 0, "ssm_cfg": {},
               "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
               "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True, "norm_epsilon": 1e-5}
_MAMBA2_SSM = {"layer": "Mamba2", "d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "d_ssm": None,
               "ngroups": 1, "D_has_hdim": False, "rmsnorm": True, "norm_before_gate": False,
               "dt_limit": (0.0, math.inf), "bias": False, "conv_bias": True}
# initialisation, kernel and parallelism choices that do not change the function computed
_MAMBA2_HARMLESS = {"conv_init", "A_init_range", "dt_min", "dt_max", "dt_init_floor", "chunk_size",
                    "use_mem_eff_path", "process_group", "sequence_parallel", "device", "dtype", "layer_idx"}


#: transformers' Mamba2Config field → mamba_ssm's name (the same quantity)
_HF_MAMBA2_NAMES = {"hidden_size": "d_model", "num_hidden_layers": "n_layer", "state_size": "d_state",
                    "head_dim": "headdim", "n_groups": "ngroups", "conv_kernel": "d_conv", "use_bias": "bias",
                    "use_conv_bias": "conv_bias", "tie_word_embeddings": "tie_embeddings", "rms_norm": "rms_norm",
                    "layer_norm_epsilon": "norm_epsilon", "time_step_limit": "dt_limit"}
#: transformers' Mamba2Config fields that choose initialisation or kernels, not the function
_HF_MAMBA2_HARMLESS = {"time_step_rank", "time_step_min", "time_step_max", "time_step_floor", "chunk_size",
                       "rescale_prenorm_residual", "residual_in_fp32", "initializer_range", "use_cache"}


def _from_transformers_mamba2(c: dict) -> dict:
    """transformers' ``Mamba2Config`` (``model_type: "mamba2"`` with ``hidden_size``, ``n_groups``, …) in mamba_ssm's
    names. Its mixer differs from mamba_ssm's in one place: the gated RMSNorm (x ⊙ silu(z) normalised, then the
    gain) runs over all E channels, not per group, and with ``layer_norm_epsilon`` — ``norm_groups`` = 1 and
    ``mixer_norm_eps`` say so. No vocabulary padding; ``num_heads`` must be expand·hidden_size / head_dim."""
    ours = sorted(set(c) & ({*_MAMBA2_TOP, *_MAMBA2_SSM} - {"vocab_size", "expand", "rms_norm", "residual_in_fp32"}))
    if ours:
        theirs = sorted(set(c) & {*_HF_MAMBA2_NAMES, "num_heads"})
        raise ValueError(f"config.json mixes transformers' Mamba2Config names {theirs} with mamba_ssm's {ours}: "
                         "one convention per file (the two differ in the gated norm)")
    out: dict[str, Any] = {"model_type": "mamba2", "pad_vocab_size_multiple": 1, "norm_before_gate": False,
                           "norm_groups": 1}
    for name, value in c.items():
        if name == "hidden_act":
            if value != "silu":
                raise ValueError(f"config.json field 'hidden_act' = {value!r} is not supported for model_type "
                                 "'mamba2' (transformers' names): only silu")
        elif name == "num_heads":
            continue  # checked below against expand·hidden_size / head_dim
        elif name == "time_step_limit":
            out["dt_limit"] = [float(v) for v in value]
        elif name in _HF_MAMBA2_NAMES:
            out[_HF_MAMBA2_NAMES[name]] = value
        elif name not in _HF_MAMBA2_HARMLESS:
            out[name] = value  # checked by _mamba2_fields like any other field
    out.setdefault("tie_embeddings", False)  # transformers' default (mamba_ssm ties by default)
    out["mixer_norm_eps"] = float(out.get("norm_epsilon", 1e-5))
    E, P = out.get("expand", 2) * out.get("d_model", 0), out.get("headdim", 64)
    if "num_heads" in c and c["num_heads"] * P != E:
        raise ValueError(f"config.json: num_heads = {c['num_heads']} · head_dim = {P} ≠ expand · hidden_size = {E}; "
                         "the mixer's channels must be exactly its heads (no MLP channels)")
    return out


#: what both Mamba stacks refuse: mamba_ssm's MixerModel options that are not implemented
_MAMBA_STACK_CHECKS: dict[str, Callable[[Any], bool]] = {
    "d_intermediate": lambda v: v in (0, None),  # no MLP between the mixers
    "attn_layer_idx": lambda v: not v,  # hybrid attention layers are not implemented
    "attn_cfg": lambda v: not v,
    "rms_norm": lambda v: v is True,  # LayerNorm blocks are not implemented
}


def _with_ssm_cfg(c: dict) -> dict:
    """mamba_ssm's config with the mixer fields of ``ssm_cfg`` (if any) merged into the top level; a field set in
    both places is refused."""
    ssm = c.get("ssm_cfg") or {}
    if not isinstance(ssm, dict):
        raise ValueError(f"config.json field 'ssm_cfg' must be an object, got {ssm!r}")
    both = sorted(set(ssm) & set(c))
    if both:
        raise ValueError(f"config.json sets {both} both at the top level and in 'ssm_cfg'")
    return {**c, **ssm}


def _mamba2_fields(c: dict) -> dict:
    """The Mamba-2 options of ``c`` (flat, or under ``ssm_cfg`` as mamba_ssm writes them, or transformers'
    ``Mamba2Config`` names) with defaults; a field that would change the function and is not implemented raises,
    naming it."""
    if "hidden_size" in c or "num_hidden_layers" in c:
        c = _from_transformers_mamba2(c)
    merged = _with_ssm_cfg(c)
    what = "model_type 'mamba2'"
    checks: dict[str, Callable[[Any], bool]] = {
        "layer": lambda v: v == "Mamba2",
        **_MAMBA_STACK_CHECKS,
        "D_has_hdim": lambda v: v is False,
        "bias": lambda v: v is False,  # in_proj / out_proj biases would add affine terms not implemented
        "dt_limit": lambda v: list(v) == [0.0, math.inf],
        "rmsnorm": lambda v: isinstance(v, bool),
        "norm_before_gate": lambda v: isinstance(v, bool),
        "conv_bias": lambda v: isinstance(v, bool),
        "sequence_parallel": lambda v: v in (False, None),
        "process_group": lambda v: v is None,
        "norm_groups": lambda v: v == 1,
        "mixer_norm_eps": lambda v: isinstance(v, float) and v > 0,
    }
    defaults = {**_MAMBA2_TOP, **_MAMBA2_SSM}
    for name, value in merged.items():
        if name in checks:
            if not checks[name](value):
                raise ValueError(f"config.json field {name!r} = {value!r} is not supported for {what} "
                                 "(tvvar would compute a different model)")
        elif name not in _HARMLESS and name not in defaults and name not in _MAMBA2_HARMLESS:
            raise ValueError(f"config.json field {name!r} = {value!r} is not implemented for {what}; "
                             "refusing rather than loading a possibly different model")
    f = {**defaults, "norm_groups": None, "mixer_norm_eps": 1e-5, **merged}
    if f["norm_groups"] is None:
        f["norm_groups"] = f["ngroups"]  # mamba_ssm's gated norm is per group
    for name in ("d_model", "n_layer", "vocab_size"):
        if f[name] is None:
            raise ValueError(f"config.json lacks field {name!r} needed by {what}")
    E = f["expand"] * f["d_model"]
    if f["d_ssm"] not in (None, E):
        raise ValueError(f"config.json field 'd_ssm' = {f['d_ssm']!r} is not supported for {what}: only d_ssm = "
                         f"expand·d_model = {E} (no MLP channels inside the mixer)")
    if E % f["headdim"]:
        raise ValueError(f"config.json: expand·d_model = {E} is not divisible by headdim = {f['headdim']}")
    if (E // f["headdim"]) % f["ngroups"]:
        raise ValueError(f"config.json: nheads = {E // f['headdim']} is not divisible by ngroups = {f['ngroups']}")
    return f


def _mamba2_vocab(f: dict) -> int:
    """mamba_ssm pads the embedding table to a multiple of ``pad_vocab_size_multiple``."""
    V, m = f["vocab_size"], f["pad_vocab_size_multiple"] or 1
    return V + (m - V % m) % m


def _mamba2_config(c: dict, dtype: str) -> ModelConfig:
    f = _mamba2_fields(c)
    D, P = f["d_model"], f["headdim"]
    H = f["expand"] * D // P
    mixer = {"num_heads": H, "head_dim": P, "state_size": f["d_state"], "d_conv": f["d_conv"],
             "ngroups": f["ngroups"], "conv_x_bias": f["conv_bias"], "norm": "rms" if f["rmsnorm"] else None,
             "norm_before_gate": f["norm_before_gate"], "norm_eps": f["mixer_norm_eps"],
             "norm_groups": f["norm_groups"],
             "skip": True, "gate": True}
    return ModelConfig(
        vocab_size=_mamba2_vocab(f), d_model=D, num_layers=f["n_layer"], decomposition="mamba", mixer=mixer,
        psi="identity", norm="rms", norm_eps=float(f["norm_epsilon"]), tied=bool(f["tie_embeddings"]),
        max_len=None, embedding="plain", param_dtype=dtype, dtype=dtype)


_MAMBA2_EMBED = ("backbone.embedding.weight", "backbone.embeddings.weight")  # mamba_ssm, transformers


def _mamba2_params(cfg: ModelConfig, w: Callable[[str, tuple], np.ndarray],
                   has: Callable[[str], bool]) -> dict[tuple, np.ndarray]:
    D, m = cfg.d_model, cfg.mixer
    H, P, N, G, K = m["num_heads"], m["head_dim"], m["state_size"], m["ngroups"], m["d_conv"]
    E, GN = H * P, G * N
    emb = next((k for k in _MAMBA2_EMBED if has(k)), _MAMBA2_EMBED[0])
    p: dict[tuple, np.ndarray] = {("embed", "table"): w(emb, (cfg.vocab_size, D)),
                                  ("final_norm", "scale"): w("backbone.norm_f.weight", (D,))}
    for i in range(cfg.num_layers):
        b, L = f"backbone.layers.{i}.", ("blocks", i)
        mx = L + ("mixer",)
        p[L + ("norm1", "scale")] = w(b + "norm.weight", (D,))
        W = w(b + "mixer.in_proj.weight", (2 * E + 2 * GN + H, D)).T  # columns [z, x, B, C, Δ]
        p[mx + ("W_z",)] = W[:, :E].reshape(D, H, P)
        p[mx + ("W_x",)] = W[:, E:2 * E].reshape(D, H, P)
        p[mx + ("W_B",)] = W[:, 2 * E:2 * E + GN]
        p[mx + ("W_C",)] = W[:, 2 * E + GN:2 * E + 2 * GN]
        p[mx + ("W_dt",)] = W[:, 2 * E + 2 * GN:]
        # torch Conv1d with padding K−1, truncated: out_t = Σ_k w[c, 0, k] z_{t−(K−1)+k}; tvvar's w[k] weighs z_{t−k}
        cw = w(b + "mixer.conv1d.weight", (E + 2 * GN, 1, K))
        p[mx + ("conv_w",)] = cw[:, 0, ::-1].T
        if m["conv_x_bias"]:
            cb = w(b + "mixer.conv1d.bias", (E + 2 * GN,))
            p[mx + ("conv_bx",)] = cb[:E].reshape(H, P)
            p[mx + ("conv_b",)] = cb[E:]
        else:
            p[mx + ("conv_b",)] = np.zeros((2 * GN,), cw.dtype)
        p[mx + ("A_log",)] = w(b + "mixer.A_log", (H,))
        p[mx + ("D",)] = w(b + "mixer.D", (H,))
        p[mx + ("b_dt",)] = w(b + "mixer.dt_bias", (H,))
        if m["norm"] is not None:
            p[mx + ("norm_w",)] = w(b + "mixer.norm.weight", (E,)).reshape(H, P)
        p[mx + ("W_o",)] = w(b + "mixer.out_proj.weight", (D, E)).T.reshape(H, P, D)
    if not cfg.tied:
        p[("readout", "embedding", "table")] = w("lm_head.weight", (cfg.vocab_size, D))
    return p


def _mamba2_tensors(model: TVVARModel, embedding_key: str = _MAMBA2_EMBED[0]) -> dict[str, np.ndarray]:
    cfg = model.cfg
    D = cfg.d_model
    a = lambda v: np.asarray(v[...])  # noqa: E731
    t = {embedding_key: a(model.embed.table), "backbone.norm_f.weight": a(model.final_norm.scale)}
    for i, blk in enumerate(model.blocks):
        b, mx = f"backbone.layers.{i}.", blk.mixer
        t[b + "norm.weight"] = a(blk.norm1.scale)
        t[b + "mixer.in_proj.weight"] = np.concatenate(
            [a(mx.W_z).reshape(D, -1), a(mx.W_x).reshape(D, -1), a(mx.W_B), a(mx.W_C), a(mx.W_dt)], axis=1).T
        t[b + "mixer.conv1d.weight"] = np.ascontiguousarray(a(mx.conv_w)[::-1].T[:, None, :])
        if mx.conv_x_bias:
            t[b + "mixer.conv1d.bias"] = np.concatenate([a(mx.conv_bx).reshape(-1), a(mx.conv_b)])
        elif np.any(a(mx.conv_b) != 0):
            raise ValueError(f"layer {i}: the B/C conv bias is nonzero but the config has conv_bias = false")
        t[b + "mixer.A_log"], t[b + "mixer.D"], t[b + "mixer.dt_bias"] = a(mx.A_log), a(mx.D), a(mx.b_dt)
        if mx.norm is not None:
            t[b + "mixer.norm.weight"] = a(mx.norm_w).reshape(-1)
        t[b + "mixer.out_proj.weight"] = a(mx.W_o).reshape(-1, D).T
    if not cfg.tied:
        t["lm_head.weight"] = a(model.readout.embedding.table)
    return t


# ---- Mamba-1 (state-spaces / mamba_ssm layout and transformers' MambaForCausalLM) -----------------------

# mamba_ssm.modules.mamba_simple.Mamba defaults (the top-level MambaConfig fields are Mamba-2's, _MAMBA2_TOP)
_MAMBA1_SSM = {"layer": "Mamba1", "d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto", "conv_bias": True,
               "bias": False}
# initialisation, kernel and placement choices of mamba_ssm's Mamba that do not change the function computed
_MAMBA1_HARMLESS = {"dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "use_fast_path", "layer_idx",
                    "device", "dtype"}
#: transformers' MambaConfig field → mamba_ssm's name (the same quantity)
_HF_MAMBA1_NAMES = {"hidden_size": "d_model", "num_hidden_layers": "n_layer", "state_size": "d_state",
                    "conv_kernel": "d_conv", "use_bias": "bias", "use_conv_bias": "conv_bias",
                    "time_step_rank": "dt_rank", "layer_norm_epsilon": "norm_epsilon",
                    "tie_word_embeddings": "tie_embeddings", "expand": "expand", "vocab_size": "vocab_size"}
#: transformers' MambaConfig fields that choose initialisation, kernels or residual precision, not the function
_HF_MAMBA1_HARMLESS = {"time_step_scale", "time_step_min", "time_step_max", "time_step_init_scheme",
                       "time_step_floor", "initializer_range", "residual_in_fp32", "rescale_prenorm_residual",
                       "use_mambapy", "fused_add_norm", "pad_vocab_size_multiple"}


def _from_transformers_mamba(c: dict) -> dict:
    """transformers' ``MambaConfig`` (``hidden_size``, ``state_size``, …) in mamba_ssm's names. transformers does not
    pad the vocabulary (``pad_vocab_size_multiple``, which converted hub configs carry, is ignored, as transformers
    ignores it) and ties the head by default. The mamba_ssm fields those converted configs also carry (``d_model``,
    ``n_layer``, ``intermediate_size`` / ``d_inner``, ``rms_norm``, ``ssm_cfg``) are accepted when they agree."""
    out: dict[str, Any] = {"pad_vocab_size_multiple": 1}
    what = "model_type 'mamba' (transformers' names)"
    for name, value in c.items():
        if name in _HF_MAMBA1_NAMES:
            out[_HF_MAMBA1_NAMES[name]] = value
        elif name == "hidden_act":
            if value != "silu":
                raise ValueError(f"config.json field 'hidden_act' = {value!r} is not supported for {what}: "
                                 "only silu (the conv activation and the gate)")
        elif name not in _HF_MAMBA1_HARMLESS and name not in ("d_model", "n_layer", "intermediate_size", "d_inner",
                                                             "ssm_cfg", "rms_norm"):
            out[name] = value  # checked by _mamba_fields like any other field (model_type, ids, … or refused)
    E = out.get("expand", 2) * out.get("d_model", 768)
    agree = {"d_model": out.get("d_model", 768), "n_layer": out.get("n_layer", 32), "intermediate_size": E,
             "d_inner": E, "rms_norm": True}
    for name, want in agree.items():
        if name in c and c[name] != want:
            raise ValueError(f"config.json field {name!r} = {c[name]!r} disagrees with the transformers fields "
                             f"(which imply {want!r}) for {what}")
    if c.get("ssm_cfg") not in (None, {}):
        raise ValueError(f"config.json field 'ssm_cfg' = {c['ssm_cfg']!r} is not supported for {what}: transformers "
                         "ignores it, so a non-empty one may describe a different model than the one it loads")
    defaults = {"vocab_size": 50280, "d_model": 768, "d_state": 16, "n_layer": 32, "norm_epsilon": 1e-5}
    for name, value in defaults.items():
        out.setdefault(name, value)  # transformers' MambaConfig defaults
    return out


def _mamba_fields(c: dict) -> dict:
    """The Mamba-1 options of ``c`` (mamba_ssm's ``MambaConfig`` with the Mamba fields flat or under ``ssm_cfg``,
    or transformers' ``MambaConfig`` names) with defaults; a field that would change the function and is not
    implemented raises, naming it."""
    if "hidden_size" in c or "num_hidden_layers" in c:
        c = _from_transformers_mamba(c)
    merged = _with_ssm_cfg(c)
    what = "model_type 'mamba'"
    checks: dict[str, Callable[[Any], bool]] = {
        "layer": lambda v: v == "Mamba1",
        **_MAMBA_STACK_CHECKS,
        "bias": lambda v: v is False,  # in_proj / out_proj biases (use_bias) are not implemented
        "conv_bias": lambda v: isinstance(v, bool),
        "dt_rank": lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        "d_state": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "d_conv": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "expand": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "norm_epsilon": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
    }
    defaults = {**_MAMBA2_TOP, **_MAMBA1_SSM}
    for name, value in merged.items():
        if name in checks:
            if not checks[name](value):
                raise ValueError(f"config.json field {name!r} = {value!r} is not supported for {what} "
                                 "(tvvar would compute a different model)")
        elif name not in _HARMLESS and name not in defaults and name not in _MAMBA1_HARMLESS:
            raise ValueError(f"config.json field {name!r} = {value!r} is not implemented for {what}; "
                             "refusing rather than loading a possibly different model")
    f = {**defaults, **merged}
    for name in ("d_model", "n_layer", "vocab_size"):
        if f[name] is None:
            raise ValueError(f"config.json lacks field {name!r} needed by {what}")
    if f["dt_rank"] == "auto":
        f["dt_rank"] = math.ceil(f["d_model"] / 16)
    return f


def _mamba_config(c: dict, dtype: str) -> ModelConfig:
    f = _mamba_fields(c)
    mixer = {"expand": f["expand"], "state_size": f["d_state"], "d_conv": f["d_conv"], "dt_rank": f["dt_rank"],
             "conv_bias": f["conv_bias"]}
    return ModelConfig(
        vocab_size=_mamba2_vocab(f), d_model=f["d_model"], num_layers=f["n_layer"], decomposition="mamba1",
        mixer=mixer, psi="identity", norm="rms", norm_eps=float(f["norm_epsilon"]), tied=bool(f["tie_embeddings"]),
        max_len=None, embedding="plain", param_dtype=dtype, dtype=dtype)


def _mamba_params(cfg: ModelConfig, w: Callable[[str, tuple], np.ndarray],
                  has: Callable[[str], bool]) -> dict[tuple, np.ndarray]:
    D, m = cfg.d_model, cfg.mixer
    E, N, K, R = m["expand"] * D, m["state_size"], m["d_conv"], m["dt_rank"]
    emb = next((k for k in _MAMBA2_EMBED if has(k)), _MAMBA2_EMBED[0])
    p: dict[tuple, np.ndarray] = {("embed", "table"): w(emb, (cfg.vocab_size, D)),
                                  ("final_norm", "scale"): w("backbone.norm_f.weight", (D,))}
    for i in range(cfg.num_layers):
        b, L = f"backbone.layers.{i}.", ("blocks", i)
        mx = L + ("mixer",)
        p[L + ("norm1", "scale")] = w(b + "norm.weight", (D,))
        W = w(b + "mixer.in_proj.weight", (2 * E, D)).T  # columns [x, z]
        p[mx + ("W_x",)], p[mx + ("W_z",)] = W[:, :E], W[:, E:]
        # torch Conv1d with padding K−1, truncated: out_t = Σ_k w[c, 0, k] x_{t−(K−1)+k}; tvvar's w[k] weighs x_{t−k}
        p[mx + ("conv_w",)] = w(b + "mixer.conv1d.weight", (E, 1, K))[:, 0, ::-1].T
        if m["conv_bias"]:
            p[mx + ("conv_b",)] = w(b + "mixer.conv1d.bias", (E,))
        X = w(b + "mixer.x_proj.weight", (R + 2 * N, E)).T  # columns [Δ̃, B, C]
        p[mx + ("W_dtl",)], p[mx + ("W_B",)], p[mx + ("W_C",)] = X[:, :R], X[:, R:R + N], X[:, R + N:]
        p[mx + ("W_dt",)] = w(b + "mixer.dt_proj.weight", (E, R)).T
        p[mx + ("b_dt",)] = w(b + "mixer.dt_proj.bias", (E,))
        p[mx + ("A_log",)] = w(b + "mixer.A_log", (E, N))
        p[mx + ("D",)] = w(b + "mixer.D", (E,))
        p[mx + ("W_o",)] = w(b + "mixer.out_proj.weight", (D, E)).T
    if not cfg.tied:
        p[("readout", "embedding", "table")] = w("lm_head.weight", (cfg.vocab_size, D))
    return p


def _mamba_tensors(model: TVVARModel, embedding_key: str = _MAMBA2_EMBED[0]) -> dict[str, np.ndarray]:
    cfg = model.cfg
    a = lambda v: np.asarray(v[...])  # noqa: E731
    t = {embedding_key: a(model.embed.table), "backbone.norm_f.weight": a(model.final_norm.scale)}
    for i, blk in enumerate(model.blocks):
        b, mx = f"backbone.layers.{i}.", blk.mixer
        t[b + "norm.weight"] = a(blk.norm1.scale)
        t[b + "mixer.in_proj.weight"] = np.concatenate([a(mx.W_x), a(mx.W_z)], axis=1).T
        t[b + "mixer.conv1d.weight"] = np.ascontiguousarray(a(mx.conv_w)[::-1].T[:, None, :])
        if mx.conv_bias:
            t[b + "mixer.conv1d.bias"] = a(mx.conv_b)
        t[b + "mixer.x_proj.weight"] = np.concatenate([a(mx.W_dtl), a(mx.W_B), a(mx.W_C)], axis=1).T
        t[b + "mixer.dt_proj.weight"], t[b + "mixer.dt_proj.bias"] = a(mx.W_dt).T, a(mx.b_dt)
        t[b + "mixer.A_log"], t[b + "mixer.D"] = a(mx.A_log), a(mx.D)
        t[b + "mixer.out_proj.weight"] = a(mx.W_o).T
    if not cfg.tied:
        t["lm_head.weight"] = a(model.readout.embedding.table)
    return t


_CONFIGS = {"gpt2": _gpt2_config, "llama": _llama_config, "mistral": _llama_config, "qwen2": _qwen2_config,
            "phi3": _phi3_config, "olmo2": _olmo2_config, "gemma": _gemma_config, "gemma2": _gemma2_config,
            "gpt_neox": _gpt_neox_config,
            "mamba2": _mamba2_config, "mamba": _mamba_config}
_PARAMS = {"gpt2": lambda c, w, has: _gpt2_params(c, w), "llama": lambda c, w, has: _llama_params(c, w),
           "mistral": lambda c, w, has: _llama_params(c, w), "qwen2": lambda c, w, has: _qwen2_params(c, w),
           "phi3": lambda c, w, has: _phi3_params(c, w), "olmo2": lambda c, w, has: _olmo2_params(c, w),
           "gpt_neox": lambda c, w, has: _gpt_neox_params(c, w),
           "gemma": lambda c, w, has: _llama_params(c, w), "gemma2": lambda c, w, has: _gemma2_params(c, w),
           "mamba2": _mamba2_params, "mamba": _mamba_params}


def _read_config(folder: Path) -> dict:
    f = folder / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"no config.json in {str(folder)!r}")
    try:
        c = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(f)!r} is not valid JSON: {e}") from None
    mt = _model_type(c)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{str(f)!r}: model_type {mt!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
    return c


def _resolve_mesh(mesh: Any) -> Any:
    """``load_pretrained``'s ``mesh`` argument as a ``jax.sharding.Mesh`` (None stays None)."""
    from jax.sharding import Mesh

    from tvvar.sharding import make_mesh

    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    if isinstance(mesh, (str, Mapping)):
        try:
            return make_mesh(mesh)
        except ValueError as e:
            raise ValueError(f"load_pretrained: bad mesh={mesh!r}: {e}") from None
    raise TypeError(f"load_pretrained: mesh must be a jax.sharding.Mesh, a spec such as 'data=2,model=4', a dict "
                    f"of axis sizes or None, got {type(mesh).__name__}")


def _param_sharding(var: nnx.Variable, path: tuple, mesh: Any, rules: Mapping[str, str | None] | None) -> Any:
    """The NamedSharding :func:`tvvar.sharding.state_shardings` gives this Variable (its ``out_sharding`` logical
    names through ``rules``; a dimension the mesh axis does not divide is replicated)."""
    from jax.sharding import NamedSharding

    from tvvar.sharding import DEFAULT_RULES, logical_to_spec

    names = var.get_metadata().get("out_sharding")
    table = DEFAULT_RULES if rules is None else rules
    for name in names or ():
        axis = table.get(name) if name is not None else None
        if axis is not None and axis not in mesh.shape:
            raise ValueError(f"load_pretrained: rules map logical axis {name!r} (of parameter "
                             f"{'.'.join(map(str, path))}) to mesh axis {axis!r}, which mesh={dict(mesh.shape)} "
                             "lacks")
    return NamedSharding(mesh, logical_to_spec(names, tuple(var.shape), mesh, rules))


def load_pretrained(path: str | os.PathLike, dtype: str = "float32", *, mesh: Any = None,
                    rules: Mapping[str, str | None] | None = None) -> Pretrained:
    """Load a Hugging Face checkpoint folder (config.json + safetensors, PyTorch or Flax layout) as an exact
    :class:`tvvar.model.TVVARModel`; ``dtype`` is the parameter and compute dtype (bf16/f16 files are cast).

    ``mesh`` (a ``jax.sharding.Mesh`` with axes among (data, model), a spec such as ``"data=2,model=4"`` or a dict
    for :func:`tvvar.sharding.make_mesh`; None: one device, as before) places every parameter directly on its
    shards: tensors are read, cast (numpy / ml_dtypes) and rearranged on the host, and each is handed to
    ``jax.device_put`` with the NamedSharding :func:`tvvar.sharding.state_shardings` gives it (``rules``, default
    :data:`tvvar.sharding.DEFAULT_RULES`: vocabulary, heads and MLP hidden units over ``model``; a dimension the
    axis does not divide is replicated), then its host copy is dropped — no device ever holds the unsharded
    model, and host memory peaks near the weights' size.

    Errors name the file and key: missing or truncated files, a shard named by the index that does not
    exist, a tensor whose shape does not match the config, missing or unused tensors, an unknown
    ``model_type``, a config field that is not implemented; a bad ``mesh`` or one lacking an axis the rules
    name is a ValueError naming the argument.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if rules is not None and mesh is None:
        raise ValueError("load_pretrained: rules= applies to a mesh; pass mesh= too")
    mesh = _resolve_mesh(mesh)
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(folder)!r} does not exist")
    c = _read_config(folder)
    mt = _model_type(c)
    cfg = _CONFIGS[mt](c, dtype)
    raw, where = _weight_readers(folder)
    readers, origin, layout = _to_pytorch_names(mt, raw)
    if mt in ("mamba", "mamba2") and layout != "pytorch":
        raise ValueError(f"checkpoint in {str(folder)!r}: model_type {mt!r} loads from the PyTorch layout only "
                         "(mamba_ssm / transformers names), found Flax names (kernel / embedding / scale)")
    used: set[str] = set()
    jdtype = jnp.dtype(dtype)

    def w(key: str, shape: tuple) -> np.ndarray:
        if key not in readers:
            raise KeyError(f"checkpoint in {str(folder)!r} lacks tensor {key!r} (PyTorch-layout name) needed by "
                           f"model_type {mt!r}")
        a = readers[key]()
        if tuple(a.shape) != shape:
            raise ValueError(f"tensor {origin[key]!r} in file {where[origin[key]]!r} has shape {a.shape} (as "
                             f"{key!r} in the PyTorch layout); config.json implies {shape}")
        used.add(key)
        if mesh is not None:  # host numpy (a view of the map where no cast is needed), placed shard-wise below
            return np.asarray(a).astype(jdtype, copy=False)
        return jnp.asarray(a, dtype=jdtype)  # one copy, then the map of this tensor is dropped

    params = _PARAMS[mt](cfg, w, readers.__contains__)
    extras = params.pop(("extras",), {})
    if cfg.tied and "lm_head.weight" in readers:  # some exports write the tied head explicitly
        head = w("lm_head.weight", (cfg.vocab_size, cfg.d_model))
        if not np.array_equal(head, params[("embed", "table")]):
            raise ValueError("config.json ties the head to the embedding (tie_word_embeddings) but lm_head.weight "
                             "differs from the embedding table")
    unused = sorted(set(readers) - used)
    if unused:
        raise ValueError(f"checkpoint in {str(folder)!r} has tensors model_type {mt!r} does not use: {unused[:8]}"
                         f"{' …' if len(unused) > 8 else ''}")
    model = nnx.eval_shape(lambda: TVVARModel(cfg, rngs=nnx.Rngs(0)))
    filled = set()
    for p, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable):
            if p not in params:
                raise AssertionError(f"internal: no checkpoint tensor for tvvar parameter {p}")  # pragma: no cover
            if mesh is None:
                var.set_value(jnp.asarray(params.pop(p), dtype=jdtype))
            else:
                host = np.asarray(params.pop(p)).astype(jdtype, copy=False)
                var.set_value(jax.device_put(host, _param_sharding(var, p, mesh, rules)))
                del host  # the host copy (or map) goes; the shards stay
            filled.add(p)
    if params:  # pragma: no cover - internal consistency
        raise AssertionError(f"internal: unplaced tensors {sorted(params)}")
    tok = None
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    emb = next((k for k in _MAMBA2_EMBED if k in readers), None) if mt in ("mamba", "mamba2") else None
    return Pretrained(model=model, hf_config=c, tokenizer=tok, layout=layout, embedding_key=emb, extras=extras)


# ---- saving -----------------------------------------------------------------------------------------


def _gpt2_tensors(model: TVVARModel) -> dict[str, np.ndarray]:
    cfg = model.cfg
    D = cfg.d_model
    a = lambda v: np.asarray(v[...])  # noqa: E731
    t = {"wte.weight": a(model.embed.table), "wpe.weight": a(model.pos),
         "ln_f.weight": a(model.final_norm.scale), "ln_f.bias": a(model.final_norm.bias)}
    for i, blk in enumerate(model.blocks):
        b, mx = f"h.{i}.", blk.mixer
        t[b + "attn.c_attn.weight"] = np.concatenate([a(mx.wq).reshape(D, D), a(mx.wk).reshape(D, D),
                                                      a(mx.wv).reshape(D, D)], axis=1)
        # the value bias was folded into the intercept: written as b_v = 0, c_proj.bias = intercept
        t[b + "attn.c_attn.bias"] = np.concatenate([a(mx.bq).reshape(D), a(mx.bk).reshape(D),
                                                    np.zeros(D, a(mx.bq).dtype)])
        t[b + "attn.c_proj.weight"] = a(mx.wo).reshape(D, D)
        t[b + "attn.c_proj.bias"] = a(blk.mixer_bias)
        for n, hf in (("norm1", "ln_1"), ("norm2", "ln_2")):
            t[b + hf + ".weight"] = a(getattr(blk, n).scale)
            t[b + hf + ".bias"] = a(getattr(blk, n).bias)
        t[b + "mlp.c_fc.weight"], t[b + "mlp.c_fc.bias"] = a(blk.psi.w1), a(blk.psi.b1)
        t[b + "mlp.c_proj.weight"], t[b + "mlp.c_proj.bias"] = a(blk.psi.w2), a(blk.psi.b2)
    if not cfg.tied:
        t["lm_head.weight"] = a(model.readout.embedding.table)
    return t


def _llama_tensors(model: TVVARModel) -> dict[str, np.ndarray]:
    cfg = model.cfg
    D = cfg.d_model
    a = lambda v: np.asarray(v[...])  # noqa: E731
    t = {"model.embed_tokens.weight": a(model.embed.table), "model.norm.weight": a(model.final_norm.scale)}
    for i, blk in enumerate(model.blocks):
        b, mx = f"model.layers.{i}.", blk.mixer
        t[b + "self_attn.q_proj.weight"] = a(mx.wq).reshape(D, -1).T
        t[b + "self_attn.k_proj.weight"] = a(mx.wk).reshape(D, -1).T
        t[b + "self_attn.v_proj.weight"] = a(mx.wv).reshape(D, -1).T
        t[b + "self_attn.o_proj.weight"] = a(mx.wo).reshape(-1, D).T
        t[b + "input_layernorm.weight"] = a(blk.norm1.scale)
        t[b + "post_attention_layernorm.weight"] = a(blk.norm2.scale)
        t[b + "mlp.gate_proj.weight"] = a(blk.psi.w_gate).T
        t[b + "mlp.up_proj.weight"] = a(blk.psi.w_up).T
        t[b + "mlp.down_proj.weight"] = a(blk.psi.w_down).T
    if not cfg.tied:
        t["lm_head.weight"] = a(model.readout.embedding.table)
    return t


def _qwen2_tensors(model: TVVARModel, extras: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Llama tensors and the biases. The value bias is written as loaded when the model's intercept is still
    its fold (bit-exact round trip); after the intercept or W_o changed (training), as the b_v whose fold is the
    intercept (least squares; the same function up to rounding), or refused when no b_v folds to it."""
    t = _llama_tensors(model)
    a = lambda v: np.asarray(v[...])  # noqa: E731
    for i, blk in enumerate(model.blocks):
        b, mx = f"model.layers.{i}.self_attn.", blk.mixer
        H, G, K = mx.num_heads, mx.num_kv_heads, mx.head_dim
        t[b + "q_proj.bias"], t[b + "k_proj.bias"] = a(mx.bq).reshape(-1), a(mx.bk).reshape(-1)
        c, wo = a(blk.mixer_bias), a(mx.wo)
        bv = extras.get(b + "v_proj.bias")
        if bv is None or not np.array_equal(_fold_value_bias(bv, wo, H // G).astype(c.dtype), c):
            # c = Σ_g (Σ_{h ∈ g} W_o^h)ᵀ b_v^g: least squares over the G·K value-bias entries, which reach only
            # a G·K-dimensional subspace of the D intercepts (Qwen2 has no output bias)
            Mg = np.asarray(wo, np.float64).reshape(G, H // G, K, -1).sum(1).reshape(G * K, -1)
            c64 = np.asarray(c, np.float64)
            sol = np.linalg.lstsq(Mg.T, c64, rcond=None)[0]
            miss = float(np.max(np.abs(Mg.T @ sol - c64)))
            if miss > 1e-5 * (1.0 + float(np.max(np.abs(c64)))):
                raise ValueError(f"layer {i}: mixer_bias is not W_oᵀ b_v for any value bias b_v (off by {miss:.3g}): "
                                 "a Qwen2 checkpoint has no output bias, so this intercept (changed after loading?) "
                                 "cannot be written as model_type 'qwen2'")
            bv = sol.astype(c.dtype)
        t[b + "v_proj.bias"] = np.asarray(bv)
    return t


def _phi3_tensors(model: TVVARModel) -> dict[str, np.ndarray]:
    """The Llama tensors fused back as Phi-3 stores them (qkv_proj, gate_up_proj)."""
    t = _llama_tensors(model)
    for i in range(model.cfg.num_layers):
        b = f"model.layers.{i}."
        t[b + "self_attn.qkv_proj.weight"] = np.concatenate(
            [t.pop(b + f"self_attn.{n}_proj.weight") for n in "qkv"], axis=0)
        t[b + "mlp.gate_up_proj.weight"] = np.concatenate(
            [t.pop(b + "mlp.gate_proj.weight"), t.pop(b + "mlp.up_proj.weight")], axis=0)
    return t


def _gpt_neox_tensors(model: TVVARModel) -> dict[str, np.ndarray]:
    """GPT-NeoX's names and layouts; the intercept is written as the output bias with b_v = 0 (the same function;
    reloading gives the same parameters bit for bit, not the source file's bytes), as for GPT-2."""
    a = lambda v: np.asarray(v[...])  # noqa: E731
    g = "gpt_neox."
    t = {g + "embed_in.weight": a(model.embed.table), g + "final_layer_norm.weight": a(model.final_norm.scale),
         g + "final_layer_norm.bias": a(model.final_norm.bias), "embed_out.weight": a(model.readout.embedding.table)}
    for i, blk in enumerate(model.blocks):
        b, mx = f"{g}layers.{i}.", blk.mixer
        H, K = mx.num_heads, mx.head_dim
        D = H * K
        qkv = np.stack([a(mx.wq), a(mx.wk), a(mx.wv)], axis=1)            # [D_in, 3, H, K]
        t[b + "attention.query_key_value.weight"] = qkv.transpose(2, 1, 3, 0).reshape(3 * D, -1)
        bias = np.stack([a(mx.bq), a(mx.bk), np.zeros_like(a(mx.bq))], axis=1)   # [H, 3, K]
        t[b + "attention.query_key_value.bias"] = bias.reshape(-1)
        t[b + "attention.dense.weight"] = a(mx.wo).reshape(D, -1).T
        t[b + "attention.dense.bias"] = a(blk.mixer_bias)
        for n, hf in (("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm")):
            t[b + hf + ".weight"], t[b + hf + ".bias"] = a(getattr(blk, n).scale), a(getattr(blk, n).bias)
        t[b + "mlp.dense_h_to_4h.weight"], t[b + "mlp.dense_h_to_4h.bias"] = a(blk.psi.w1).T, a(blk.psi.b1)
        t[b + "mlp.dense_4h_to_h.weight"], t[b + "mlp.dense_4h_to_h.bias"] = a(blk.psi.w2).T, a(blk.psi.b2)
    return t


def _olmo2_tensors(model: TVVARModel) -> dict[str, np.ndarray]:
    """The Llama tensors under OLMo 2's names: the post-norms, and the QK-norm gains flattened to H·K / G·K."""
    t = _llama_tensors(model)
    for i, blk in enumerate(model.blocks):
        b = f"model.layers.{i}."
        t[b + "post_feedforward_layernorm.weight"] = t.pop(b + "post_attention_layernorm.weight")
        t[b + "post_attention_layernorm.weight"] = t.pop(b + "input_layernorm.weight")
        t[b + "self_attn.q_norm.weight"] = np.asarray(blk.mixer.q_norm[...]).reshape(-1)
        t[b + "self_attn.k_norm.weight"] = np.asarray(blk.mixer.k_norm[...]).reshape(-1)
    return t


def _gemma2_tensors(model: TVVARModel) -> dict[str, np.ndarray]:
    """The Llama tensors under Gemma 2's names: input / post-attention / pre-feedforward / post-feedforward norms."""
    t = _llama_tensors(model)
    for i, blk in enumerate(model.blocks):
        b = f"model.layers.{i}."
        t[b + "pre_feedforward_layernorm.weight"] = t.pop(b + "post_attention_layernorm.weight")
        t[b + "post_attention_layernorm.weight"] = np.asarray(blk.norm1_out.scale[...])
        t[b + "post_feedforward_layernorm.weight"] = np.asarray(blk.norm2_out.scale[...])
    return t


def _to_flax_names(model_type: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in tensors.items():
        base = k.rsplit(".", 1)[0]
        if model_type == "gpt2":
            if base in ("wte", "wpe"):
                nk, nv = base + ".embedding", v
            elif ".ln_" in k or base == "ln_f":
                nk, nv = (base + ".scale" if k.endswith(".weight") else k), v
            elif k.endswith(".weight"):
                nk, nv = base + ".kernel", v.T
            else:
                nk, nv = k, v
            nk = "transformer." + nk if not nk.startswith("lm_head") else nk
        else:
            if base.endswith(("embed_tokens", "embed_in")):
                nk, nv = base + ".embedding", v
            elif "norm" in base or k.endswith(".bias"):
                nk, nv = k, v
            else:
                nk, nv = base + ".kernel", v.T
        out[nk] = nv
    return out


def save_pretrained(pre: Pretrained, path: str | os.PathLike, layout: str | None = None) -> None:
    """Write ``pre`` (from :func:`load_pretrained`) back as config.json + model.safetensors (+ tokenizer.json)
    in ``layout`` ("pytorch" or "flax"; default: the layout it was loaded from). Reloading gives bit-identical
    tvvar parameters. GPT-2's value bias was folded into the intercept at load, so it is written as
    b_v = 0 with c_proj.bias = W_oᵀ b_v + b_o: the same function, not the same bytes as the source file."""
    layout = layout or pre.layout
    if layout not in ("pytorch", "flax"):
        raise ValueError(f"layout must be 'pytorch' or 'flax', got {layout!r}")
    mt = pre.model_type
    if mt in ("mamba", "mamba2") and layout != "pytorch":
        raise ValueError(f"layout: model_type {mt!r} is written in the PyTorch layout only, got 'flax'")
    folder = Path(path)
    if mt == "gpt2":
        tensors = _gpt2_tensors(pre.model)
    elif mt == "mamba2":
        tensors = _mamba2_tensors(pre.model, pre.embedding_key or _MAMBA2_EMBED[0])
    elif mt == "mamba":
        tensors = _mamba_tensors(pre.model, pre.embedding_key or _MAMBA2_EMBED[0])
    elif mt == "qwen2":
        tensors = _qwen2_tensors(pre.model, pre.extras)
    elif mt == "phi3":
        tensors = _phi3_tensors(pre.model)
    elif mt == "olmo2":
        tensors = _olmo2_tensors(pre.model)
    elif mt == "gemma2":
        tensors = _gemma2_tensors(pre.model)
    elif mt == "gpt_neox":
        tensors = _gpt_neox_tensors(pre.model)
    else:
        tensors = _llama_tensors(pre.model)
    if layout == "flax":
        tensors = _to_flax_names(mt, tensors)
    folder.mkdir(parents=True, exist_ok=True)  # only once every tensor is known: a refusal leaves nothing behind
    _write_safetensors(folder / WEIGHTS_NAME, tensors, {"format": "flax" if layout == "flax" else "pt"})
    (folder / "config.json").write_text(json.dumps(pre.hf_config, indent=2))
    if pre.tokenizer is not None:
        pre.tokenizer.save(str(folder / "tokenizer.json"))


def num_parameters(model: TVVARModel) -> int:
    """Number of scalars in the model's parameters (a tied table counted once)."""
    return sum(math.prod(v.get_value().shape) for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable))
