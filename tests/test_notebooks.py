"""The tutorial notebooks: stored executed and well-formed (fast), and they still run (slow).

The fast tests read the stored ``.ipynb`` files: valid nbformat, explained (markdown cells),
executed top to bottom in order without errors, with plots, and small enough for GitHub.
The slow test re-executes every notebook with the project's kernel, so an API change that
breaks a tutorial fails CI instead of the reader.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_stage1_training.ipynb",
    "02_relationship_extraction.ipynb",
    "03_stage3_training.ipynb",
]
MAX_BYTES = 1_500_000
CELL_TIMEOUT = 300  # seconds per cell
MAX_SECONDS = 600  # a whole notebook: ~1.5 min measured on 2 busy cores; catches runaway settings


def _read(name: str):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    return nb


def _outputs(cell) -> list:
    return cell.get("outputs", []) if cell.cell_type == "code" else []


def test_notebook_list_is_complete():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_explained_and_stored_executed(name):
    path = NOTEBOOK_DIR / name
    nb = _read(name)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 3, "a tutorial explains itself in markdown cells"
    assert kinds[0] == "markdown", "the notebook opens with its title and purpose"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"

    # executed top to bottom in one kernel session: counts 1, 2, 3, ... in cell order
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"not executed in order: {counts}"
    errors = [o for c in code for o in _outputs(c) if o.output_type == "error"]
    assert not errors, f"stored error output: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    stderr = [
        o.text
        for c in code
        for o in _outputs(c)
        if o.output_type == "stream" and o.name == "stderr" and "Traceback" in o.text
    ]
    assert not stderr, f"traceback in stderr: {stderr[0][:300]}"

    plots = [c for c in code if any("image/png" in o.get("data", {}) for o in _outputs(c))]
    assert plots, "no code cell with a plot output"
    assert path.stat().st_size < MAX_BYTES, f"{name} is {path.stat().st_size / 1e6:.2f} MB"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_without_errors(name, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = _read(name)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # cwd of the kernel
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any error
    seconds = time.perf_counter() - start
    print(f"{name}: executed in {seconds:.0f}s")
    errors = [o for c in nb.cells for o in _outputs(c) if o.output_type == "error"]
    assert not errors
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in _outputs(c))
    assert seconds < MAX_SECONDS, f"{name} took {seconds:.0f}s"
    # nothing was written next to the kernel's working directory
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())
