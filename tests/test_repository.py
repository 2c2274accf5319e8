"""The repository stands on its own: a fresh clone with nothing beside it has its corpus, its design
document, a notebook per experiment, the modules its documents name, and working console scripts."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
README = ROOT / "README.md"
CORPUS = ROOT / "data" / "tinyshakespeare.txt.gz"  # gzipped: 0.43 MB in git instead of 1.1 MB
CORPUS_BYTES = 1_115_394
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"  # Karpathy's char-rnn input.txt

SCANNED = ("tvvar", "experiments", "tests", "notebooks", "scripts", "docs", ".ci")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".sh", ".toml", ".txt", ".json", ".cfg", ".yaml", ".yml", ""}
# the team folder one level up, `shared/data`, and the same path built with pathlib: a fresh clone has no
# shared/ beside it, so any of these is a file that only exists on the team's machine.
OUTSIDE = re.compile(r"\.\./shared|shared/data|[\"']shared[\"']\s*/\s*[\"']data[\"']")

CONSOLE_SCRIPTS = ("tvvar-train", "tvvar-generate", "tvvar-reproduce", "tvvar-benchmark")


def _scanned_files() -> list[Path]:
    files = [README, ROOT / "pyproject.toml"]
    for top in SCANNED:
        for p in sorted((ROOT / top).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in TEXT_SUFFIXES:
                files.append(p)
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def test_nothing_refers_to_files_outside_the_repository():
    hits = []
    for p in _scanned_files():
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "files refer to the team folder beside the repo, which a fresh clone lacks:\n" + "\n".join(hits)


def test_the_outside_pattern_catches_each_form():
    # the scan above passes vacuously if the pattern is wrong, so pin it on the forms seen in this tree
    up = ".." + "/shared"  # spelled in two parts so that a plain grep of the tree finds no such path here
    for bad in (f"--data {up}/data/tinyshakespeare.txt", f"[DESIGN.md]({up}/DESIGN.md)",
                'parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"'):
        assert OUTSIDE.search(bad), bad
    assert not OUTSIDE.search("--data data/tinyshakespeare.txt")


def test_the_corpus_is_inside_the_repository():
    assert CORPUS.is_file(), f"{CORPUS.relative_to(ROOT)} is missing"
    import gzip

    raw = gzip.decompress(CORPUS.read_bytes())
    assert len(raw) == CORPUS_BYTES, f"{CORPUS.name}: {len(raw)} bytes, expected {CORPUS_BYTES}"
    import hashlib

    assert hashlib.sha256(raw).hexdigest() == CORPUS_SHA256
    assert raw.startswith(b"First Citizen:")


def test_the_gzipped_corpus_reads_as_the_plain_text(tmp_path):
    import gzip

    from tvvar.sources import TextCorpus

    plain = tmp_path / "tinyshakespeare.txt"
    plain.write_bytes(gzip.decompress(CORPUS.read_bytes()))
    a, b = TextCorpus(CORPUS), TextCorpus(plain)
    assert a.vocab == b.vocab and a.vocab_size == 65
    for split in ("train", "val"):
        assert (a._splits[split] == b._splits[split]).all()


# --------------------------------------------------------------------------------------------------
# docs/design.md names only what exists
# --------------------------------------------------------------------------------------------------

PATH_RE = re.compile(r"(?<![\w./-])((?:tvvar|experiments|tests|notebooks|scripts|docs|data|\.ci)/[\w./-]*[\w])")
DOTTED_RE = re.compile(r"(?<![\w./-])((?:tvvar|experiments)(?:\.[A-Za-z_]\w*)+)")
PLACEHOLDER = "NAME"  # `experiments/NAME.py`, `python -m experiments.NAME`: any experiment, not a file


def _layout_entries(text: str) -> list[str]:
    """The paths of the indented file tree in the first code block under '## Layout' (2 spaces a level)."""
    section = text.split("\n## Layout", 1)
    assert len(section) == 2, "docs/design.md has no '## Layout' section"
    block = section[1].split("```", 2)
    assert len(block) == 3, "the Layout section of docs/design.md has no fenced file tree"
    entries, stack = [], []  # stack: (indent, directory)
    for line in block[1].splitlines()[1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        name = line.split()[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(d for _, d in stack) + name
        entries.append(path)
        if name.endswith("/"):
            stack.append((indent, name))
    return entries


def _resolve_dotted(name: str) -> str | None:
    """None if ``name`` is an importable module or an attribute chain of one, else what is missing."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        mod_name = ".".join(parts[:k])
        try:
            if importlib.util.find_spec(mod_name) is None:
                continue
        except ModuleNotFoundError:
            continue
        obj = importlib.import_module(mod_name)
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return f"{name}: {mod_name} has no attribute {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"{name}: no such module"


def test_design_document_exists_and_every_path_it_names_exists():
    assert DESIGN.is_file(), "docs/design.md is missing"
    text = DESIGN.read_text(encoding="utf-8")
    tree = _layout_entries(text)
    assert len(tree) > 20, f"the Layout tree of docs/design.md parsed to only {tree}"
    inline = PATH_RE.findall(text)
    missing = sorted({p for p in tree + inline if PLACEHOLDER not in p and not (ROOT / p.rstrip("/")).exists()})
    assert not missing, f"docs/design.md names paths that do not exist: {missing}"


