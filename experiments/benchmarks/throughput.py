"""Training throughput of the README's tinyshakespeare configuration, attention and SSM side by side
(issue item 4): tokens per second of the jitted AdamW train step (char-level, D 128, 2 layers, batch 32 ×
128, the batch drawn inside the step), and the validation loss reached per CPU-minute over a short run.

The README's full run (1400 steps) takes minutes per model; here ``steps`` steps of each model are run
back to back from the same seed, and the entry reports the validation loss (nats/char, 16 batches) after
them with the process CPU seconds they took (``time.process_time``, both cores counted) — the loss reached
per CPU-minute at this budget. Quick: 20 steps; full: 150 steps.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from experiments.benchmarks.timing import compare

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "tinyshakespeare.txt.gz"


def _config(decomposition: str, vocab_size: int, steps: int):
    from tvvar.model import ModelConfig
    from tvvar.train import TrainConfig

    model = ModelConfig(vocab_size, d_model=128, num_layers=2, decomposition=decomposition,
                        max_len=128 if decomposition == "attention" else None)
    return TrainConfig(model, steps=steps, batch_size=32, seq_len=128, ckpt_every=0, eval_every=0,
                       eval_batches=16, seed=0)


def run(quick: bool) -> list[dict]:
    import jax

    from tvvar.sources import make_source
    from tvvar.train import _make_fns, _run_eval, _setup, get_objective

    if not CORPUS.exists():
        return [{"name": "tinyshakespeare training throughput", "baseline": "attention", "contender": "ssm",
                 "baseline_s": float("nan"), "contender_s": float("nan"), "ratio": float("nan"), "target": None,
                 "met": None, "skipped": f"corpus {CORPUS} missing"}]
    data = make_source(str(CORPUS))
    obj = get_objective("cross_entropy")
    steps = 20 if quick else 150
    tokens = 32 * 128
    fns, curves = {}, {}
    for name in ("attention", "ssm"):
        s = _setup(_config(name, data.vocab_size, steps))
        step_fn, eval_fn = _make_fns(s, data, obj)
        holder = [s.params, s.opt_state]
        counter = [0]

        def f(step_fn=step_fn, holder=holder, counter=counter, mesh=s.mesh):
            with jax.set_mesh(mesh):
                holder[0], holder[1], m = step_fn(holder[0], holder[1], np.int32(counter[0]))
            counter[0] += 1
            return m["loss"]

        fns[name] = f
        # the short training run: fresh parameters, CPU seconds of the steps only
        params, opt = s.params, s.opt_state
        with jax.set_mesh(s.mesh):
            jax.block_until_ready(step_fn(jax.tree.map(lambda x: x.copy(), params),
                                          jax.tree.map(lambda x: x.copy(), opt), np.int32(0)))  # warm
            c0 = time.process_time()
            for i in range(steps):
                params, opt, m = step_fn(params, opt, np.int32(i))
            jax.block_until_ready(m["loss"])
            cpu_s = time.process_time() - c0
            val = _run_eval(eval_fn, params, 16)["loss"]
        curves[name] = {"steps": steps, "cpu_seconds": cpu_s, "val_loss_nats_per_char": val,
                        "val_loss_per_cpu_minute": {"cpu_minutes": cpu_s / 60, "val_loss": val}}
        holder[0], holder[1] = params, opt  # timing continues from the trained state
    e = compare("train step, README tinyshakespeare config (D 128, 2 layers, batch 32 × 128): ssm vs attention",
                ("attention", fns["attention"]), ("ssm", fns["ssm"]), target=None, repeats=3 if quick else 7,
                tokens_per_step=tokens)
    e["tokens_per_second"] = {"attention": tokens / e["baseline_s"], "ssm": tokens / e["contender_s"]}
    e["short_run"] = curves
    return [e]
