"""Every notebook in notebooks/ executes top to bottom (they are committed without outputs), at the smallest size
that executes every cell: ``TVVAR_NOTEBOOK_SIZE=smallest`` (``experiments.common.notebook_size``)."""

import dataclasses
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def stale_cells(nb) -> list[int]:
    """Indices of code cells that carry outputs or an execution count."""
    return [i for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


# separate from the slow execution below, so that a quick `-m "not slow"` run still catches committed outputs
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    stale = stale_cells(nb)
    assert not stale, f"{path.name}: cells {stale} were committed with outputs; clear them"


def test_stale_cells_sees_outputs_and_counts():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("x"), nbformat.v4.new_code_cell("1")])
    assert stale_cells(nb) == []
    nb.cells[1].execution_count = 1
    assert stale_cells(nb) == [1]
    nb.cells[1].execution_count = None
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="1")]
    assert stale_cells(nb) == [1]


def test_notebook_size_is_the_shown_config_unless_the_suite_asks_for_the_smallest(monkeypatch):
    from experiments import elbo, plotting
    from experiments.common import NOTEBOOK_SIZE_ENV, SMALLEST_DPI, notebook_size

    shown = elbo.Config.quick()
    monkeypatch.setattr(plotting, "DPI", 110)
    monkeypatch.delenv(NOTEBOOK_SIZE_ENV, raising=False)
    assert notebook_size(shown, steps=4) is shown and plotting.DPI == 110  # a reader's figures keep their resolution
    with pytest.raises(ValueError, match=r"no field\(s\) \['stpes'\]"):
        notebook_size(shown, stpes=4)  # a misspelt field is caught at the size a reader runs, too
    monkeypatch.setenv(NOTEBOOK_SIZE_ENV, "smallest")
    assert notebook_size(shown, steps=4) == dataclasses.replace(shown, steps=4)
    assert plotting.DPI == SMALLEST_DPI
    monkeypatch.setenv(NOTEBOOK_SIZE_ENV, "tiny")
    with pytest.raises(ValueError, match="TVVAR_NOTEBOOK_SIZE must be"):
        notebook_size(shown, steps=4)
    with pytest.raises(TypeError, match="Config instance"):
        notebook_size(elbo.Config, steps=4)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path, monkeypatch):
    from experiments.common import NOTEBOOK_SIZE_ENV

    monkeypatch.setenv(NOTEBOOK_SIZE_ENV, "smallest")  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