def test_design_layout_lists_every_module():
    tree = set(_layout_entries(DESIGN.read_text(encoding="utf-8")))
    modules = [p for top in ("tvvar", "experiments") for p in (ROOT / top).rglob("*.py")
               if p.name != "__init__.py" and "__pycache__" not in p.parts]
    unlisted = sorted(str(p.relative_to(ROOT)) for p in modules if str(p.relative_to(ROOT)) not in tree)
    assert not unlisted, f"modules missing from the Layout tree of docs/design.md: {unlisted}"


def test_design_document_names_only_real_modules_and_attributes():
    names = sorted({n for n in DOTTED_RE.findall(DESIGN.read_text(encoding="utf-8")) if PLACEHOLDER not in n})
    assert len(names) > 10, f"docs/design.md names too few modules to be a design of this code: {names}"
    problems = [p for p in map(_resolve_dotted, names) if p]
    assert not problems, "docs/design.md names what the code does not have:\n" + "\n".join(problems)


def test_dotted_name_resolution_rejects_what_is_not_there():
    assert _resolve_dotted("tvvar.core.available") is None
    assert _resolve_dotted("tvvar.core.not_a_function") is not None
    assert _resolve_dotted("tvvar.not_a_module") is not None


@pytest.mark.parametrize("doc", [README, DESIGN], ids=["README", "design"])
def test_every_python_m_command_is_a_module(doc):
    mods = sorted(set(re.findall(r"python -m ((?:experiments|tvvar)(?:\.\w+)+)", doc.read_text(encoding="utf-8"))))
    assert mods, f"{doc.name} names no `python -m experiments.X` command"
    missing = [m for m in mods if PLACEHOLDER not in m and importlib.util.find_spec(m) is None]
    assert not missing, f"{doc.name} names modules that do not exist: {missing}"


def test_every_experiment_has_a_notebook_that_runs_it():
    from experiments.reproduce import EXPERIMENTS

    problems = []
    for name in EXPERIMENTS:
        path = ROOT / "notebooks" / f"{name}.ipynb"
        if not path.is_file():
            problems.append(f"{name}: no notebooks/{name}.ipynb")
            continue
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        if not re.search(rf"execute\(\s*['\"]{name}['\"]", code):
            problems.append(f"{name}: notebooks/{name}.ipynb never calls execute({name!r}, ...)")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------
# console scripts
# --------------------------------------------------------------------------------------------------


def _scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})


def test_console_scripts_are_declared_and_resolve():
    scripts = _scripts()
    assert set(CONSOLE_SCRIPTS) <= set(scripts), f"[project.scripts] lacks {set(CONSOLE_SCRIPTS) - set(scripts)}"
    for name in CONSOLE_SCRIPTS:
        mod, _, attr = scripts[name].partition(":")
        assert callable(getattr(importlib.import_module(mod), attr, None)), f"{name} → {scripts[name]} is not callable"


@pytest.mark.slow
def test_console_scripts_are_installed_and_answer_help():
    bin_dir = Path(sys.executable).parent
    missing = [n for n in CONSOLE_SCRIPTS if not (bin_dir / n).is_file()]
    assert not missing, (f"{missing} not in {bin_dir}; run `{sys.executable} -m pip install -e . --no-deps` "
                         "after editing [project.scripts]")
    # in parallel: each one pays for its own JAX import
    procs = {n: subprocess.Popen([str(bin_dir / n), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for n in CONSOLE_SCRIPTS}
    for n, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"{n} --help exited {p.returncode}: {err[-500:]}"
        assert out.startswith("usage:"), f"{n} --help printed no usage: {out[:200]!r}"


def _exit_status(target, argv: list[str], monkeypatch) -> int:
    """The status a console script exits with: the generated wrapper does ``sys.exit(target())``, and
    sys.exit maps None to 0, an int to itself and anything else (a results dict) to 1."""
    monkeypatch.setattr(sys, "argv", argv)
    try:
        code = target()
    except SystemExit as e:
        code = e.code
    return 0 if code is None else code if isinstance(code, int) else 1


@pytest.mark.slow
def test_train_and_generate_console_scripts_exit_0_on_success(tmp_path, monkeypatch, capsys):
    scripts = _scripts()

    def target(name):
        mod, _, attr = scripts[name].partition(":")
        return getattr(importlib.import_module(mod), attr)

    run = tmp_path / "run"
    assert _exit_status(target("tvvar-train"), [
        "tvvar-train", "--data", "markov", "--steps", "2", "--batch-size", "2", "--seq-len", "8", "--d-model", "8",
        "--num-layers", "1", "--num-heads", "1", "--warmup", "0", "--eval-every", "0", "--eval-batches", "1",
        "--ckpt-every", "2", "--out", str(run), "--no-progress"], monkeypatch) == 0
    assert _exit_status(target("tvvar-generate"), [
        "tvvar-generate", "--run", str(run), "--prompt", "1 2", "--max-new-tokens", "3", "--temperature", "0"],
        monkeypatch) == 0


def test_exit_status_follows_sys_exit(monkeypatch):
    assert _exit_status(lambda: None, ["x"], monkeypatch) == 0
    assert _exit_status(lambda: 3, ["x"], monkeypatch) == 3
    assert _exit_status(lambda: {"results": 1}, ["x"], monkeypatch) == 1
    assert _exit_status(lambda: sys.exit(2), ["x"], monkeypatch) == 2
