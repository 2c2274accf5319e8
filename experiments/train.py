"""Train a TV-VAR language model: ``python -m experiments.train --decomposition attention --data synthetic-tvvar``.

Any registered decomposition (``tvvar.core.available()``) and objective (``tvvar.train``) can be chosen;
``--import MODULE`` imports a module of your own first, so the decompositions (and objectives) it
registers can be named too. ``--data`` is ``synthetic-tvvar`` (the default TV-VAR source with exact
entropies), ``markov``, ``hmm`` or the path of a UTF-8 text file (character level, ``--byte-level`` for
bytes). ``--objective llada`` trains the masked-diffusion model of Eq. 79 (bidirectional mask, one extra
mask token). The run directory (``--out``) receives train_config.json, data.json, metrics.jsonl, loss.png
and checkpoints/; ``--resume`` continues it exactly, also to more ``--steps`` when ``--schedule-steps``
fixes the learning-rate schedule. On a synthetic source the output says how far the validation
cross-entropy is above the source's exact conditional entropy (the floor). A configuration that cannot
train exits with status 2 and one message, and leaves no run directory behind.

Defaults reach validation CE within 0.05 nats of the floor of the default synthetic source in a few
minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.common import fail
from tvvar.core import available, mixer_options
from tvvar.model import ModelConfig, available_psi
from tvvar.sharding import parse_mesh

__all__ = ["CLIConfig", "build_parser", "config_from_args", "import_modules", "main", "cli"]

SYNTHETIC = ("synthetic-tvvar", "markov", "hmm")


def import_modules(names) -> None:
    """Import each module named by ``--import`` (idempotent), so what it registers can be named. The current
    directory is searched first, as ``python -m`` does (a console script such as ``tvvar-train`` does not put
    it on ``sys.path`` by itself)."""
    if names and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # any failure of a user's module is a bad --import, reported as such
            raise ValueError(f"--import {name}: the module could not be imported ({type(e).__name__}: {e}); "
                             "it must be importable from the current directory or the Python path") from None


def _objectives() -> tuple[str, ...]:
    """The objectives a token stream can train: those whose function declares no ``batch_keys`` beyond tokens
    (``semantic_rd``, Eq. 18, needs a prompt set and its law: a library objective, see
    ``tvvar.theory.information.directed.eq18_objective``)."""
    from tvvar.train import available_objectives, get_objective

    return tuple(n for n in available_objectives() if not getattr(get_objective(n), "batch_keys", ()))


@dataclass(frozen=True)
class CLIConfig:
    """What the command line chooses, validated before anything runs."""

    decomposition: str = "attention"
    data: str = "synthetic-tvvar"
    out: Path = Path("runs/train")
    resume: bool = False
    steps: int = 600
    schedule_steps: int | None = None
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 200
    keep: int = 2
    seed: int = 0
    mesh: dict[str, int] | None = None
    objective: str = "cross_entropy"
    d_model: int = 64
    num_layers: int = 2
    num_heads: int | None = None
    psi: str = "ffn"
    xi: float = 1.0
    max_len: int | None = None
    mixer_options: dict[str, Any] = field(default_factory=dict)
    byte_level: bool = False
    val_fraction: float = 0.1
    progress: bool = True
    imports: tuple[str, ...] = ()

    def __post_init__(self):
        import_modules(self.imports)
        if self.decomposition not in available():
            raise ValueError(f"unknown decomposition {self.decomposition!r}; available: {', '.join(available())} "
                             "(a decomposition of your own: --import the module that registers it)")
        if self.objective not in _objectives():
            raise ValueError(f"unknown --objective {self.objective!r}; available: {', '.join(_objectives())}")
        if self.data not in SYNTHETIC and not Path(self.data).is_file():
            raise ValueError(f"--data must be one of {SYNTHETIC} or an existing text file, got {self.data!r}")
        if self.data in SYNTHETIC and (self.byte_level or self.val_fraction != CLIConfig.val_fraction):
            raise ValueError(f"--byte-level and --val-fraction apply to a text file, not --data {self.data} (a "
                             "synthetic source draws its own validation batches)")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"--steps must be ≥ 0, got {self.steps}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise ValueError(f"--schedule-steps must be ≥ 1 (default: --steps), got {self.schedule_steps}")
        if self.max_len is not None and self.max_len < self.seq_len:
            raise ValueError(f"--max-len (learned positions) must be ≥ --seq-len={self.seq_len}, got {self.max_len}")
        self._check_mixer_options()
        if self.objective == "llada" and self.max_len is None and self.decomposition != "dense":
            # the same condition MaskedDiffusionLM warns about: bidirectional mixing with no position
            # vectors is blind to token order
            raise ValueError(f"--objective llada trains a bidirectional model, and {self.decomposition!r} without "
                             f"learned positions cannot tell positions apart; pass --max-len ≥ --seq-len "
                             f"(e.g. --max-len {self.seq_len})")
        if self.mesh is not None:
            import jax

            m = parse_mesh(self.mesh)
            n = m["data"] * m["model"]
            if jax.device_count() % n:
                raise ValueError(f"--mesh {m} needs {n} devices, which does not divide the {jax.device_count()} "
                                 "available (for fake CPU devices set JAX_NUM_CPU_DEVICES)")

    def _check_mixer_options(self) -> None:
        valid = mixer_options(self.decomposition)  # None: a constructor taking **options, not checkable
        if valid is not None:
            unknown = sorted(set(self.mixer_options) - set(valid))
            if unknown:
                raise ValueError(f"--mixer-option {', '.join(unknown)}: not an option of decomposition "
                                 f"{self.decomposition!r}; valid options: {', '.join(valid) or '(none)'}")
        if self.num_heads is None:
            return
        if not (isinstance(self.num_heads, int) and self.num_heads >= 1):
            raise ValueError(f"--num-heads must be ≥ 1, got {self.num_heads}")
        if valid is not None and "num_heads" not in valid:
            with_heads = [n for n in available() if "num_heads" in (mixer_options(n) or ())]
            raise ValueError(f"--num-heads does not apply to decomposition {self.decomposition!r}, which has no "
                             f"heads; decompositions with heads: {', '.join(with_heads)}")
        given = self.mixer_options.get("num_heads", self.num_heads)
        if given != self.num_heads:
            raise ValueError(f"--num-heads {self.num_heads} and --mixer-option num_heads={given} disagree; give one")

    def mixer(self) -> dict[str, Any]:
        opts = dict(self.mixer_options)
        if self.num_heads is not None:
            opts["num_heads"] = self.num_heads
        if self.decomposition == "dense":
            opts.setdefault("max_len", self.seq_len)
        return opts

    def source(self):
        from tvvar.sources import make_source

        if self.data in SYNTHETIC:
            src = make_source(self.data)
        else:
            src = make_source(self.data, byte_level=self.byte_level, val_fraction=self.val_fraction)
        if self.objective == "llada":
            from tvvar.diffusion import MaskTokenSource

            return MaskTokenSource(src)  # the same batches; the mask token is one more id of the model
        return src

    def train_config(self, vocab_size: int):
        """The TrainConfig for a source of ``vocab_size`` tokens (for llada: counting the mask token)."""
        from tvvar.train import TrainConfig

        V = vocab_size - 1 if self.objective == "llada" else vocab_size
        model = ModelConfig(vocab_size=V, d_model=self.d_model, num_layers=self.num_layers,
                            decomposition=self.decomposition, mixer=self.mixer(), psi=self.psi, xi=self.xi,
                            max_len=self.max_len)
        if self.objective == "llada":
            from tvvar.diffusion import llada_model_config

            model = llada_model_config(model)  # V + 1 tokens (the last is the mask), bidirectional
        return TrainConfig(model, objective=self.objective, steps=self.steps, schedule_steps=self.schedule_steps,
                           batch_size=self.batch_size, seq_len=self.seq_len, lr=self.lr, warmup=self.warmup,
                           weight_decay=self.weight_decay, clip=self.clip, eval_every=self.eval_every,
                           eval_batches=self.eval_batches, ckpt_every=self.ckpt_every, keep=self.keep, seed=self.seed,
                           mesh=self.mesh)


def _kv(s: str) -> tuple[str, Any]:
    k, eq, v = s.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def build_parser() -> argparse.ArgumentParser:
    d = CLIConfig()
    p = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable): a module of your own whose @register classes "
                        "(tvvar.core.register) or objectives then can be named, e.g. --import my_package.my_mixers "
                        "--decomposition my_mixer")
    g.add_argument("--decomposition", default=d.decomposition,
                   help=f"registered decomposition of A_tj; one of: {', '.join(available())}")
    g.add_argument("--data", default=d.data, help="synthetic-tvvar | markov | hmm | PATH to a UTF-8 text file")
    g.add_argument("--out", type=Path, default=d.out, help="run directory (config, metrics, loss.png, checkpoints)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last committed checkpoint; --steps, --eval-every, "
                        "--eval-batches, --ckpt-every, --keep and --no-progress may differ from the saved run, and "
                        "every other option defaults to the saved run's (give only what changes); a "
                        "folder that holds no run is refused")
    g.add_argument("--objective", default=d.objective,
                   help=f"training objective; one of: {', '.join(_objectives())} (llada: the masked-diffusion "
                        "model of Eq. 79, bidirectional with a mask token; needs --max-len unless dense; "
                        "elbo, marginal, marginal_attention, soft: an attention decomposition)")
    g.add_argument("--mesh", default=None, help="device mesh, e.g. data=2,model=4 (default: one device)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of every random stream")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    g.add_argument("--schedule-steps", type=int, default=None,
                   help="length of the warmup + cosine learning-rate schedule (default: --steps); fix it to train "
                        "in parts: --steps 100 --schedule-steps 200, then --steps 200 --schedule-steps 200 --resume, "
                        "equals one 200-step run")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per step (divisible by mesh data)")
    g.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per sequence (inputs; targets shifted by 1)")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW)")
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear warmup steps, then cosine decay")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decoupled weight decay")
    g.add_argument("--clip", type=float, default=d.clip, help="global gradient-norm clip (0: none)")
    g.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="steps between validations (0: only at the end)")
    g.add_argument("--eval-batches", type=int, default=d.eval_batches, help="validation batches per evaluation")
    g.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="steps between checkpoints (0: none)")
    g.add_argument("--keep", type=int, default=d.keep, help="checkpoints kept")
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=int, default=d.d_model, help="width D")
    g.add_argument("--num-layers", type=int, default=d.num_layers, help="layers L")
    g.add_argument("--num-heads", type=int, default=None,
                   help="heads H of every decomposition that has heads (attention, SSM, mamba, ...; refused for "
                        "one without); default: the decomposition's own")
    g.add_argument("--psi", default=d.psi, help=f"position-wise Ψ; one of: {', '.join(available_psi())}")
    g.add_argument("--xi", type=float, default=d.xi, help="readout temperature Ξ of Eq. 44")
    g.add_argument("--max-len", type=int, default=None,
                   help="learned absolute position vectors for up to this many tokens, added to u (≥ --seq-len; "
                        "default: none, positions only through the mask and the decomposition)")
    g.add_argument("--mixer-option", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="extra decomposition option (JSON value), repeatable, e.g. --decomposition ssm "
                        "--mixer-option state_size=32; an unknown KEY is refused with the decomposition's options")
    g = p.add_argument_group("text data")
    g.add_argument("--byte-level", action="store_true", help="bytes instead of characters as tokens")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="tail fraction of the file used for validation")
    return p


def saved_defaults(out: Path) -> dict[str, Any]:
    """The command-line defaults that reproduce the run saved in ``out`` (its train_config.json and data.json),
    so that ``--resume`` needs only what changes (``--steps``, ``--eval-every``, …). Nothing when ``out`` holds no
    run (``--resume`` then refuses it); a saved file that cannot be read is a ValueError naming it."""
    from tvvar.train import CONFIG_FILE, DATA_FILE, TrainConfig

    out = Path(out)
    if not (out / CONFIG_FILE).is_file():
        return {}
    try:
        tc = TrainConfig.from_dict(json.loads((out / CONFIG_FILE).read_text()))
        info = json.loads((out / DATA_FILE).read_text()) if (out / DATA_FILE).is_file() else {}
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"--resume: {out / CONFIG_FILE} (or {DATA_FILE}) cannot be read: {e}") from None
    m = tc.model
    d: dict[str, Any] = {
        "objective": tc.objective, "steps": tc.steps, "schedule_steps": tc.schedule_steps,
        "batch_size": tc.batch_size, "seq_len": tc.seq_len, "lr": tc.lr, "warmup": tc.warmup,
        "weight_decay": tc.weight_decay, "clip": tc.clip, "eval_every": tc.eval_every,
        "eval_batches": tc.eval_batches, "ckpt_every": tc.ckpt_every, "keep": tc.keep, "seed": tc.seed,
        "mesh": None if tc.mesh is None else ",".join(f"{k}={v}" for k, v in tc.mesh.items()),
        "decomposition": m.decomposition, "d_model": m.d_model, "num_layers": m.num_layers, "psi": m.psi,
        "xi": m.xi, "max_len": m.max_len, "mixer_option": list(m.mixer.items())}
    kind = info.get("kind")
    if kind in SYNTHETIC:
        d["data"] = kind
    elif kind == "text" and "path" in info:
        d.update(data=info["path"], byte_level=bool(info.get("byte_level", False)),
                 val_fraction=float(info.get("val_fraction", CLIConfig.val_fraction)))
    return d


def config_from_args(argv: list[str] | None = None) -> CLIConfig:
    # --import runs before the full parser is built, so --help and the validation see what it registers
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--import", dest="imports", action="append", default=[])
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--out", type=Path, default=CLIConfig.out)
    known = pre.parse_known_args(argv)[0]
    import_modules(known.imports)
    parser = build_parser()
    if known.resume:  # the saved run's choices are the defaults: only what changes is given again
        parser.set_defaults(**saved_defaults(known.out))
    a = parser.parse_args(argv)
    return CLIConfig(decomposition=a.decomposition, data=a.data, out=a.out, resume=a.resume, steps=a.steps,
                     schedule_steps=a.schedule_steps, batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr,
                     warmup=a.warmup, weight_decay=a.weight_decay, clip=a.clip, eval_every=a.eval_every,
                     eval_batches=a.eval_batches, ckpt_every=a.ckpt_every, keep=a.keep, seed=a.seed,
                     mesh=parse_mesh(a.mesh), objective=a.objective, d_model=a.d_model, num_layers=a.num_layers,
                     num_heads=a.num_heads, psi=a.psi, xi=a.xi, max_len=a.max_len,
                     mixer_options=dict(a.mixer_option), byte_level=a.byte_level, val_fraction=a.val_fraction,
                     progress=not a.no_progress, imports=tuple(a.imports))


class _CheckpointRefused(SystemExit):
    """Status 2 for a checkpoint that cannot be restored. A failed orbax restore leaves tensorstore reads in
    flight whose callbacks post to a closed event loop; how many of them land before or during interpreter
    shutdown depends on timing (a loaded machine widens the window), and one landing at shutdown can print
    after the error line. Run as a program (:func:`cli`, ``python -m``), such a failure therefore ends the
    process at once with :func:`os._exit` once the error line is flushed: nothing is left to save."""


def _as_program() -> int:
    try:
        main()
    except _CheckpointRefused:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    return 0


def _check_resume(c: CLIConfig) -> None:
    """``--resume`` needs a run to resume: a folder that does not exist or holds no run is refused (the library's
    ``train(resume=True)`` starts fresh there, for restart loops; on the command line it is a mistyped path)."""
    from tvvar.train import CONFIG_FILE

    if c.resume and not (Path(c.out) / CONFIG_FILE).is_file():
        what = "does not exist" if not Path(c.out).exists() else f"holds no run (no {CONFIG_FILE})"
        raise ValueError(f"--resume: {str(c.out)!r} {what}; drop --resume to start a run there")


def main(argv: list[str] | None = None) -> dict:
    """Parse, validate, train; returns :func:`tvvar.train.train`'s result. A configuration that cannot
    train raises ``SystemExit(2)`` after one ``error:`` paragraph on stderr."""
    try:
        c = config_from_args(argv)
        _check_resume(c)
        source = c.source()
        tc = c.train_config(source.vocab_size)
    except (ValueError, TypeError, FileNotFoundError) as e:
        fail(str(e))
    from tvvar.sharding import initialize_distributed
    from tvvar.train import CheckpointError, train

    initialize_distributed()  # no-op unless TVVAR_COORDINATOR is set
    try:
        r = train(tc, source, c.out, resume=c.resume, progress=c.progress, eval_lines=True)
    except CheckpointError as e:
        fail(str(e), _CheckpointRefused)
    except (ValueError, TypeError, NotImplementedError) as e:
        # raised while building the model, tracing the objective on the data or compiling the step,
        # all before train() writes anything
        fail(f"cannot train decomposition {c.decomposition!r} with --objective {c.objective} on --data {c.data}: "
              f"{e}")
    v = r["final"]["val"]
    print(f"done: {tc.steps} steps of {tc.model.decomposition} on {c.data} in {r['final']['seconds']:.1f} s → {c.out}")
    what = " (the masked-diffusion loss of Eq. 79)" if c.objective == "llada" else ""
    unit = {"text": " = bits/character" if not c.byte_level else " = bits/byte"}.get(source.info().get("kind"), "")
    print(f"  validation loss {v['loss']:.4f} nats/token = {v['loss'] / math.log(2):.4f} bits/token{unit}{what}")
    if "entropy" in v:
        gap = v["excess"]
        print(f"  exact conditional entropy (floor) {v['entropy']:.4f}; measured − floor = {gap:.4f} nats "
              f"({'within' if gap <= 0.05 else 'NOT within'} 0.05)")
    return r


def cli() -> int:
    """Console-script entry: :func:`main` with the exit status as its value (0 on success)."""
    return _as_program()


if __name__ == "__main__":
    sys.exit(_as_program())
