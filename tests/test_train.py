"""tvvar.train: config validation, objectives, the loop, exact resume, SIGKILL, foreign/corrupt dirs, load_run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tvvar.model import ModelConfig
from tvvar.sources import MarkovSource
from tvvar.train import (
    CheckpointError,
    TrainConfig,
    cross_entropy,
    evaluate,
    get_objective,
    load_run,
    register_objective,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


def small_cfg(**kw):
    model = kw.pop("model", ModelConfig(vocab_size=8, d_model=16, num_layers=1, mixer={"num_heads": 2}))
    base = dict(steps=12, batch_size=8, seq_len=16, lr=1e-2, warmup=2, eval_every=6, eval_batches=2,
                ckpt_every=4, keep=5, seed=3)
    base.update(kw)
    return TrainConfig(model, **base)


SRC = MarkovSource(8, 1, alpha=0.3, seed=0)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    r = train(small_cfg(), SRC, out, progress=False)
    return out, r


def losses(r):
    return np.array([x["loss"] for x in r["history"]["train"]])


# ------------------------------------------------------------------------------ config


def test_config_validation():
    with pytest.raises(ValueError, match="steps must be an int ≥ 0"):
        small_cfg(steps=-1)
    with pytest.raises(ValueError, match="unknown objective"):
        small_cfg(objective="nope")
    with pytest.raises(ValueError, match="unknown decomposition"):
        ModelConfig(vocab_size=8, decomposition="nope")
    with pytest.raises(ValueError, match="divisible by the mesh's data axis"):
        small_cfg(batch_size=6, mesh="data=4")
    with pytest.raises(ValueError, match="lr must be > 0"):
        small_cfg(lr=0.0)
    cfg = small_cfg(mesh="data=2,model=4")
    assert cfg.mesh == {"data": 2, "model": 4}
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_objective_registry_and_cross_entropy_reference(monkeypatch):
    # the registration below is undone when the test ends: the registry is process-wide, and test_cli checks
    # that every registered objective is offered by `train --help` (it failed when xdist ran this test first)
    import tvvar.train as train_module

    monkeypatch.setattr(train_module.OBJECTIVES, "_members", dict(train_module.OBJECTIVES._members))
    with pytest.raises(ValueError, match="unknown objective"):
        get_objective("definitely-not")
    from flax import nnx

    from tvvar.model import TVVARModel

    model = TVVARModel(small_cfg().model, rngs=nnx.Rngs(0))
    batch = SRC.batch(jax.random.key(0), 4, 8)
    # one jitted call (eager NNX dispatches op by op, which is slow on a busy machine)
    loss, m, logits = nnx.jit(
        lambda mod, b: (*cross_entropy(mod, b, jax.random.key(1)), mod(b["tokens"][:, :-1])))(model, batch)
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits - top).sum(-1, keepdims=True)) - top
    t = np.asarray(batch["tokens"][:, 1:])
    nll = -np.take_along_axis(logp, t[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["excess"], (nll - np.asarray(batch["entropy"])).mean(), rtol=1e-4, atol=1e-6)

    @register_objective("test_half_ce")
    def half(model, batch, rng):
        loss, m = cross_entropy(model, batch, rng)
        return 0.5 * loss, m

    assert get_objective("test_half_ce") is half
    with pytest.raises(ValueError, match="already registered"):
        register_objective("test_half_ce")(lambda m, b, r: (0.0, {}))


# ------------------------------------------------------------------------------ the loop


@pytest.mark.slow
def test_run_dir_contents_and_learning(full_run):
    out, r = full_run
    for f in ("train_config.json", "data.json", "metrics.jsonl", "loss.png"):
        assert (out / f).is_file(), f
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()) == [4, 8, 12]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r_["step"] for r_ in lines if r_["split"] == "train"] == list(range(1, 13))
    assert [r_["step"] for r_ in lines if r_["split"] == "val"] == [6, 12]
    L = losses(r)
    assert np.all(np.isfinite(L)) and L[-3:].mean() < L[:3].mean() - 0.1  # it learns
    v = r["final"]["val"]
    assert v["loss"] >= v["entropy"] - 0.05  # cannot beat the floor by more than sampling noise


@pytest.mark.slow
def test_load_run_returns_the_trained_model(full_run):
    out, r = full_run
    model, cfg, info = load_run(out)
    assert cfg == small_cfg() and info == json.loads(json.dumps(SRC.info()))
    ids = SRC.sample_batch(jax.random.key(9), 2, 8)[:, :-1]
    np.testing.assert_array_equal(model(ids), r["model"](ids))
    e1 = evaluate(model, SRC, "cross_entropy", 2, jax.random.key(0), batch_size=8, seq_len=16)
    e2 = evaluate(r["model"], SRC, "cross_entropy", 2, jax.random.key(0), batch_size=8, seq_len=16)
    assert e1 == e2 and e1["loss"] >= e1["entropy"] - 0.1
    m4, _, _ = load_run(out, step=4)
    assert not np.array_equal(m4(ids), model(ids))


def test_resume_after_interruption_is_exact(full_run, tmp_path):
    _, ref = full_run

    class Stop(Exception):
        pass

    def stop_at_10(step, metrics):
        if step == 10:
            raise Stop

    with pytest.raises(Stop):
        train(small_cfg(), SRC, tmp_path, progress=False, callback=stop_at_10)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 8]
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(small_cfg(), SRC, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="different configuration: lr"):
        train(small_cfg(lr=2e-2), SRC, tmp_path, resume=True, progress=False)
    r = train(small_cfg(), SRC, tmp_path, resume=True, progress=False)
    assert r["start_step"] == 8
    np.testing.assert_array_equal(losses(r), losses(ref))  # steps 1–8 read back, 9–12 recomputed
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r_["step"] for r_ in lines if r_["split"] == "train"] == list(range(1, 13))


@pytest.mark.slow
def test_foreign_and_corrupt_checkpoint_dirs(full_run, tmp_path):
    out, _ = full_run
    foreign = tmp_path / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    (foreign / "checkpoints" / "model.pt").write_text("not ours")
    with pytest.raises(CheckpointError, match="not orbax step checkpoints"):
        train(small_cfg(), SRC, foreign, resume=True, progress=False)
    noconf = tmp_path / "noconf"
    shutil.copytree(out / "checkpoints", noconf / "checkpoints")
    with pytest.raises(CheckpointError, match="no train_config.json"):
        train(small_cfg(), SRC, noconf, resume=True, progress=False)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    for p in (corrupt / "checkpoints" / "12").rglob("*"):
        if p.is_file():
            p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="could not be restored"):
        train(small_cfg(steps=12), SRC, corrupt, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="could not be restored") as err:
        load_run(corrupt)
    others = sorted(int(p.name) for p in (corrupt / "checkpoints").iterdir() if p.name.isdigit() and p.name != "12")
    assert others and f"other committed checkpoints are steps {others}" in str(err.value)  # and it names --step
    # only the array data corrupt: tensorstore's error carries its whole JSON spec; the message stays one
    # short line that says what was read wrong
    data_only = tmp_path / "data_only"
    shutil.copytree(out, data_only)
    for p in (data_only / "checkpoints" / "12").rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as err:
        load_run(data_only)
    msg = str(err.value)
    assert "could not be restored" in msg and "tensorstore_spec" not in msg and "\n" not in msg, msg
    assert len(msg) < 550 and err.value.__cause__ is None and err.value.__suppress_context__, msg
    # a checkpoint of a different model shape, config file forged to match: refused, not reinitialized
    other = tmp_path / "other"
    train(small_cfg(steps=4, ckpt_every=4, eval_every=0, model=ModelConfig(vocab_size=8, d_model=8, num_layers=1,
                                                                         mixer={"num_heads": 2})),
          SRC, other, progress=False)
    (other / "train_config.json").write_text(json.dumps(small_cfg(steps=4, ckpt_every=4, eval_every=0).to_dict()))
    with pytest.raises(CheckpointError, match="could not be restored"):
        train(small_cfg(steps=4, ckpt_every=4, eval_every=0), SRC, other, resume=True, progress=False)


@pytest.mark.slow
def test_continue_a_finished_run_to_more_steps(full_run, tmp_path):
    """A run trained 12 steps of a 16-step schedule and continued to 16 is the uninterrupted 16-step run;
    eval cadence and size may change on resume, the schedule and the math may not."""
    cfg = small_cfg(steps=16, schedule_steps=16)
    ref = train(cfg, SRC, tmp_path / "ref", progress=False)
    part = tmp_path / "part"
    train(cfg.replace(steps=12), SRC, part, progress=False)
    with pytest.raises(CheckpointError, match=r"schedule length \(schedule_steps, else steps\): saved 16 vs now 20"):
        train(cfg.replace(steps=20, schedule_steps=None), SRC, part, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="different configuration: weight_decay: saved 0.01 vs now 0.1"):
        train(cfg.replace(weight_decay=0.1), SRC, part, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="steps must be ≥ 12"):
        train(cfg.replace(steps=8), SRC, part, resume=True, progress=False)
    r = train(cfg.replace(eval_every=2, eval_batches=3, ckpt_every=8, keep=2), SRC, part, resume=True, progress=False)
    assert r["start_step"] == 12
    np.testing.assert_array_equal(losses(r), losses(ref))
    assert json.loads((part / "train_config.json").read_text())["steps"] == 16
    # the 12-step run of `full_run` decays over its 12 steps: continuing it keeps that schedule when asked
    # to (schedule_steps=12), and a config saved before schedule_steps existed reads as None
    old = tmp_path / "old"
    shutil.copytree(full_run[0], old)
    saved = json.loads((old / "train_config.json").read_text())
    del saved["schedule_steps"]
    (old / "train_config.json").write_text(json.dumps(saved))
    r = train(small_cfg(steps=14, schedule_steps=12), SRC, old, resume=True, progress=False)
    assert r["start_step"] == 12 and [h["lr"] for h in r["history"]["train"][-2:]] == pytest.approx([1e-3, 1e-3])


@pytest.mark.slow
def test_refused_configuration_leaves_no_run_dir(tmp_path):
    ssm = ModelConfig(vocab_size=8, d_model=16, num_layers=1, decomposition="ssm", mixer={"num_heads": 2})
    out = tmp_path / "run"
    with pytest.raises(TypeError, match="needs an attention-decomposed last layer"):
        train(small_cfg(model=ssm, objective="elbo"), SRC, out, progress=False)  # fails while compiling
    assert not out.exists()
    r = train(small_cfg(model=ssm, steps=2, ckpt_every=2, eval_every=0), SRC, out, progress=False)
    assert r["start_step"] == 0 and (out / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_compiled_step_cache_is_bounded(monkeypatch, tmp_path):
    """The module caches hold a step's closure, and with it its data source: a bounded LRU lets it go."""
    import gc
    import weakref

    from tvvar import train as T

    monkeypatch.setattr(T._FNS, "maxsize", 1)
    cfg = small_cfg(steps=1, ckpt_every=0, eval_every=0, eval_batches=1)
    first = MarkovSource(8, 1, alpha=0.3, seed=0)
    train(cfg, first, tmp_path / "a", progress=False)
    alive = weakref.ref(first)
    del first
    train(cfg, MarkovSource(8, 1, alpha=0.3, seed=1), tmp_path / "b", progress=False)  # another source's steps
    gc.collect()
    assert len(T._FNS) == 1 and len(T._SETUPS) <= T._SETUPS.maxsize
    assert alive() is None, "an evicted step's data source is still referenced"


