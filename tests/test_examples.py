"""The notebooks in examples/ run top to bottom in a real Jupyter kernel (nbclient and
ipykernel), as a user would run them, and show what they promise: the results' summary,
the verdict, the pictures (as images) and the re-ranked versions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = ROOT / "examples"


def execute(name: str, tmp_path: Path):
    """Run a notebook from a copy of examples/ beside the real stan/ (results go to tmp)."""
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copy(EXAMPLES / name, folder / name)
    (tmp_path / "stan").symlink_to(ROOT / "stan")
    book = nbformat.read(folder / name, as_version=4)
    client = nbclient.NotebookClient(book, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})  # fmt: skip
    client.execute()
    return book


def outputs(book, kind: str) -> list:
    return [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {})]  # fmt: skip


def text_of(book) -> str:
    parts = []
    for c in book.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            parts.append(o.get("text", ""))
            parts += [str(v) for v in o.get("data", {}).values()]
    return "\n".join(parts)


def errors(book) -> list:
    return [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]  # fmt: skip


@pytest.mark.stan
@pytest.mark.slow
def test_the_lmm_notebook_goes_from_the_model_to_a_verdict_and_pictures(cmdstan, tmp_path):
    book = execute("lmm_sbc.ipynb", tmp_path)
    assert not errors(book)
    text = text_of(book)
    assert "SBC results: notebook_lmm" in text  # Results._repr_html_
    assert "calibrated" in text.lower() and "Holm over" in text  # the headline
    assert len(outputs(book, "image/png")) >= 7  # five pictures, your own axes, ArviZ's
    assert (tmp_path / "results" / "notebook_lmm" / "report.html").is_file()


@pytest.mark.stan
def test_the_rerank_notebook_adds_a_quantity_and_thins(cmdstan, tmp_path):
    book = execute("rerank.ipynb", tmp_path)
    assert not errors(book)
    text = text_of(book)
    assert "ranks version 2 of 2" in text  # the re-ranked Results, shown
    assert "'moments_from_kept_draws': ['loglik']" in text
    assert "[1, 2, 3] [50]" in text  # three versions; 2 chains x 25 draws (every 8th of 200)
    assert len(outputs(book, "image/png")) >= 1
