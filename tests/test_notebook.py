"""notebooks/assignment.ipynb executed top to bottom in a real Jupyter kernel (nbclient + ipykernel).

The kernel runs in a temporary folder (the notebook writes its runs and store under outputs/ there) and
imports this checkout's dlexp. Its outputs are checked against the course's numbers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "assignment.ipynb"


def outputs_of(cell) -> tuple[str, list[dict]]:
    """A code cell's printed and returned text, and its rich outputs' data."""
    text, rich = [], []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            text.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data"):
            rich.append(output["data"])
            text.append(output["data"].get("text/plain", ""))
    return "".join(text), rich


@pytest.mark.full
def test_assignment_notebook_runs_and_shows_the_course_numbers(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    path = os.environ.get("PYTHONPATH")
    client.execute(env={**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
                        "DLEXP_INSECTS": str(tmp_path / "no-insects")})  # the generated images: same every run

    cells = [outputs_of(cell) for cell in notebook.cells if cell.cell_type == "code"]
    text = "\n".join(t for t, _ in cells)
    assert f"from {ROOT / 'dlexp'}" in text  # this checkout's code ran
    assert "conv output: 5×28×39 (35 parameters)" in text
    assert "MLP parameters: 2,437" in text
    assert "Huber loss: 1.57125" in text
    assert "shapes.csv: 24 images, classes ['circle', 'square', 'triangle']" in text
    assert "dataset[0]: image (3, 96, 96) torch.uint8, label 0 (circle)" in text
    accuracy = float(re.search(r"spiral test accuracy: ([\d.]+)%", text).group(1))
    assert accuracy >= 98.0
    assert f"model's own test accuracy: {accuracy:.2f}%" in text
    assert "fold 3/5:" in text  # the run's INFO lines are shown in the notebook
    assert "sweep: 2 jobs, FINISHED, FINISHED" in text
    pictures = sum("image/png" in data for _, rich in cells for data in rich)
    assert pictures >= 5  # samples, validation losses, decision boundary, loss curves, sweep plot
    assert any("application/vnd.jupyter.widget-view+json" in data for _, rich in cells for data in rich)
    assert (tmp_path / "outputs" / "notebook" / "spiral" / "model.pt").is_file()