@pytest.mark.slow
def test_a_source_built_again_reuses_the_compiled_steps_and_another_source_does_not(tmp_path):
    """Steps are cached by the source's content (each run of an experiment builds its own source): an equal
    source finds them, a different one gets its own — the same result as in a process that never saw the first."""
    from tvvar import train as T

    cfg = small_cfg(steps=2, ckpt_every=0, eval_every=0, eval_batches=1)
    src = lambda seed: MarkovSource(8, 1, alpha=0.3, seed=seed)  # noqa: E731
    assert T._data_key(src(0)) == T._data_key(src(0)) != T._data_key(src(1))
    unpicklable = src(0)
    unpicklable.hook = lambda: None
    assert T._data_key(unpicklable) == ("id", id(unpicklable))
    first = train(cfg, src(0), tmp_path / "a", progress=False)["final"]
    step = T._make_fns(T._setup(cfg), src(0), T.get_objective(cfg.objective))[0]
    assert T._make_fns(T._setup(cfg), src(0), T.get_objective(cfg.objective))[0] is step
    again = train(cfg, src(0), tmp_path / "b", progress=False)["final"]
    other = train(cfg, src(1), tmp_path / "c", progress=False)["final"]
    T._FNS.clear()
    fresh = train(cfg, src(1), tmp_path / "d", progress=False)["final"]
    assert again["val"]["loss"] == first["val"]["loss"]
    assert other["val"]["loss"] == fresh["val"]["loss"] != first["val"]["loss"]


