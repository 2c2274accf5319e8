"""experiments.analyze on random-weight GPT-2 and Llama (GQA) folders written by transformers' Flax models."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import analyze as X
from tvvar.pretrained import load_pretrained
from tvvar.theory.transformer.elbo import elbo_terms

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_latent_model_of_the_last_layer_reads_the_models_own_logits(folder):
    """With GPT-2's intercept (Block.mixer_bias), the latent-position model's P_soft is the model's softmax."""
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


@pytest.mark.slow
def test_cli_information_flow_for_a_prompt_set(folder, tmp_path):
    """--prompts: the flow of sampled continuations, its Doob part and I(S → U), with checks that pass."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("3 4 5 6\n\n40 41 42 43\n7 7 7 7\n")
    res = X.main(["--model", str(folder), "--prompt", "1 2 3 4 5 6", "--out", str(tmp_path / "o"),
                  "--prompts", str(prompts), "--cont-len", "4", "--samples", "8"])
    names = [c["name"] for c in res["checks"]]
    assert sum("chain rule" in n or "martingale" in n or "H(S)" in n for n in names) == 3
    assert all(c["passed"] for c in res["checks"]), res["checks"]
    fl = res["data"]["information_flow"]
    assert fl["K"] == 3 and fl["n"] == 4 and fl["T"] == 4 and fl["B"] == 8
    assert 0 <= fl["directed_information"] <= np.log(3) + 3 * fl["directed_information_se"]
    assert (tmp_path / "o" / "flow.png").stat().st_size > 1000
    # the compensator is non-decreasing (Σ of KLs ≥ 0): the submartingale of Theorem 2
    assert np.all(np.diff(np.asarray(fl["mean_compensator"])) >= -1e-6)


def test_information_checks_fail_on_perturbed_input():
    f = np.linspace(0, 1, 12).reshape(3, 4)
    assert X.check_chain_rule(f, f)["passed"] and not X.check_chain_rule(f, f + 1e-2)["passed"]
    m = np.random.default_rng(0).normal(size=200)
    v = np.ones(200)  # E[M²] = E[V] = 1
    assert X.check_martingale(m - m.mean(), v)["passed"] and not X.check_martingale(m + 1.0, v)["passed"]
    # the standard error comes from V, not from the sample: a sample that missed the rare paths does not pass
    # for being tightly clustered away from 0, and one near 0 with a large V does
    assert not X.check_martingale(np.full(200, 0.5), v)["passed"]
    assert X.check_martingale(np.full(200, 0.5), np.full(200, 100.0))["passed"]
    assert X.check_di_bound(0.5, 0.01, 2)["passed"] and not X.check_di_bound(0.8, 0.01, 2)["passed"]


def test_prompt_set_and_flow_errors(tmp_path):
    enc = lambda s: np.array([int(t) for t in s.split()])  # noqa: E731
    with pytest.raises(FileNotFoundError, match="--prompts"):
        X.read_prompts(tmp_path / "none.txt", enc)
    one = tmp_path / "one.txt"
    one.write_text("1 2 3\n\n")
    with pytest.raises(ValueError, match="at least 2 non-empty lines"):
        X.read_prompts(one, enc)
    with pytest.raises(FileNotFoundError, match="--model"):
        X.load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="samples must be an int ≥ 2"):
        X.information_flow(None, np.zeros((2, 2), np.int32), tmp_path, samples=1)


@pytest.mark.slow
def test_analyze_a_mamba2_model_skips_theorem6_and_keeps_the_law(tmp_path):
    """A Mamba-2 model (the loader's own config mapping): ‖A_ij‖ maps and the law check; no latent-position
    model, said in the results rather than failing."""
    from flax import nnx

    from tvvar.model import TVVARModel
    from tvvar.pretrained import _mamba2_config

    cfg = _mamba2_config({"model_type": "mamba2", "d_model": 16, "n_layer": 2, "vocab_size": 40, "d_state": 4,
                          "headdim": 8, "ngroups": 2}, "float32")
    model = TVVARModel(cfg, rngs=nnx.Rngs(0))
    res = X.analyze(model, np.arange(1, 13, dtype=np.int32)[None], tmp_path, X.Options(window=6))
    assert [c["name"] for c in res["checks"]] == ["mixer(u) = Σ_j A_ij u_j (TV-VAR law)"]
    assert res["checks"][0]["passed"], res["checks"]
    assert res["data"]["theorem6"] is None and "not attention" in res["data"]["theorem6_skipped"]
    assert (tmp_path / "coef_norm_layer1.png").is_file()
    # the flow's checks on an SSM (the same calls as for attention)
    fl = X.information_flow(model, np.asarray([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]], np.int32), tmp_path,
                            cont_len=4, samples=32)
    assert len(fl["checks"]) == 3 and all(c["passed"] for c in fl["checks"]), fl["checks"]


@pytest.mark.slow
def test_cli_on_a_tvvar_run_directory(tmp_path):
    """--model accepts a tvvar run (its latest checkpoint and vocabulary), with the flow of a prompt set."""
    from tvvar.model import ModelConfig
    from tvvar.sources import TextCorpus
    from tvvar.train import TrainConfig, train

    corpus = tmp_path / "tiny.txt"
    corpus.write_text("abba cab dab bad cad " * 20)
    data = TextCorpus(corpus)
    cfg = TrainConfig(model=ModelConfig(vocab_size=data.vocab_size, d_model=16, num_layers=2, mixer={"num_heads": 2},
                                        max_len=32),
                      steps=2, batch_size=2, seq_len=16, warmup=0, eval_every=0, eval_batches=1, ckpt_every=2)
    train(cfg, data, tmp_path / "run", progress=False)
    prompts = tmp_path / "p.txt"
    prompts.write_text("abba\ncabd\n")
    res = X.main(["--model", str(tmp_path / "run"), "--prompt", "abba cab dab", "--out", str(tmp_path / "o"),
                  "--prompts", str(prompts), "--cont-len", "3", "--samples", "6"])
    assert res["config"]["model_type"].startswith("tvvar run")
    assert res["data"]["tokens"][:4] == ["a", "b", "b", "a"]
    assert len(res["checks"]) == 6 and all(c["passed"] for c in res["checks"]), res["checks"]
    with pytest.raises(SystemExit) as e:
        X.main(["--model", str(tmp_path / "run"), "--prompt", "xyz", "--out", str(tmp_path / "o2")])
    assert e.value.code == 2 and not (tmp_path / "o2").exists()
    (tmp_path / "run" / "train_config.json").write_text("{not json")
    with pytest.raises(SystemExit) as e:
        X.main(["--model", str(tmp_path / "run"), "--prompt", "abba", "--out", str(tmp_path / "o3")])
    assert e.value.code == 2 and not (tmp_path / "o3").exists()


# ---- the command line as a user meets it: one error line, nothing half-written, exit 1 on a failed check ----


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return _folder(tmp_path_factory, "gpt2")


def _error_line(capsys, argv, after_progress: bool = False) -> str:
    """The one line a mistake prints (``after_progress``: it may follow the progress bar of work already done)."""
    with pytest.raises(SystemExit) as e:
        X.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err), err
    assert (err[-1:] if after_progress else err) == [err[-1]] and err[-1].startswith("error: "), err
    return err[-1]


def test_every_mistake_is_one_error_line_and_leaves_no_output(gpt2_folder, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["--model", str(gpt2_folder), "--out", str(out)]
    good = ["--prompt", "3 4 5 6 7"]
    unequal = tmp_path / "unequal.txt"
    unequal.write_text("1 2 3\n4 5\n")
    same = tmp_path / "same.txt"
    same.write_text("1 2 3\n4 5 6\n1 2 3\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases = [
        (["--model", str(tmp_path / "nope"), "--out", str(out), *good], "--model"),
        ([*base, "--text", str(tmp_path / "none.txt")], "--text"),
        ([*base, "--prompts", str(tmp_path / "none.txt")], "--prompts"),
        ([*base, "--prompts", str(unequal)], "lengths [3, 2]"),
        ([*base, "--prompts", str(same)], "lines 1 and 3 are the same prompt"),
        ([*base, "--prompts", str(empty)], "at least 2 non-empty lines"),
        ([*base, "--prompt", ""], "at least 2 tokens"),
        ([*base, "--prompt", "hello"], "space-separated token ids"),
        ([*base, *good, "--layer", "2"], "--layer must be in [−2, 1]"),
        ([*base, *good, "--window", "0"], "--window must be an integer ≥ 1"),
        ([*base, *good, "--dtype", "float16x"], "--dtype"),
        ([*base, *good, "--memory-budget", "0"], "--memory-budget must be a number of GiB > 0"),
        ([*base, *good, "--memory-budget", "lots"], "--memory-budget must be a number of GiB > 0"),
        ([*base, *good, "--import", "no_such_module_tvvar"], "--import no_such_module_tvvar"),
        ([*base], "--prompt STR, --text FILE or --prompts FILE"),
    ]
    for argv, needle in cases:
        line = _error_line(capsys, argv)
        assert needle in line, (needle, line)
    assert not out.exists() and not list(tmp_path.glob(".o.partial-*"))


@pytest.mark.slow
def test_a_failed_run_leaves_nothing_and_a_good_one_replaces_the_old(gpt2_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    argv = ["--model", str(gpt2_folder), "--out", str(out), "--prompt", "3 4 5 6 7", "--window", "4"]
    real = X.information_flow

    def broken_after_the_figures(*a, **k):  # the π / ‖A‖ / Theorem 6 figures are written, then this fails
        raise ValueError("samples: simulated failure after the figures were written")

    prompts = tmp_path / "p.txt"
    prompts.write_text("3 4 5\n6 7 8\n")
    monkeypatch.setattr(X, "information_flow", broken_after_the_figures)
    _error_line(capsys, [*argv, "--prompts", str(prompts)], after_progress=True)
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.")]
    monkeypatch.setattr(X, "information_flow", real)
    X.main(argv)
    (out / "stale.txt").write_text("from an earlier run")
    X.main(argv)
    assert (out / "results.json").is_file() and not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.")] == []


@pytest.mark.slow
def test_prompts_alone_and_the_estimate_with_its_standard_error(gpt2_folder, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("3 4 5\n6 7 8\n")
    res = X.main(["--model", str(gpt2_folder), "--out", str(tmp_path / "o"), "--prompts", str(prompts),
                  "--cont-len", "3", "--samples", "4", "--window", "3", "--import", "json"])
    assert res["data"]["tokens"] == ["3", "4", "5"]  # the first prompt is the analysed input
    fl = res["data"]["information_flow"]
    printed = capsys.readouterr().out
    assert f"I(S → U) ≈ {fl['directed_information']:.4f} ± {fl['directed_information_se']:.4f} nats" in printed


@pytest.mark.slow
def test_cli_exits_1_when_a_check_fails(gpt2_folder, tmp_path, monkeypatch):
    argv = ["analyze", "--model", str(gpt2_folder), "--out", str(tmp_path / "o"), "--prompt", "3 4 5 6",
            "--window", "3"]
    monkeypatch.setattr("sys.argv", argv)
    assert X.cli() == 0
    monkeypatch.setattr(X, "check_pi_rows", lambda pi, tol=1e-5: X.check("π rows sum to 1 (Theorem 5)", 1.0, 0.0,
                                                                          "<=", tol, "Eq. 47"))
    assert X.cli() == 1


@pytest.mark.slow
def test_attention_norms_and_law_without_the_coefficient_tensor_float64(tmp_path):
    """analyze's attention path (π, head outputs and the value maps' Gram matrix, no [T, T, D, D] tensor) equals
    the explicit coefficients: ‖A[i, j]‖_F of every (i, j) and Σ_j A[i, j] u_j, to 1e-10 in float64."""
    from flax import nnx

    from tvvar.core import mix_dense
    from tvvar.model import ModelConfig, TVVARModel

    with jax.enable_x64(True):
        cfg = ModelConfig(11, 12, num_layers=1, mixer={"num_heads": 3, "num_kv_heads": 1, "head_dim": 4,
                                                       "rotary": True, "qk_bias": True},
                          param_dtype="float64", dtype="float64")
        model = TVVARModel(cfg, rngs=nnx.Rngs(0))
        ids = np.arange(1, 10, dtype=np.int32)[None]
        mixer = model.blocks[0].mixer
        z = model.blocks[0].mixer_input(model.embed_tokens(jnp.asarray(ids)))
        h, rows = X._attention_law_and_norms(mixer, z)
        A = mixer.coefficients(z)
        np.testing.assert_allclose(rows, np.sqrt(np.sum(np.asarray(A[0]) ** 2, axis=(-2, -1))), rtol=0, atol=1e-10)
        np.testing.assert_allclose(h, np.asarray(mix_dense(A, z)), rtol=0, atol=1e-10)
        res = X.analyze(model, ids, tmp_path, X.Options(window=5))
        np.testing.assert_allclose(res["data"]["coef_norm_rows"][0], rows, rtol=0, atol=1e-12)
        assert all(c["passed"] for c in res["checks"]), res["checks"]


@pytest.mark.slow
def test_theorem6_in_tiles_equals_the_whole_enumeration(gpt2_folder, tmp_path):
    """analyze's Theorem 6 terms come from tiles of b rows × b positions (the block from --memory-budget): the
    same log P, ELBO and gap as the enumeration of the whole [T, H, T, V] conditional; T = 13 is not a multiple
    of the b = 3 that a budget of 3²·H·4·(3V + 16D) bytes gives."""
    pre = load_pretrained(gpt2_folder)
    ids = np.arange(3, 16, dtype=np.int32)[None]
    ids_j = jnp.asarray(ids)
    targets = jnp.concatenate([ids_j[:, 1:], ids_j[:, -1:]], axis=1)
    whole = elbo_terms(X._Truncated(pre.model, 1), ids_j, targets, method="enumerate")
    budget = 9 * 4 * 4 * (3 * 50 + 16 * 32)
    res = X.analyze(pre.model, ids, tmp_path, X.Options(window=4, memory_budget=budget))
    t6 = res["data"]["theorem6"]
    assert t6["block"] == 3
    for k in ("log_p", "elbo", "gap"):
        np.testing.assert_allclose(t6[k], np.asarray(getattr(whole, k))[0, :12], rtol=0, atol=1e-5, err_msg=k)
    assert all(c["passed"] for c in res["checks"]), res["checks"]
    out = tmp_path / "cli"
    r = X.main(["--model", str(gpt2_folder), "--prompt", " ".join(map(str, ids[0])), "--out", str(out),
                "--memory-budget", str(budget / 2**30)])
    assert r["config"]["memory_budget_gib"] == budget / 2**30 and r["data"]["theorem6"]["block"] == 3
    np.testing.assert_allclose(r["data"]["theorem6"]["log_p"], t6["log_p"], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name,options", [
    ("ssm", {"num_heads": 3, "head_dim": 4, "state_size": 5}),
    ("ssm_diagonal", {"num_heads": 2, "head_dim": 3, "state_size": 4}),
    ("ssm_lti", {"num_heads": 2, "head_dim": 3, "state_size": 4}),
    # the exact Mamba-2 block: groups, the x-channel conv bias (its rank-one fold on the diagonal), the gated RMSNorm
    ("mamba", {"num_heads": 4, "head_dim": 3, "state_size": 4, "ngroups": 2, "conv_x_bias": True, "norm": "rms"}),
    ("mamba", {"num_heads": 2, "head_dim": 4, "state_size": 3, "d_conv": 0, "gate": False}),
])
def test_ssm_norms_and_law_without_the_coefficient_tensor_float64(name, options):
    """analyze's SSM paths (the mixing matrix L and Gram matrices of the maps, no [T, T, D, D] tensor) equal the
    explicit coefficients: ‖A[i, j]‖_F of every (i, j) and Σ_j A[i, j] u_j, to 1e-10 in float64 (T = 9 > the conv
    kernel, random conv biases so the Mamba-2 fold is not zero)."""
    from flax import nnx

    from tvvar.core import build, mix_dense

    with jax.enable_x64(True):
        mixer = build(name, 6, rngs=nnx.Rngs(3), dtype=jnp.float64, **options)
        rng = np.random.default_rng(0)
        for p in ("conv_b", "conv_bx", "norm_w", "D"):
            if hasattr(mixer, p):
                getattr(mixer, p).value = jnp.asarray(rng.normal(size=getattr(mixer, p).value.shape))
        assert X._factored_law_and_norms(mixer) is not None
        z = jnp.asarray(rng.normal(size=(1, 9, 6)))
        h, rows = X._factored_law_and_norms(mixer)(mixer, z)
        A = np.asarray(mixer.coefficients(z))
        want = np.sqrt(np.sum(A[0] ** 2, axis=(-2, -1)))
        assert want[0, 0] > 0.1 and want[8, 0] > 0 and np.all(want[np.triu_indices(9, 1)] == 0)
        np.testing.assert_allclose(rows, want, rtol=0, atol=1e-10)
        np.testing.assert_allclose(h, np.asarray(mix_dense(A, z)), rtol=0, atol=1e-10)
        np.testing.assert_allclose(h, np.asarray(mixer(z)), rtol=0, atol=1e-10)


def test_mixers_without_factors_keep_the_explicit_tensor():
    from flax import nnx

    from tvvar.core import build
    from tvvar.decompositions.ssm import DiagonalSSM

    class Mine(DiagonalSSM):  # a subclass that redefines the coefficients gets the explicit tensor it defines
        def coefficients(self, u):
            return super().coefficients(u)

    for mixer in (build("dense", 4, rngs=nnx.Rngs(0), max_len=8), build("ssm_dense", 4, rngs=nnx.Rngs(0)),
                  Mine(4, rngs=nnx.Rngs(0), num_heads=2)):
        assert X._factored_law_and_norms(mixer) is None
