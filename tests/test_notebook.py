"""notebooks/colab_tpu.ipynb: in sync with its jupytext twin (colab_tpu.py), and executed on CPU in
its test mode (GEORECON_NOTEBOOK_TEST=1: the tiny configs, no install, no clone) with nbclient."""

import pytest

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "colab_tpu.ipynb"
TWIN = ROOT / "notebooks" / "colab_tpu.py"

nbformat = pytest.importorskip("nbformat", reason="the [notebook] extra (requirements.txt pins it)")


def test_the_notebook_and_its_python_twin_agree():
    jupytext = pytest.importorskip("jupytext")
    twin = jupytext.read(TWIN)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    pairs = list(zip(notebook.cells, twin.cells))
    assert len(notebook.cells) == len(twin.cells), "run: jupytext --sync notebooks/colab_tpu.py"
    for k, (a, b) in enumerate(pairs):
        assert (a.cell_type, a.source) == (b.cell_type, b.source), (
            f"cell {k} differs: run jupytext --sync notebooks/colab_tpu.py"
        )
    assert not any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        "commit it without outputs"
    )


@pytest.mark.slow
def test_the_notebook_runs_in_test_mode(tmp_path, qm9_small, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("GEORECON_NOTEBOOK_TEST", "1")
    monkeypatch.setenv("GEORECON_NOTEBOOK_WORKDIR", str(tmp_path / "runs"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    text = "\n".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "homo_mae" in text and "Drive is not mounted" in text
    images = [
        out
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) == 3  # two learning curves and the parity plot
    assert (tmp_path / "runs" / "homo.npz").stat().st_size > 0