# ------------------------------------------------------------------------------ SIGKILL


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_train import small_cfg, SRC
    from tvvar.train import train
    train(small_cfg(steps=40, ckpt_every=5, eval_every=0), SRC, sys.argv[1], resume=True, progress=False,
          callback=lambda step, m: time.sleep(0.15))
    """
)


@pytest.mark.slow
def test_sigkill_resumes_from_last_committed_step(tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT)))
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": os.environ.get("JAX_NUM_CPU_DEVICES", "8")}
    proc = subprocess.Popen([sys.executable, str(script), str(run)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            ck = run / "checkpoints"
            if ck.exists() and any(p.name.isdigit() and int(p.name) >= 10 for p in ck.iterdir()):
                break
            if proc.poll() is not None:
                pytest.fail("child exited early: " + proc.stderr.read().decode()[-2000:])
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint ≥ 10 within the time limit")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    committed = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert committed and committed[-1] < 40, committed
    cfg = small_cfg(steps=40, ckpt_every=5, eval_every=0)
    r = train(cfg, SRC, run, resume=True, progress=False)
    assert r["start_step"] == committed[-1]
    ref = train(cfg, SRC, tmp_path / "ref", progress=False)
    np.testing.assert_allclose(losses(r), losses(ref), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ the CLI


def test_cli_help_and_validation(tmp_path, capsys):
    from experiments.train import build_parser, config_from_args, main

    p = build_parser()
    for a in p._actions:
        assert a.help, f"option {a.option_strings} has no help"
    with pytest.raises(ValueError, match="unknown decomposition 'nope'"):
        config_from_args(["--decomposition", "nope"])
    with pytest.raises(ValueError, match="--steps must be ≥ 0"):
        config_from_args(["--steps", "-3"])
    with pytest.raises(ValueError, match="does not divide"):
        config_from_args(["--mesh", "data=3"])
    with pytest.raises(ValueError, match="--data must be"):
        config_from_args(["--data", str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="--max-len .* must be ≥ --seq-len=64"):
        config_from_args(["--max-len", "32"])
    assert config_from_args(["--max-len", "96"]).train_config(5).model.max_len == 96
    with pytest.raises(SystemExit):
        main(["--decomposition", "nope"])
    # one real run through the command line, a few steps on a tiny text file
    f = tmp_path / "t.txt"
    f.write_text("abcabcabd" * 50)
    r = main(["--data", str(f), "--steps", "3", "--batch-size", "4", "--seq-len", "8", "--d-model", "8",
              "--num-layers", "1", "--num-heads", "2", "--eval-every", "0", "--eval-batches", "1",
              "--ckpt-every", "3", "--out", str(tmp_path / "run"), "--no-progress"])
    assert r["final"]["step"] == 3 and (tmp_path / "run" / "checkpoints" / "3").is_dir()
    printed = capsys.readouterr().out
    v = r["final"]["val"]
    # --no-progress keeps the validation line; nats and bits per token (= bits per character for a text file)
    assert f"step 3: val loss {v['loss']:.4f} nats/token = {v['loss'] / np.log(2):.4f} bits/token" in printed
    assert f"validation loss {v['loss']:.4f} nats/token = {v['loss_bits']:.4f} bits/token = bits/character" in printed
    _, cfg, info = load_run(tmp_path / "run")
    assert info["vocab"]["symbols"] == ["a", "b", "c", "d"] and cfg.model.vocab_size == 4
