"""notebooks/quickstart.ipynb executes top to bottom (nbclient, a fresh kernel), shrunk to a few steps."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path_factory, tmp_path):
    shared = tmp_path_factory.getbasetemp().parent / "shared"  # shared with the other workers of this session
    shared.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, not conftest's 8
    env.update(
        JAX_PLATFORMS="cpu",
        LAX_NOTEBOOK_STEPS="12",
        LAX_DATA_DIR=str(shared / "tfds"),
        LAX_NOTEBOOK_WORKDIR=str(tmp_path / "runs"),
        JAX_COMPILATION_CACHE_DIR=str(shared / "jax_cache"),
    )
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute(env=env)

    def text(cell) -> str:
        out = []
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") + "".join(str(v) for v in o.get("data", {}).values()))
        return "".join(out)

    outputs = [text(c) for c in nb.cells if c.cell_type == "code"]
    everything = "\n".join(outputs)
    assert "non-embedding parameters" in everything and "Llama with " in everything
    assert "cola: done at step 12" in everything and "cola+kron: done at step 12" in everything
    assert "| cola+kron | cola | kron |" in everything and everything.count("| finished |") >= 2
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2
    for name in ("report.md", "loss_curves.png", "val_vs_params.png"):
        assert (tmp_path / "runs" / "report" / name).stat().st_size > 0
