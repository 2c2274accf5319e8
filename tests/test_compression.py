"""Lemma 1, Theorems 3–4 (Bai, Section IV): semantic compression by random projections."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
import scipy.linalg

from tvvar.theory.space.compression import (
    KINDS,
    compression_distortion,
    eq39_distortion,
    fwht,
    jl_dimension,
    jl_epsilon,
    jl_inner_product_epsilon,
    max_inner_product_error,
    random_projection,
    random_sphere_points,
)
from tvvar.theory.space.semantic import SemanticSpace


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_fwht_equals_hadamard_values_and_gradients_float64(n):
    with jax.enable_x64(True):
        H = scipy.linalg.hadamard(n).astype(np.float64)
        x = np.random.default_rng(n).standard_normal((3, n))
        np.testing.assert_allclose(fwht(jnp.asarray(x)), x @ H.T, atol=1e-10)
        np.testing.assert_allclose(fwht(jnp.asarray(x.T), axis=0), (x @ H.T).T, atol=1e-10)
        J = jax.jit(jax.jacobian(fwht))(jnp.asarray(x[0]))
        np.testing.assert_allclose(J, H, atol=1e-10)
        w = np.random.default_rng(n + 1).standard_normal(n)
        g = jax.jit(jax.grad(lambda v: jnp.dot(jnp.asarray(w), fwht(v))))(jnp.asarray(x[0]))
        np.testing.assert_allclose(g, H.T @ w, atol=1e-10)


def test_fwht_refuses_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two.*zero-pad to 8"):
        fwht(jnp.ones((6,)))


def test_dct_and_srht_rows_match_scipy_float64():
    with jax.enable_x64(True):
        n, m = 16, 5
        for kind, F in (("dct", scipy.fft.dct(np.eye(n), norm="ortho", axis=0)),
                        ("srht", scipy.linalg.hadamard(n) / np.sqrt(n))):
            P = random_projection(jax.random.key(0), kind, n, m, dtype=jnp.float64)
            expected = np.sqrt(n / m) * F[np.asarray(P.rows)] * np.asarray(P.signs)[None, :]
            np.testing.assert_allclose(P.matrix(jnp.float64), expected, atol=1e-10)
            assert len(set(np.asarray(P.rows).tolist())) == m  # rows drawn without replacement


def test_srht_pads_non_power_of_two_and_says_so():
    with jax.enable_x64(True):
        with pytest.warns(UserWarning, match="zero-padded to N'=16"):
            P = random_projection(jax.random.key(1), "srht", 12, 4, dtype=jnp.float64)
        assert P.padded_n == 16
        x = np.random.default_rng(0).standard_normal((2, 12))
        H = scipy.linalg.hadamard(16) / 4.0
        xp = np.concatenate([x, np.zeros((2, 4))], axis=1) * np.asarray(P.signs)
        np.testing.assert_allclose(P(jnp.asarray(x)), np.sqrt(16 / 4) * (xp @ H.T)[:, np.asarray(P.rows)],
                                   atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_norm_preserved_in_expectation(kind):
    """E‖Px‖² = ‖x‖²: the mean over 200 draws is within 5 standard errors (the sample's own) and 10 %."""
    n, m = 64, 16
    x = np.asarray(random_sphere_points(jax.random.key(7), 1, n))[0] * 2.0
    keys = jax.random.split(jax.random.key(8), 200)
    sq = np.asarray(jax.jit(jax.vmap(lambda k: jnp.sum(random_projection(k, kind, n, m)(x) ** 2)))(keys))
    se = sq.std(ddof=1) / np.sqrt(len(sq))
    assert abs(sq.mean() - 4.0) < 5 * se + 1e-6, (sq.mean(), se)
    assert abs(sq.mean() - 4.0) < 0.1 * 4.0


@pytest.mark.parametrize(
    "kind, n, m, match",
    [("gaussian", 64, 64, "1 ≤ m < N=64"), ("dct", 64, 0, "1 ≤ m < N=64"), ("srht", 64, 100, "m=100"),
     ("fourier", 64, 8, r"one of \['gaussian', 'sparse', 'dct', 'srht'\]")],
)
def test_bad_projection_arguments(kind, n, m, match):
    with pytest.raises(ValueError, match=match):
        random_projection(jax.random.key(0), kind, n, m)


def test_projection_refuses_wrong_width():
    P = random_projection(jax.random.key(0), "gaussian", 8, 4)
    with pytest.raises(ValueError, match="last dimension N=8"):
        P(jnp.ones((3, 7)))


def test_jl_dimension_and_epsilon():
    assert jl_dimension(1000, 0.5) == 332
    eps = jl_epsilon(1000, 332)
    assert 0.49 < eps <= 0.5
    m = 1000
    e = jl_epsilon(1000, m)
    assert m * (e**2 / 2 - e**3 / 3) == pytest.approx(4 * np.log(1000), rel=1e-9)
    with pytest.raises(ValueError, match="eps must lie in"):
        jl_dimension(1000, 1.0)
    with pytest.raises(ValueError, match="num_points"):
        jl_dimension(1, 0.5)
    with pytest.raises(ValueError, match="24 ln M"):
        jl_epsilon(1000, 100)


def _numpy_reference_error(kind, x, m, rng):
    """The same experiment written independently in numpy/scipy (its own RNG, explicit matrices)."""
    n = x.shape[1]
    if kind == "gaussian":
        P = rng.standard_normal((m, n)) / np.sqrt(m)
    else:
        F = scipy.fft.dct(np.eye(n), norm="ortho", axis=0) if kind == "dct" else scipy.linalg.hadamard(n) / np.sqrt(n)
        P = np.sqrt(n / m) * F[rng.choice(n, m, replace=False)] * rng.choice([-1.0, 1.0], n)[None, :]
    y = x @ P.T
    err = np.abs(y @ y.T - x @ x.T)
    np.fill_diagonal(err, 0.0)
    return err.max()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gaussian", "srht", "dct"])
def test_jl_error_small_instance_matches_independent_reference(kind):
    """M = 200 points on S^255, m = 32 and 64: median over 5 draws within 10 % of the numpy reference's."""
    M, n = 200, 256
    x = np.asarray(random_sphere_points(jax.random.key(3), M, n), np.float64)
    rng = np.random.default_rng(0)
    for m in (32, 64):
        ours = np.median([max_inner_product_error(jnp.asarray(x, jnp.float32),
                                                  random_projection(jax.random.key(s), kind, n, m)(x))
                          for s in range(5)])
        ref = np.median([_numpy_reference_error(kind, x, m, rng) for _ in range(5)])
        assert ours == pytest.approx(ref, rel=0.10), (kind, m, ours, ref)


JL_TABLE = {  # max_{i<j} |⟨Px_i, Px_j⟩ − ⟨x_i, x_j⟩|, M = 1000 points on S^1023 (issue 15)
    "gaussian": {64: 0.638, 128: 0.439, 256: 0.320, 512: 0.209},
    "srht": {64: 0.619, 128: 0.395, 256: 0.254, 512: 0.154},
    "dct": {64: 0.621, 128: 0.412, 256: 0.269, 512: 0.150},
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(JL_TABLE))
def test_jl_table_full(kind):
    """The issue's table at ±10 %, the median of 3 projection draws per cell."""
    x = random_sphere_points(jax.random.key(0), 1000, 1024)
    for m, ref in JL_TABLE[kind].items():
        err = np.median([max_inner_product_error(x, random_projection(jax.random.key(s), kind, 1024, m)(x))
                         for s in range(3)])
        assert err == pytest.approx(ref, rel=0.10), (kind, m, err, ref)


@pytest.mark.slow
def test_theorem4_distortion_bounded_and_decreasing_in_m():
    """d_s²(S, S') ≤ Eq. 34 at the identity coupling ≤ ε̂² (exact bounds), and both shrink as m grows."""
    S = SemanticSpace(np.asarray(random_sphere_points(jax.random.key(5), 32, 128)))
    rows = []
    for m in (32, 96):
        out = compression_distortion(S, random_projection(jax.random.key(m), "srht", 128, m))
        assert out["converged"]
        assert out["gw"] <= out["identity_coupling"] * (1 + 1e-3) + 1e-7
        assert out["identity_coupling"] <= out["max_cosine_error"] ** 2 + 1e-7
        rows.append(out)
    assert rows[1]["identity_coupling"] < rows[0]["identity_coupling"]
    assert rows[1]["max_cosine_error"] < rows[0]["max_cosine_error"]
    # Dasgupta–Gupta gives an ε < 1 only where m > 24 ln N (N = 32: 83.2); Eq. 35's inner-product ε needs
    # m > 24 ln 2N (99.8): at m = 96 only the first exists
    assert rows[0]["dasgupta_gupta_epsilon"] is None and rows[0]["inner_product_epsilon"] is None
    assert rows[1]["dasgupta_gupta_epsilon"] == jl_epsilon(32, 96) and rows[1]["inner_product_epsilon"] is None
    assert "lemma1_epsilon" not in rows[1]


def test_two_epsilons_squared_distance_and_inner_product():
    """issue 29 §3.7: jl_epsilon is Dasgupta–Gupta's ε for SQUARED DISTANCES; Eq. 35's ε bounds inner products
    and is the same formula on the 2M points ±x_i (polarisation). Both hold on a Gaussian draw."""
    M, n, m = 50, 512, 400
    assert jl_inner_product_epsilon(M, m) == jl_epsilon(2 * M, m)
    assert jl_inner_product_epsilon(M, m) > jl_epsilon(M, m)  # more points, larger ε at the same m
    with pytest.raises(ValueError, match="24 ln M"):
        jl_inner_product_epsilon(M, 100)  # 24 ln 100 = 110.5
    with pytest.raises(ValueError, match="num_points"):
        jl_inner_product_epsilon(1, 400)
    x = np.asarray(random_sphere_points(jax.random.key(7), M, n), np.float64)
    P = np.asarray(random_projection(jax.random.key(8), "gaussian", n, m).matrix(jnp.float32), np.float64)
    y = x @ P.T
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    pd2 = ((y[:, None] - y[None]) ** 2).sum(-1)
    off = ~np.eye(M, dtype=bool)
    assert np.max(np.abs(pd2 / np.where(off, d2, 1.0) - 1.0)[off]) <= jl_epsilon(M, m)
    assert np.max(np.abs(y @ y.T - x @ x.T)[off]) <= jl_inner_product_epsilon(M, m)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_eq39_as_printed_is_the_projected_inner_products_float64(kind):
    """issue 29 §3.7: Eq. 39 compares sᵀs′ with sᵀPᵀPs′ (the projected points, NOT renormalised), weighted by
    μ⊗μ — against an explicit float64 sum; the renormalised-cosine variant (compression_distortion) is a
    different number, blind to a rescaled projection that Eq. 39 sees."""
    import dataclasses

    n, N, m = 12, 64, 16
    with jax.enable_x64(True):
        x = np.asarray(random_sphere_points(jax.random.key(1), n, N, jnp.float64))
        mu = np.random.default_rng(0).dirichlet(np.ones(n))
        S = SemanticSpace(x, mu)
        P = random_projection(jax.random.key(2), kind, N, m, dtype=jnp.float64)
        Pm = np.asarray(P.matrix(jnp.float64))
        ps = x @ Pm.T
        ref = sum(mu[i] * mu[j] * (x[i] @ x[j] - ps[i] @ ps[j]) ** 2 for i in range(n) for j in range(n))
        got = eq39_distortion(S, P)
        assert abs(got["eq39"] - ref) <= 1e-10 * max(ref, 1e-300)
        assert abs(got["max_inner_product_error"] - np.abs(ps @ ps.T - x @ x.T).max()) <= 1e-12
        assert got["eq39"] <= got["max_inner_product_error"] ** 2
        variant = compression_distortion(S, P, on_unconverged="flag")
        assert abs(variant["identity_coupling"] - got["eq39"]) > 1e-6  # not the same quantity
        if P.matrix_or_none is not None:  # a rescaled P: Eq. 39 changes, the renormalised variant does not
            P2 = dataclasses.replace(P, matrix_or_none=2.0 * P.matrix_or_none)
            assert eq39_distortion(S, P2)["eq39"] > 10 * got["eq39"]
            v2 = compression_distortion(S, P2, on_unconverged="flag")
            assert abs(v2["identity_coupling"] - variant["identity_coupling"]) <= 1e-10
    with pytest.raises(TypeError, match="projection"):
        eq39_distortion(S, Pm)
    with pytest.raises(ValueError, match="projection input"):
        eq39_distortion(S, random_projection(jax.random.key(2), kind, 32, 8))


# --------------------------------------------------------------------------------------------------
# compressed_logits: the readout compressed from D to m (issue 15 item 5)
# --------------------------------------------------------------------------------------------------


def _tiny_model(V=7, D=16, seed=0, **kw):
    from flax import nnx

    from tvvar.model import ModelConfig, TVVARModel

    cfg = ModelConfig(vocab_size=V, d_model=D, num_layers=1, mixer={"num_heads": 2}, xi=0.5, **kw)
    return TVVARModel(cfg, rngs=nnx.Rngs(params=seed))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_compressed_logits_equals_explicit_matrix_float64(kind):
    """⟨Pũ_v/‖Pũ_v‖, Ph⟩/Ξ computed with the explicit [m, D] matrix, values and gradients (1e-10)."""
    from flax import nnx

    from tvvar.theory.space.compression import compressed_logits

    with jax.enable_x64(True):
        model = _tiny_model(param_dtype="float64", dtype="float64")
        ids = jax.random.randint(jax.random.key(1), (2, 5), 0, 7)
        P = random_projection(jax.random.key(2), kind, 16, 8, dtype=jnp.float64)
        M = np.asarray(P.matrix(jnp.float64))
        h = np.asarray(model.hidden(ids), np.float64)
        pu = np.asarray(model.readout.embedding.vectors(), np.float64) @ M.T
        ref = (h @ M.T) @ (pu / np.linalg.norm(pu, axis=1, keepdims=True)).T / 0.5
        got = compressed_logits(model, ids, P)
        np.testing.assert_allclose(np.asarray(got, np.float64), ref, atol=1e-4)  # float32 logits

        graphdef, state = nnx.split(model)

        def loss(st, fn):
            return jnp.sum(jnp.sin(fn(nnx.merge(graphdef, st))))

        def explicit(mdl):
            U = mdl.readout.embedding.vectors()
            pu = U @ M.T
            return (mdl.hidden(ids) @ M.T) @ (pu / jnp.linalg.norm(pu, axis=1, keepdims=True)).T / 0.5

        g1 = jax.grad(loss)(state, lambda mdl: compressed_logits(mdl, ids, P).astype(jnp.float64))
        g2 = jax.grad(loss)(state, explicit)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-3)


