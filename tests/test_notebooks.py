"""Every notebook in notebooks/ executes top to bottom (they are committed without outputs)."""

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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
