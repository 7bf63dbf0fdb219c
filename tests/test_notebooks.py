"""The analysis notebooks run headless on recorded studies."""

from __future__ import annotations

import asyncio
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient
from test_report import recorded_studies

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "analysis" / "notebooks"
NAMES = ("attribution_walkthrough.ipynb", "compare_studies.ipynb")


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, pathlib.Path]:
    return recorded_studies(tmp_path_factory.getbasetemp() / "recorded")


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def image_count(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", [])
    )


@pytest.fixture(scope="module")
def executed(studies, tmp_path_factory) -> dict[str, nbformat.NotebookNode]:
    """Run both notebooks at once, each in a fresh kernel of this interpreter.

    The kernels inherit this process's environment, which points them at
    the recorded studies. Most of their time goes to imports, so running
    them side by side saves about half the wall time.
    """
    environment = {
        "ABLATE_STUDY_DIR": str(studies["architecture"]),
        "ABLATE_FIRST_STUDY_DIR": str(studies["data"]),
        "ABLATE_SECOND_STUDY_DIR": str(studies["architecture"]),
        "ABLATE_RESAMPLES": "199",
    }
    workdir = tmp_path_factory.mktemp("notebooks")
    notebooks = {name: nbformat.read(NOTEBOOKS / name, as_version=4) for name in NAMES}
    clients = [
        NotebookClient(
            notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(workdir)}}
        )
        for notebook in notebooks.values()
    ]

    async def run_all():
        await asyncio.gather(*(client.async_execute() for client in clients))

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key, value in environment.items():
            patch.setenv(key, value)
        asyncio.run(run_all())
    return notebooks


def test_walkthrough_notebook_runs(executed):
    notebook = executed["attribution_walkthrough.ipynb"]
    text = outputs_text(notebook)

    assert "Study architecture" in text
    assert "loss became NaN at step 5" in text
    assert "prototype" in text
    assert "shapley" in text
    assert image_count(notebook) == 5


def test_comparison_notebook_runs(executed):
    notebook = executed["compare_studies.ipynb"]
    text = outputs_text(notebook)

    assert "Shared metrics: eval/test/auroc, eval/test/cmap, eval/transfer/auroc" in text
    assert "share_of_gain" in text
    assert "data: factors ['data', 'window'], 24 finished trials, 0 not finished" in text
    assert "architecture: factors ['prototype', 'mixup'], 23 finished trials, 1 not finished" in text
    assert image_count(notebook) == 2


def test_notebooks_take_parameters_from_a_tagged_cell():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert "os.environ.get(" in tagged[0].source, path.name
        assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), path.name
