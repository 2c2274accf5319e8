"""The command lines never leave a broken run: experiments.train, experiments.generate, experiments.benchmark.

Every refusal is exit status 2 with one ``error:`` paragraph naming the option, and no run directory.
Tiny models (D 16, one layer, T 8, two steps), ``main(argv)`` in process except where process exit matters.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from experiments import benchmark, generate
from experiments import train as train_cli
from tvvar.train import available_objectives, load_run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "2", "--batch-size", "2", "--seq-len", "8", "--d-model", "16", "--num-layers", "1", "--warmup", "1",
        "--eval-every", "0", "--eval-batches", "1", "--ckpt-every", "2", "--no-progress"]
MARKOV = [*TINY, "--data", "markov", "--max-len", "8"]


def refused(main, argv, capsys) -> str:
    """The one-paragraph message of a refused command line (status 2)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, (e.value.code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def train_losses(run: Path) -> list[float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if r["split"] == "train"]


# ------------------------------------------------------------------------------ experiments.train


@pytest.mark.parametrize("extra, says", [
    (["--seq-len", "32"], "window of seq_len + 1 = 33 tokens is longer than the train split"),
    (["--decomposition", "ssm", "--mixer-option", "state_dim=16"],
     "--mixer-option state_dim: not an option of decomposition 'ssm'; valid options: A_init,"),
    (["--decomposition", "ssm", "--objective", "elbo"], "needs an attention-decomposed last layer"),
    (["--num-heads", "3"], "d_model=16 is not divisible by num_heads=3"),
    (["--decomposition", "dense", "--num-heads", "2"], "--num-heads does not apply to decomposition 'dense'"),
    (["--objective", "llada"], "--objective llada trains a bidirectional model"),
    (["--objective", "nope"], "unknown --objective 'nope'; available: cross_entropy,"),
    (["--import", "tvvar_no_such_module"], "--import tvvar_no_such_module: the module could not be imported"),
    (["--data", "markov", "--byte-level"], "--byte-level and --val-fraction apply to a text file, not --data markov"),
])
def test_train_refusals_exit_2_and_leave_no_run_dir(tmp_path, capsys, extra, says):
    corpus = tmp_path / "short.txt"
    corpus.write_text("abcabcabd" * 3)  # 27 characters: a 22-token train split
    out = tmp_path / "run"
    msg = refused(train_cli.main, [*TINY, "--data", str(corpus), "--out", str(out), *extra], capsys)
    assert says in msg, msg
    assert not out.exists()


@pytest.mark.slow
def test_train_rerun_after_a_refusal_works_and_num_heads_reaches_an_ssm(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*TINY, "--data", "markov", "--decomposition", "ssm", "--out", str(out)]
    refused(train_cli.main, [*argv, "--mixer-option", "chunk_size=0"], capsys)  # refused while building
    r = train_cli.main([*argv, "--num-heads", "2"])
    assert r["final"]["step"] == 2 and (out / "checkpoints" / "2").is_dir()
    model, cfg, _ = load_run(out)
    assert cfg.model.mixer == {"num_heads": 2} and model.blocks[0].mixer.num_heads == 2


def test_help_lists_every_objective_and_a_real_mixer_option(capsys):
    from tvvar.core import mixer_options

    with pytest.raises(SystemExit) as e:
        train_cli.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    offered = [n for n in available_objectives() if n not in LIBRARY_ONLY_OBJECTIVES]
    assert f"one of: {', '.join(offered)}" in text
    assert "--mixer-option state_size=32" in text and "state_dim" not in text
    assert "state_size" in mixer_options("ssm")


def test_num_heads_reaches_every_decomposition_with_heads():
    from tvvar.core import available, mixer_options

    with_heads = [n for n in available() if "num_heads" in (mixer_options(n) or ())]
    assert {"attention", "bilinear_attention", "ssm", "ssm_diagonal", "ssm_lti", "mamba"} <= set(with_heads)
    for name in with_heads:
        assert train_cli.config_from_args(["--decomposition", name, "--num-heads", "2"]).mixer()["num_heads"] == 2
    # unset: each decomposition's own default (ssm_diagonal: one head per channel), nothing forced
    assert "num_heads" not in train_cli.config_from_args(["--decomposition", "ssm_diagonal"]).mixer()
    with pytest.raises(ValueError, match="disagree"):
        train_cli.config_from_args(["--num-heads", "2", "--mixer-option", "num_heads=4"])


OBJECTIVE_ARGS = {"cross_entropy": [], "elbo": [], "marginal": [], "marginal_attention": [], "soft": [],
                  "llada": ["--max-len", "8"]}


# objectives that need more than a token stream (their function declares batch_keys): the train CLI does not offer
# them, and refuses them by name
# Eq. 18: tvvar.theory.information.directed
LIBRARY_ONLY_OBJECTIVES = {"semantic_rd": "unknown --objective 'semantic_rd'"}


def test_every_objective_of_help_is_tested():
    assert set(OBJECTIVE_ARGS) | set(LIBRARY_ONLY_OBJECTIVES) == set(available_objectives())
    assert not set(OBJECTIVE_ARGS) & set(LIBRARY_ONLY_OBJECTIVES)


@pytest.mark.parametrize("objective", sorted(LIBRARY_ONLY_OBJECTIVES))
def test_library_only_objectives_are_refused_with_what_they_need(objective, tmp_path, capsys):
    out = tmp_path / "run"
    msg = refused(train_cli.main, [*MARKOV, "--objective", objective, "--out", str(out)], capsys)
    assert LIBRARY_ONLY_OBJECTIVES[objective] in msg, msg
    offered = " ".join(train_cli.build_parser().format_help().split()).split("training objective; one of: ")[1]
    assert objective not in offered.split(" (")[0].split(", ")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("objective", sorted(OBJECTIVE_ARGS))
def test_every_objective_trains_two_steps(tmp_path, capsys, objective):
    out = tmp_path / objective
    r = train_cli.main([*TINY, "--data", "markov", "--num-heads", "2", "--objective", objective,
                        *OBJECTIVE_ARGS[objective], "--out", str(out)])
    assert [h["step"] for h in r["history"]["train"]] == [1, 2]
    assert all(map(math.isfinite, train_losses(out)))
    model, cfg, info = load_run(out)
    V = json.loads((out / "data.json").read_text())["vocab_size"]
    if objective == "llada":  # the masked-diffusion model: bidirectional, one extra (mask) token
        assert cfg.model.mask == "bidirectional" and cfg.model.vocab_size == V + 1 and info["mask_token"] == V
        capsys.readouterr()
        msg = refused(generate.main, ["--run", str(out), "--prompt", "1 2"], capsys)
        assert "bidirectional model" in msg and "tvvar.diffusion.generate" in msg
    else:
        assert cfg.model.mask == "causal" and cfg.model.vocab_size == V


@pytest.mark.slow
def test_resume_to_more_steps_equals_the_uninterrupted_run(tmp_path, capsys):
    base = [*TINY[2:], "--data", "markov", "--schedule-steps", "4"]  # without "--steps 2"
    whole, part = tmp_path / "whole", tmp_path / "part"
    train_cli.main([*base, "--steps", "4", "--out", str(whole)])
    train_cli.main([*base, "--steps", "2", "--out", str(part)])
    msg = refused(train_cli.main, [*base, "--steps", "4", "--lr", "0.01", "--resume", "--out", str(part)], capsys)
    assert "different configuration: lr: saved 0.003 vs now 0.01" in msg
    no_schedule = [a for a in base if a not in ("--schedule-steps", "4")]
    msg = refused(train_cli.main, [*no_schedule, "--steps", "6", "--schedule-steps", "6", "--resume", "--out",
                                   str(part)], capsys)
    assert "schedule length (schedule_steps, else steps): saved 4 vs now 6" in msg and "--schedule-steps 4" in msg
    r = train_cli.main([*base, "--steps", "4", "--resume", "--eval-every", "1", "--eval-batches", "2",
                        "--out", str(part)])
    assert r["start_step"] == 2 and train_losses(part) == train_losses(whole)
    # --resume of a folder that does not exist or holds no run is a mistake, not a fresh start
    msg = refused(train_cli.main, [*base, "--steps", "4", "--resume", "--out", str(tmp_path / "typo")], capsys)
    assert "--resume" in msg and "does not exist" in msg and not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    msg = refused(train_cli.main, [*base, "--steps", "4", "--resume", "--out", str(tmp_path / "empty")], capsys)
    assert "holds no run (no train_config.json)" in msg and not list((tmp_path / "empty").iterdir())


@pytest.mark.slow
def test_resume_reads_the_saved_configuration(tmp_path):
    """--resume needs only what changes: the model, data, optimizer and schedule come from the saved run."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcab cabba " * 40)
    base = [*TINY[2:], "--data", str(corpus), "--byte-level", "--val-fraction", "0.2", "--d-model", "8",
            "--num-heads", "2", "--psi", "identity", "--lr", "0.01", "--seed", "3", "--schedule-steps", "4",
            "--mixer-option", "head_dim=2"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    train_cli.main([*base, "--steps", "4", "--out", str(whole)])
    train_cli.main([*base, "--steps", "2", "--out", str(part)])
    r = train_cli.main(["--resume", "--out", str(part), "--steps", "4", "--no-progress"])
    assert r["start_step"] == 2 and train_losses(part) == train_losses(whole)
    _, cfg, info = load_run(part)
    assert (cfg.model.d_model, cfg.model.psi, cfg.lr, cfg.seed, cfg.model.mixer["head_dim"]) == (8, "identity",
                                                                                                   0.01, 3, 2)
    assert info["byte_level"] is True and info["val_fraction"] == 0.2


USER_MIXERS = '''
import jax.numpy as jnp
from tvvar.core import Mixer, check_u, lecun_normal, param, register


@register("running_mean")
class RunningMean(Mixer):
    """A[i, j] = W / (i + 1) for j <= i: a causal running mean, then one matrix."""

    def __init__(self, d_model, *, mask="causal", rngs, dtype=jnp.float32, scale=1.0):
        self.d_in = self.d_out = d_model
        self.mask = mask
        self.scale = scale
        self.W = param(lecun_normal(rngs.params(), (d_model, d_model), d_model, dtype), "embed2", "embed")

    def coefficients(self, u):
        check_u(u, self.d_in)
        B, T, _ = u.shape
        w_TxT = self.support(T) * self.scale / jnp.arange(1, T + 1)[:, None]
        return jnp.broadcast_to(w_TxT[:, :, None, None] * self.W[...][None, None], (B, T, T, self.d_out, self.d_in))

    def __call__(self, u):
        check_u(u, self.d_in)
        mean = jnp.cumsum(u, axis=1) * self.scale / jnp.arange(1, u.shape[1] + 1)[None, :, None]
        return mean @ self.W[...].T
'''


def test_a_user_decomposition_trains_from_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "tvvar_test_user_mixers.py").write_text(USER_MIXERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    argv = [*TINY, "--data", "markov", "--decomposition", "running_mean", "--out", str(out)]
    msg = refused(train_cli.main, argv, capsys)
    assert "unknown decomposition 'running_mean'" in msg and "--import" in msg
    msg = refused(train_cli.main, [*argv, "--import", "tvvar_test_user_mixers", "--mixer-option", "scal=2"], capsys)
    assert "valid options: scale" in msg
    r = train_cli.main([*argv, "--import", "tvvar_test_user_mixers", "--mixer-option", "scale=0.5"])
    assert r["final"]["step"] == 2
    model, cfg, _ = load_run(out)
    assert cfg.model.decomposition == "running_mean" and type(model.blocks[0].mixer).__name__ == "RunningMean"
    with pytest.warns(UserWarning, match="no decoding cache"):
        g = generate.main(["--run", str(out), "--prompt", "1 2", "--max-new-tokens", "3", "--temperature", "0",
                           "--import", "tvvar_test_user_mixers"])
    assert len(g["tokens"]) == 5


def test_import_finds_a_module_in_the_current_directory(tmp_path, monkeypatch):
    """A console script (tvvar-train) does not put the current directory on sys.path; --import searches it."""
    (tmp_path / "tvvar_cwd_module.py").write_text("MARK = 7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "tvvar_cwd_module", raising=False)
    train_cli.import_modules(["tvvar_cwd_module"])
    assert sys.modules["tvvar_cwd_module"].MARK == 7
    monkeypatch.delitem(sys.modules, "tvvar_cwd_module")


@pytest.mark.slow
def test_loading_a_run_logs_no_absl_warnings(runs, caplog):
    """generate / analyze start quietly: orbax's read-only options are set, not "adjusted" with a warning each."""
    import logging

    with caplog.at_level(logging.WARNING):
        load_run(runs / "markov")
    assert not [r.getMessage() for r in caplog.records if r.name == "absl"]


# ------------------------------------------------------------------------------ corrupt checkpoint


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_error_line(runs, tmp_path):
    """In a fresh process, as a user meets it: no traceback, no tensorstore spec, no "Event loop is closed"."""
    run = tmp_path / "run"
    shutil.copytree(runs / "markov", run)
    argv = [*MARKOV, "--out", str(run)]
    for p in (run / "checkpoints" / "2").rglob("*"):
        if p.is_file() and p.parent.name == "d":  # the array data, behind intact metadata
            p.write_bytes(b"garbage")
    # 900 s: at a load of 30–95 on 2 cores, the start-up of a fresh process alone takes minutes
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    proc = subprocess.run([sys.executable, "-m", "experiments.train", *argv, "--resume"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: checkpoint step 2 in") and "could not be restored" in lines[0], lines[0]
    assert not any(s in proc.stderr for s in ("Traceback", "Event loop is closed", "tensorstore_spec"))


# ------------------------------------------------------------------------------ experiments.generate


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    corpus = root / "corpus.txt"
    corpus.write_text("abcabcabd" * 20)
    train_cli.main([*MARKOV, "--out", str(root / "markov")])
    train_cli.main([*TINY, "--data", str(corpus), "--out", str(root / "text")])
    (root / "empty").mkdir()
    return root


@pytest.mark.parametrize("run, extra, says", [
    ("missing", [], "--run {root}/missing: no such run directory"),
    ("empty", [], "is not a tvvar run directory (no train_config.json)"),
    ("markov", ["--prompt", "1 x"], "--prompt must be a space-separated list of integer token ids"),
    ("markov", ["--prompt", "1 99"], "--prompt token ids must lie in [0, "),
    ("markov", ["--prompt", " "], "got an empty prompt"),
    ("text", ["--prompt", "abz"], "--prompt 'abz': text contains characters outside the vocabulary"),
    ("markov", ["--max-new-tokens", "-1"], "--max-new-tokens must be ≥ 0"),
    ("markov", ["--max-new-tokens", "7"], "exceeds the run's length limit 8"),
    ("markov", ["--temperature", "-0.5"], "--temperature must be a finite number ≥ 0"),
    ("markov", ["--top-k", "0"], "--top-k must be ≥ 1"),
    ("markov", ["--top-k", "1000"], "--top-k must be at most the run's vocabulary size"),
    ("markov", ["--top-p", "1.5"], "--top-p must lie in (0, 1]"),
    ("markov", ["--step", "1"], "step 1 is not among the committed checkpoints [2]"),
    ("markov", ["--import", "tvvar_no_such_module"], "--import tvvar_no_such_module"),
])
def test_generate_refusals_exit_2(runs, capsys, run, extra, says):
    argv = ["--run", str(runs / run), "--prompt", "1 2", *extra]
    msg = refused(generate.main, argv, capsys)
    assert says.format(root=runs) in msg, msg


def test_generate_continues_a_prompt(runs):
    r = generate.main(["--run", str(runs / "markov"), "--prompt", "1 2", "--max-new-tokens", "6", "--temperature", "0"])
    assert r["prompt_len"] == 2 and len(r["tokens"]) == 8 and r["tokens"][:2] == [1, 2]
    r = generate.main(["--run", str(runs / "text"), "--prompt", "ab", "--max-new-tokens", "4", "--top-k", "2"])
    assert r["text"].startswith("ab") and len(r["new_text"]) == 4 and set(r["new_text"]) <= set("abcd")


def test_console_script_entries_return_status_0(runs, monkeypatch):
    """sys.exit(main()) would turn main's result dict into status 1; cli() is the status."""
    monkeypatch.setattr(train_cli, "main", lambda argv=None: {"final": {}})
    assert train_cli.cli() == 0
    monkeypatch.setattr(sys, "argv", ["tvvar-generate", "--run", str(runs / "markov"), "--prompt", "1",
                                      "--max-new-tokens", "2"])
    assert generate.cli() == 0


# ------------------------------------------------------------------------------ experiments.benchmark


def _fake_benchmark(monkeypatch, met):
    mod = types.ModuleType("experiments.benchmarks._fake")
    mod.run = lambda quick: [{"name": "fake step", "baseline": "slow", "contender": "fast", "baseline_s": 2.0,
                              "contender_s": 1.0, "ratio": 0.5, "target": 0.4, "met": met}]
    monkeypatch.setitem(sys.modules, "experiments.benchmarks._fake", mod)
    monkeypatch.setattr(benchmark, "discover", lambda: ["_fake"])


@pytest.mark.parametrize("met, extra, status",
                         [(True, [], 0), (None, [], 0), (False, [], 1), (False, ["--no-fail"], 0)])
def test_benchmark_exit_status_follows_the_targets(tmp_path, monkeypatch, capsys, met, extra, status):
    _fake_benchmark(monkeypatch, met)
    assert benchmark.main(["--out", str(tmp_path), *extra]) == status
    entries = json.loads((tmp_path / "benchmark.json").read_text())  # written whatever the status
    assert [(e["module"], e["met"]) for e in entries] == [("_fake", met)]
    if met is False:
        assert "1 of 1 targets NOT met: [_fake] fake step" in capsys.readouterr().err
