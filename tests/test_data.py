"""tvvar.sources (synthetic, text): exact entropies of the synthetic sources, the corpus split, clear errors."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvvar.sources import (
    HiddenMarkovSource,
    MarkovSource,
    TextCorpus,
    TVVARSource,
    Vocab,
    entropy_of_logits,
    make_source,
    source_from_info,
)


def h(p):
    p = np.asarray(p, float)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# ------------------------------------------------------------------------------ TV-VAR source


@pytest.fixture(scope="module")
def tvvar_batch():
    src = TVVARSource(8, 8, xi=0.05, seed=3)
    b = jax.jit(lambda k: src.batch(k, 64, 24))(jax.random.key(0))
    return src, b


def test_tvvar_shapes_and_default_is_learnable(tvvar_batch):
    src, b = tvvar_batch
    assert b["tokens"].shape == (64, 25) and b["tokens"].dtype == jnp.int32
    assert b["entropy"].shape == (64, 24) and b["entropy"].dtype == jnp.float32
    assert int(b["tokens"].min()) >= 0 and int(b["tokens"].max()) < 8
    # the default source's conditional entropy is far below log V (it has structure to learn)
    d = TVVARSource()
    H = float(jax.jit(lambda k: d.batch(k, 32, 64)["entropy"].mean())(jax.random.key(1)))
    assert H < 0.7 * math.log(d.vocab_size), (H, math.log(d.vocab_size))


def test_tvvar_entropy_is_that_of_the_true_logits(tvvar_batch):
    # the entropy recorded while sampling equals H(softmax) of the ground-truth model re-run on the
    # finished sequence: by causality row i only sees tokens ≤ i, so this also checks the sampler
    src, b = tvvar_batch
    logits = src.logits(b["tokens"][:, :-1])
    np.testing.assert_allclose(b["entropy"], entropy_of_logits(logits), rtol=1e-5, atol=1e-6)


def test_tvvar_tokens_follow_the_true_law(tvvar_batch):
    # E[−log p(x_{i+1} | x_≤i)] = E[H_i] exactly; the sample means agree within 4 standard errors
    src, b = tvvar_batch
    logp = jax.nn.log_softmax(src.logits(b["tokens"][:, :-1]), -1)
    nll = -np.take_along_axis(np.asarray(logp), np.asarray(b["tokens"][:, 1:, None]), -1)[..., 0]
    diff = (nll - np.asarray(b["entropy"])).mean(1)  # per-sequence, independent across the batch
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert abs(diff.mean()) < 4 * se + 1e-6, (diff.mean(), se)


def test_tvvar_determinism_and_splits():
    src = TVVARSource(8, 8, xi=0.1, seed=0)
    f = jax.jit(lambda k, split: src.batch(k, 4, 8, split), static_argnums=1)
    a, b = f(jax.random.key(5), "train"), f(jax.random.key(5), "train")
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert not np.array_equal(a["tokens"], f(jax.random.key(5), "val")["tokens"])
    with pytest.raises(ValueError, match="split"):
        src.batch(jax.random.key(0), 2, 4, "test")
    with pytest.raises(ValueError, match="seq_len"):
        src.batch(jax.random.key(0), 2, 0)


def test_tvvar_other_decomposition_and_info_roundtrip():
    src = TVVARSource(6, 4, xi=0.2, decomposition="dense", mixer={"max_len": 8}, seed=1)
    b = src.batch(jax.random.key(0), 3, 7)
    src2 = source_from_info(json.loads(json.dumps(src.info())))
    np.testing.assert_array_equal(b["tokens"], src2.batch(jax.random.key(0), 3, 7)["tokens"])
    with pytest.raises(ValueError, match="unknown decomposition"):
        TVVARSource(6, 4, decomposition="nope")


# ------------------------------------------------------------------------------ Markov / HMM


def test_markov_entropy_rate_by_hand():
    # two-state chain: π = (2/3, 1/3) solves πP = π; H = 2/3·h(0.1) + 1/3·h(0.2)
    P = np.array([[0.9, 0.1], [0.2, 0.8]])
    m = MarkovSource(2, 1, transitions=P)
    np.testing.assert_allclose(m.pi, [2 / 3, 1 / 3], atol=1e-12)
    assert abs(m.entropy_rate - (2 / 3 * h([0.9, 0.1]) + 1 / 3 * h([0.2, 0.8]))) < 1e-12


def test_markov_per_token_entropy_and_frequencies():
    m = MarkovSource(5, 1, alpha=0.5, seed=2)
    b = jax.jit(lambda k: m.batch(k, 256, 64))(jax.random.key(0))
    tok, H = np.asarray(b["tokens"]), np.asarray(b["entropy"])
    # exact: the entropy of target i+1 is that of row P[x_i]
    np.testing.assert_allclose(H, np.array([h(r) for r in m.P])[tok[:, :-1]], rtol=1e-6)
    # empirical transition frequencies vs P (binomial standard error, 5σ)
    counts = np.zeros((5, 5))
    np.add.at(counts, (tok[:, :-1].ravel(), tok[:, 1:].ravel()), 1)
    n = counts.sum(1, keepdims=True)
    se = np.sqrt(m.P * (1 - m.P) / n) + 1e-3
    assert np.all(np.abs(counts / n - m.P) < 5 * se)
    # stationary start: every position has E[H] = entropy rate
    per_seq = H.mean(1)
    assert abs(per_seq.mean() - m.entropy_rate) < 4 * per_seq.std(ddof=1) / 16 + 1e-6


def test_markov_order2_first_target_uses_stationary_marginal():
    m = MarkovSource(3, 2, alpha=0.3, seed=0)
    b = m.batch(jax.random.key(1), 64, 10)
    pi2 = m.pi.reshape(3, 3)  # stationary law of (x_0, x_1)
    cond = pi2 / pi2.sum(1, keepdims=True)
    tok = np.asarray(b["tokens"])
    np.testing.assert_allclose(b["entropy"][:, 0], [h(cond[x]) for x in tok[:, 0]], rtol=1e-5)
    s = tok[:, 0] * 3 + tok[:, 1]
    np.testing.assert_allclose(b["entropy"][:, 1], [h(m.P[i]) for i in s], rtol=1e-5)


def test_hmm_with_identity_emissions_is_the_markov_chain():
    P = MarkovSource(4, 1, alpha=0.5, seed=7).P
    hmm = HiddenMarkovSource(4, 4, transitions=P, emissions=np.eye(4))
    b = hmm.batch(jax.random.key(0), 32, 12)
    tok = np.asarray(b["tokens"])
    np.testing.assert_allclose(b["entropy"], np.array([h(r) for r in P])[tok[:, :-1]], rtol=1e-5, atol=1e-6)


def test_hmm_filter_equals_brute_force_enumeration():
    # p(x_i | x_<i) by summing over all hidden paths, float64 at 1e-10
    rng = np.random.default_rng(0)
    S, V, L = 2, 3, 5
    Tm, E = rng.dirichlet(np.ones(S), S), rng.dirichlet(np.ones(V), S)
    with jax.enable_x64(True):
        hmm = HiddenMarkovSource(V, S, transitions=Tm, emissions=E, dtype=jnp.float64)
        b = hmm.batch(jax.random.key(0), 4, L - 1)
        tok, H = np.asarray(b["tokens"]), np.asarray(b["entropy"])
    import itertools

    def joint(xs):  # p(x_0..x_n)
        tot = 0.0
        for zs in itertools.product(range(S), repeat=len(xs)):
            p = hmm.pi[zs[0]] * E[zs[0], xs[0]]
            for a, bz, x in zip(zs, zs[1:], xs[1:], strict=False):
                p *= Tm[a, bz] * E[bz, x]
            tot += p
        return tot

    for bi in range(4):
        for i in range(1, L):
            pre = list(tok[bi, :i])
            q = np.array([joint(pre + [v]) for v in range(V)]) / joint(pre)
            assert abs(H[bi, i - 1] - h(q)) < 1e-10


def test_hmm_entropy_rate_estimate_bounds():
    hmm = HiddenMarkovSource(6, 3, seed=1)
    mean, se = hmm.estimate_entropy_rate(jax.random.key(0), 64, 64, burn_in=16)
    assert 0 < mean < math.log(6) and se > 0


# ------------------------------------------------------------------------------ text corpus


@pytest.fixture
def corpus_file(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("hello wörld, the quick brown fox. " * 20, encoding="utf-8")
    return p


def test_corpus_vocab_split_windows(corpus_file):
    c = TextCorpus(corpus_file, val_fraction=0.25)
    text = corpus_file.read_text(encoding="utf-8")
    assert c.vocab.symbols == tuple(sorted(set(text))) and c.vocab_size == len(set(text))
    assert c.split_size("train") + c.split_size("val") == len(text)
    assert c.split_size("val") == round(0.25 * len(text))
    b = jax.jit(lambda k: c.batch(k, 8, 16))(jax.random.key(0))["tokens"]
    assert b.shape == (8, 17) and b.dtype == jnp.int32
    train_text = text[: c.split_size("train")]
    for row in np.asarray(b):
        assert c.vocab.decode(row) in train_text  # a contiguous window of the train split
    v = np.asarray(c.batch(jax.random.key(0), 8, 16, "val")["tokens"])
    for row in v:
        assert c.vocab.decode(row) in text[c.split_size("train"):]
    assert c.vocab.decode(c.vocab.encode("fox ö")) == "fox ö"
    # a new object over the same file splits and samples identically
    np.testing.assert_array_equal(
        TextCorpus(corpus_file, val_fraction=0.25).batch(jax.random.key(0), 8, 16)["tokens"], b)


def test_corpus_byte_level_and_vocab_json(corpus_file):
    c = TextCorpus(corpus_file, byte_level=True)
    assert c.vocab_size == 256
    raw = corpus_file.read_bytes()
    row = np.asarray(c.batch(jax.random.key(1), 1, 10)["tokens"])[0]
    assert bytes(row.tolist()) in raw
    info = json.loads(json.dumps(TextCorpus(corpus_file).info()))
    assert isinstance(source_from_info(info), TextCorpus)
    info["path"] = "/nonexistent/file.txt"
    v = source_from_info(info)
    assert isinstance(v, Vocab) and v == TextCorpus(corpus_file).vocab


def test_corpus_errors(tmp_path, corpus_file):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextCorpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        TextCorpus(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"abc\xff\xfedef")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        TextCorpus(tmp_path / "bad.txt")
    c = TextCorpus(corpus_file)
    with pytest.raises(ValueError, match="longer than the val split"):
        c.batch(jax.random.key(0), 2, c.split_size("val"), "val")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        c.vocab.encode("Z")


def test_make_source_by_name(corpus_file):
    assert isinstance(make_source("markov", vocab_size=4), MarkovSource)
    assert isinstance(make_source("hmm", vocab_size=4, num_states=2), HiddenMarkovSource)
    assert isinstance(make_source(str(corpus_file)), TextCorpus)


def test_byte_level_corpus_reads_any_binary_file(tmp_path):
    raw = bytes(range(256)) * 3 + b"\xff\xfe\x00\x80"  # not UTF-8
    p = tmp_path / "blob.bin"
    p.write_bytes(raw)
    c = TextCorpus(p, byte_level=True, val_fraction=0.25)
    assert c.vocab_size == 256 and c.split_size("train") + c.split_size("val") == len(raw)
    row = np.asarray(c.batch(jax.random.key(0), 1, 40)["tokens"])[0]
    assert bytes(row.tolist()) in raw
    np.testing.assert_array_equal(c.vocab.encode(b"\xff\x00"), [255, 0])
    with pytest.raises(ValueError, match="not valid UTF-8 .* byte_level=True"):
        TextCorpus(p)  # character mode still decodes, and says how to read it instead


def test_gzipped_corpus_equals_the_plain_file_and_a_truncated_one_is_refused(tmp_path):
    import gzip

    text = "to be, or not to be: that is the question\n" * 20
    plain, packed = tmp_path / "c.txt", tmp_path / "c.txt.gz"
    plain.write_text(text, encoding="utf-8")
    packed.write_bytes(gzip.compress(text.encode()))
    a, b = TextCorpus(plain), TextCorpus(packed)
    assert a.vocab == b.vocab
    for split in ("train", "val"):
        np.testing.assert_array_equal(a._splits[split], b._splits[split])
    truncated = tmp_path / "cut.txt.gz"
    truncated.write_bytes(packed.read_bytes()[:-12])
    with pytest.raises(ValueError, match="cut.txt.gz.*not a complete gzip file"):
        TextCorpus(truncated)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_text(text)
    with pytest.raises(ValueError, match="plain.gz.*not a complete gzip file"):
        TextCorpus(not_gzip)


def test_source_registries_list_the_valid_names(tmp_path):
    names = r"\(hmm, latent-alignment, markov, prompted, synthetic-tvvar\)"
    with pytest.raises(FileNotFoundError, match=r"neither a source name " + names):
        make_source("markvo")
    kinds = r"hmm, latent-alignment, markov, prompted, synthetic-tvvar, text"
    with pytest.raises(ValueError, match=r"unknown data source kind 'lstm' .*expected one of " + kinds):
        source_from_info({"kind": "lstm"})
    m = make_source("markov", vocab_size=3, order=1, seed=7)
    m2 = source_from_info(json.loads(json.dumps(m.info())))
    assert isinstance(m2, MarkovSource) and np.array_equal(m2.P, m.P)
    import tvvar.sources as data

    assert not hasattr(data, "info_json")  # dead code removed (json.dumps(source.info()) is the one way)


def test_sources_refuse_bad_parameters():
    with pytest.raises(ValueError, match="vocab_size must be an int ≥ 2, got 2.5"):
        TVVARSource(2.5, 4)
    with pytest.raises(ValueError, match="xi must be a finite number > 0, got inf"):
        TVVARSource(4, 4, xi=float("inf"))
    with pytest.raises(ValueError, match=r"eps must be a finite number in \[0, 1\), got 1.5"):
        MarkovSource(4, eps=1.5)
    with pytest.raises(ValueError, match="alpha_emit must be a finite number > 0"):
        HiddenMarkovSource(4, 2, alpha_emit=0.0)
    with pytest.raises(ValueError, match="seq_len must be an int ≥ 1"):
        MarkovSource(4).batch(jax.random.key(0), 2, 0)
