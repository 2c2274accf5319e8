"""The prompted source (tvvar.sources.prompted): exact probabilities, sampling against them, saving, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvvar.sources import PromptedSource, make_source, source_from_info


def test_conditionals_are_distributions_and_end_token_absorbs():
    with jax.enable_x64(True):
        src = PromptedSource(5, 2, num_prompts=6, seed=3)
        u = jnp.array([[0, 1, 4, 4], [2, 3, 1, 0]], jnp.int32)
        lc = src.log_conditionals(u)
        assert lc.shape == (2, 6, 4, 5)
        np.testing.assert_allclose(np.exp(lc).sum(-1), 1.0, atol=1e-12)
        # after ◁ (= V − 1) only ◁ is possible, under every prompt
        assert np.all(np.exp(lc[0, :, 3, 4]) == 1.0)
        # first output step reads the last prompt token through the prompt's topic
        for k in range(6):
            want = src.transitions[src.topics[k], src.prompts[k, -1]]
            np.testing.assert_allclose(np.exp(lc[1, k, 0]), want, atol=1e-14)


def test_markov_prompt_law_enumerates_every_prompt():
    src = PromptedSource(4, 2, prompt_law="markov", seed=1)
    assert src.prompts.shape == (9, 2) and len({tuple(p) for p in src.prompts}) == 9
    assert abs(src.prompt_probs.sum() - 1) < 1e-12 and np.all(src.prompt_probs > 0)


def test_samples_follow_the_exact_law():
    src = PromptedSource(4, 1, num_prompts=3, seed=2, prompt_law="uniform")
    k, u = src.sample(jax.random.key(0), 20000, 2)
    k, u = np.asarray(k), np.asarray(u)
    for kk in range(3):
        freq = np.bincount(u[k == kk, 0], minlength=4) / np.sum(k == kk)
        want = src.transitions[src.topics[kk], src.prompts[kk, -1]]
        # 4 binomial standard errors at n ≈ 6700
        assert np.all(np.abs(freq - want) < 4 * np.sqrt(want * (1 - want) / np.sum(k == kk)) + 1e-9)


def test_batch_layout_and_entropy():
    src = PromptedSource(5, 2, num_prompts=4, seed=0)
    b = src.batch(jax.random.key(1), 8, 5)
    tok, H, k = np.asarray(b["tokens"]), np.asarray(b["entropy"]), np.asarray(b["prompt"])
    assert tok.shape == (8, 6) and H.shape == (8, 5) and k.shape == (8,)
    np.testing.assert_array_equal(tok[:, :2], src.prompts[k])
    p = src.transitions[src.topics[k][:, None], tok[:, 1:-1]]            # continuation rows 1..4
    with np.errstate(divide="ignore", invalid="ignore"):
        want = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)
    np.testing.assert_allclose(H[:, 1:], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="seq_len"):
        src.batch(jax.random.key(1), 2, 1)


def test_info_round_trip_and_registry():
    src = make_source("prompted", vocab_size=6, prompt_len=2, num_prompts=5, seed=7)
    again = source_from_info(src.info())
    np.testing.assert_array_equal(again.prompts, src.prompts)
    np.testing.assert_array_equal(again.transitions, src.transitions)
    given = PromptedSource(4, 1, prompts=[[0], [2]], prompt_probs=[0.25, 0.75], topics=[1, 0], num_topics=2)
    back = PromptedSource.from_info(given.info())
    np.testing.assert_array_equal(back.prompt_probs, [0.25, 0.75])
    np.testing.assert_array_equal(back.topics, [1, 0])


@pytest.mark.parametrize("kw, match", [
    ({"vocab_size": 2}, "vocab_size"),
    ({"prompt_len": 0}, "prompt_len"),
    ({"end_prob": 1.0}, "end_prob"),
    ({"prompts": np.zeros((0, 2), int)}, "prompts"),
    ({"prompts": [[0, 4]]}, "prompts"),
    ({"prompts": [[0, 1], [1, 0]], "prompt_probs": [0.0, 0.0]}, "prompt_probs"),
    ({"prompt_law": "zipf"}, "prompt_law"),
])
def test_bad_input(kw, match):
    args = {"vocab_size": 5, "prompt_len": 2, **kw}
    with pytest.raises(ValueError, match=match):
        PromptedSource(args.pop("vocab_size"), args.pop("prompt_len"), **args)


def test_out_of_vocabulary_continuation():
    src = PromptedSource(5, 2, num_prompts=4)
    with pytest.raises(ValueError, match="continuation"):
        src.log_conditionals(jnp.array([[0, 5]], jnp.int32))


def test_same_prompt_tokens_with_different_topics_refused():
    """Issue 29 §3.6: the index k would carry information the tokens do not."""
    with pytest.raises(ValueError, match="same tokens"):
        PromptedSource(4, 1, prompts=[[0], [0]], topics=[0, 1], num_topics=2)
    # the same tokens under the same topic (a duplicated row) stay allowed
    src = PromptedSource(4, 1, prompts=[[0], [0], [1]], topics=[1, 1, 0], num_topics=2)
    assert src.num_prompts == 3
