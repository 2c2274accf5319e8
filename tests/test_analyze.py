"""experiments.analyze on random-weight GPT-2 and Llama (GQA) folders written by transformers' Flax models."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import analyze as X
from tvvar.pretrained import load_pretrained
from tvvar.theory.elbo import elbo_terms

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _folder(tmp_path_factory, which):
    d = tmp_path_factory.mktemp(which)
    with jax.numpy_rank_promotion("allow"):  # transformers relies on implicit rank promotion
        if which == "gpt2":
            ref = transformers.FlaxGPT2LMHeadModel(
                transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4), seed=0)
            # a nonzero value/output bias, so the folded intercept matters
            ref.params["transformer"]["h"]["1"]["attn"]["c_attn"]["bias"] = jnp.linspace(-1, 1, 96)
            ref.params["transformer"]["h"]["1"]["attn"]["c_proj"]["bias"] = jnp.linspace(1, -1, 32)
        else:
            ref = transformers.FlaxLlamaForCausalLM(transformers.LlamaConfig(
                vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32), seed=0)
    ref.save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def folder(request, tmp_path_factory):
    return _folder(tmp_path_factory, request.param)


def test_cli_writes_figures_and_passing_checks(folder, tmp_path):
    prompt = " ".join(str(i) for i in range(3, 23))
    res = X.main(["--model", str(folder), "--prompt", prompt, "--out", str(tmp_path / "o"), "--window", "8"])
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["checks"] == res["checks"] and len(res["checks"]) == 3
    assert all(c["passed"] for c in res["checks"]), res["checks"]
    for f in ("pi_layer0.png", "pi_layer1.png", "coef_norm_layer1.png", "theorem6_layer1.png"):
        assert (tmp_path / "o" / f).stat().st_size > 1000
    pi = np.asarray(saved["data"]["pi"][0])
    assert pi.shape == (1, 4, 20, 20)
    txt = tmp_path / "p.txt"
    txt.write_text(prompt)
    res = X.main(["--model", str(folder), "--text", str(txt), "--out", str(tmp_path / "o2"), "--layer", "0"])
    assert all(c["passed"] for c in res["checks"])


def test_latent_model_of_the_last_layer_reads_the_models_own_logits(folder):
    """With the intercept folded (GPT-2), the latent-position model's P_soft is the model's softmax."""
    pre = load_pretrained(folder)
    ids = jnp.asarray(np.arange(3, 19)[None] % 50, jnp.int32)
    targets = jnp.concatenate([ids[:, 1:], ids[:, -1:]], axis=1)
    terms = elbo_terms(X._Truncated(pre.model, 1), ids, targets, method="enumerate")
    lp = jax.nn.log_softmax(pre.model(ids), axis=-1)
    want = np.take_along_axis(np.asarray(lp), np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(terms.soft_ll), want, atol=1e-5)


def test_checks_fail_on_perturbed_input():
    pi = np.full((1, 1, 3, 3), 1 / 3)
    assert X.check_pi_rows(pi)["passed"] and not X.check_pi_rows(pi * 1.01)["passed"]
    h = np.ones((1, 4, 3))
    assert X.check_law(h, h)["passed"] and not X.check_law(h, h + 1e-2)["passed"]
    lp, el = np.array([-1.0, -2.0]), np.array([-1.5, -2.5])
    assert X.check_elbo_bound(lp, el, lp - el)["passed"]
    assert not X.check_elbo_bound(lp, lp + 0.1, np.array([-0.1, -0.1]))["passed"]


def test_bad_prompt_errors():
    with pytest.raises(ValueError, match="space-separated token ids"):
        X.tokenize("hello world", None, 50)
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        X.tokenize("3 70", None, 50)