def test_compressed_logits_bad_input():
    from tvvar.theory.space.compression import compressed_logits

    model = _tiny_model()
    ids = jnp.zeros((1, 3), jnp.int32)
    with pytest.raises(ValueError, match="model width D=16"):
        compressed_logits(model, ids, random_projection(jax.random.key(0), "gaussian", 32, 8))
    with pytest.raises(TypeError, match="projection must be a Projection"):
        compressed_logits(model, ids, np.eye(16)[:8])
    with pytest.raises(TypeError, match="TVVARModel"):
        compressed_logits(object(), ids, random_projection(jax.random.key(0), "gaussian", 16, 8))


def test_sparse_entries_have_achlioptas_frequencies():
    """±√(3/m) with probability 1/6 each and 0 with 2/3: counts over 256 × 512 entries within 4 standard errors."""
    m, n = 256, 512
    P = np.asarray(random_projection(jax.random.key(5), "sparse", n, m).matrix(jnp.float32)) / np.sqrt(3.0 / m)
    assert set(np.unique(np.round(P, 5))) <= {-1.0, 0.0, 1.0}
    for value, prob in ((1.0, 1 / 6), (0.0, 2 / 3), (-1.0, 1 / 6)):
        freq = np.mean(np.isclose(P, value))
        assert abs(freq - prob) <= 4 * np.sqrt(prob * (1 - prob) / P.size), (value, freq)
