"""Exact DI/TE/CMI for categorical TV-VAR streams: chain-rule identities at 1e-10, an independent causal-
conditioning route, the sampler against the exact joint, bad input."""

import itertools

import numpy as np
import pytest

from tvvar.theory.estimation import categorical as C
from tvvar.theory.estimation import classical as E


@pytest.fixture(scope="module", params=[(0, 2, 4), (1, 3, 3)], ids=["V2m4", "V3m3"])
def proc_joint(request):
    seed, V, m = request.param
    proc = C.random_categorical_tvvar(seed, vocab=V, length=m, width=3, feedback=0.8)
    return proc, C.joint_log_prob(proc)


def test_joint_is_normalised_and_matches_the_conditionals(proc_joint):
    proc, lj = proc_joint
    assert np.exp(lj).sum() == pytest.approx(1.0, abs=1e-12)
    # one state by hand: product of the conditionals read off position by position
    V, m = proc.vocab, proc.length
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, V, m), rng.integers(0, V, m)
    lpx, lpy = C.conditional_log_probs(proc, x, y)
    want = sum(lpx[0, t, x[t]] + lpy[0, t, y[t]] for t in range(m))
    idx = tuple(v for pair in zip(x, y, strict=True) for v in pair)
    assert lj[idx] == pytest.approx(want, abs=1e-12)


def test_chain_rule_identities_exact(proc_joint):
    _, lj = proc_joint
    M = C.cmi_matrix(lj)
    m = M.shape[0]
    di = C.directed_information(lj)
    rev = C.reverse_directed_information(lj)
    mi = C.mutual_information(lj)
    upper = M[np.triu_indices(m)].sum()
    lower = M[np.tril_indices(m, -1)].sum()
    assert di > 1e-3 and rev > 1e-4  # a genuinely coupled process, both directions
    assert abs(upper - di) < 1e-10
    assert abs(lower - rev) < 1e-10
    assert abs(M.sum() - mi) < 1e-10
    assert abs(di + rev - mi) < 1e-10  # Massey–Massey conservation law
    te = C.transfer_entropy(lj, source="x")
    assert te[0] == 0.0
    assert abs(te.sum() + np.trace(M) - di) < 1e-10  # DI = delayed DI (Σ TE) + instantaneous terms
    assert abs(C.reverse_directed_information(lj, delayed=False) - rev - np.trace(M)) < 1e-10
    assert abs(C.transfer_entropy(lj, source="y").sum() - rev) < 1e-10  # Σ TE_{Y→X} = delayed reverse DI


def test_directed_information_by_causal_conditioning(proc_joint):
    # Independent route: I(X^m → Y^m) = E[ln p(Y^m ‖ X^m) − ln p(Y^m)], p(y^m‖x^m) = Π_t p(y_t | x^t, y^{t−1})
    # read directly off the model's conditionals, p(y^m) by summing the joint over x.
    proc, lj = proc_joint
    V, m = proc.vocab, proc.length
    states = np.array(list(itertools.product(range(V), repeat=2 * m)))
    x, y = states[:, 0::2], states[:, 1::2]
    _, lpy = C.conditional_log_probs(proc, x, y)
    causal = np.take_along_axis(lpy, y[..., None], -1)[..., 0].sum(-1)
    p = np.exp(lj)
    py = p.sum(axis=tuple(range(0, 2 * m, 2)))  # axes of y_1..y_m remain, in order
    log_py = np.log(py[tuple(y.T)])
    di = float((p.reshape(-1) * (causal - log_py)).sum())
    assert abs(di - C.directed_information(lj)) < 1e-10


def test_no_coupling_gives_zero_information():
    proc = C.random_categorical_tvvar(2, vocab=2, length=4, coupling=0.0, instantaneous=0.0, feedback=0.0)
    lj = C.joint_log_prob(proc)
    assert abs(C.mutual_information(lj)) < 1e-12
    assert np.abs(C.cmi_matrix(lj)).max() < 1e-12
    assert np.abs(C.mechanistic_association(proc)).max() == 0.0


def test_one_way_coupling_has_zero_reverse_flow():
    proc = C.random_categorical_tvvar(4, vocab=2, length=4, feedback=0.0)
    lj = C.joint_log_prob(proc)
    assert C.directed_information(lj) > 1e-3
    assert abs(C.reverse_directed_information(lj)) < 1e-12  # X never sees Y
    M = C.cmi_matrix(lj)
    assert np.abs(M[np.tril_indices(4, -1)]).max() < 1e-12
    A = C.mechanistic_association(proc)
    assert np.all(A[np.triu_indices(4)] > 0) and np.all(A[np.tril_indices(4, -1)] == 0)


def test_finite_history_te_reduces_to_full_history(proc_joint):
    _, lj = proc_joint
    m = lj.ndim // 2
    np.testing.assert_allclose(C.transfer_entropy(lj, k=m, ell=m), C.transfer_entropy(lj), rtol=0, atol=1e-12)
    short = C.transfer_entropy(lj, k=1, ell=1)
    assert short.shape == (m,) and np.all(short >= -1e-12)


def test_sampler_matches_the_exact_joint():
    proc = C.random_categorical_tvvar(0, vocab=2, length=3)
    lj = C.joint_log_prob(proc)
    n = 40000
    x, y = C.sample(proc, n, seed=1)
    codes = np.ravel_multi_index(tuple(np.stack([x, y], -1).reshape(n, -1).T), lj.shape)
    freq = np.bincount(codes, minlength=lj.size) / n
    p = np.exp(lj).reshape(-1)
    # each cell frequency within 5 binomial standard errors
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12)
    # the plug-in CMI estimator (estimators.py) on the samples agrees with the exact instantaneous term
    Mx = C.cmi_matrix(lj)
    est = float(E.plugin_conditional_mutual_information(x[:, 1], y[:, 1], np.stack([x[:, 0], y[:, 0]], -1)))
    assert est == pytest.approx(Mx[1, 1], abs=0.01)  # Miller bias ≈ 3/(2n) ≪ 0.01; sd ≈ 0.003


def test_bad_input():
    proc = C.random_categorical_tvvar(0, vocab=2, length=3)
    bad = dict(proc.__dict__)
    bad["A_xx"] = bad["A_xx"].copy()
    bad["A_xx"][1, 1] = 0.1
    with pytest.raises(ValueError, match="A_xx.*causality"):
        C.CategoricalTVVAR(**bad)
    bad = dict(proc.__dict__)
    bad["read_y"] = bad["read_y"][:, :1]
    with pytest.raises(ValueError, match="read_y must have shape"):
        C.CategoricalTVVAR(**bad)
    bad = dict(proc.__dict__)
    bad["emb_x"] = bad["emb_x"].copy()
    bad["emb_x"][0, 0] = np.nan
    with pytest.raises(ValueError, match="emb_x must be finite"):
        C.CategoricalTVVAR(**bad)
    with pytest.raises(ValueError, match="tokens must lie"):
        C.conditional_log_probs(proc, np.full((1, 3), 2), np.zeros((1, 3), int))
    with pytest.raises(ValueError, match=r"y must have shape \[n, m=3\]"):
        C.conditional_log_probs(proc, np.zeros((1, 3), int), np.zeros((1, 4), int))
    with pytest.raises(ValueError, match="enumeration limit"):
        C.random_categorical_tvvar(0, vocab=4, length=12)
    with pytest.raises(ValueError, match="normalised"):
        C.mutual_information(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="source"):
        C.transfer_entropy(C.joint_log_prob(proc), source="z")
    with pytest.raises(ValueError, match="n must be a positive int"):
        C.sample(proc, 0, seed=0)
