"""The workdir hand-over between conversion and training: a model and its config.model on disk.

WORKDIR/imported/params/        orbax StandardCheckpointer of nnx.state(model, nnx.Param)
WORKDIR/imported/config.json    the model config (config.model), as ConfigDict JSON
WORKDIR/imported/hf_config.json the source config.json, so an export keeps its token ids and context size
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
from flax import nnx

from lax_pretrain.models import build
from lax_pretrain.models.llama import Llama


def imported_dir(workdir: str | Path) -> Path:
    return Path(workdir).absolute() / "imported"


def save_imported(
    model: Llama, model_cfg: Any, workdir: str | Path, hf_config: Mapping[str, Any] | None = None
) -> Path:
    """WORKDIR/imported/{params/ (orbax), config.json, hf_config.json (optional)}; replaces an earlier
    import."""
    import orbax.checkpoint as ocp  # slow to import, and `import lax_pretrain.convert` loads this module

    root = imported_dir(workdir)
    root.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(root / "params", nnx.state(model, nnx.Param), force=True)
    checkpointer.wait_until_finished()
    (root / "config.json").write_text(model_cfg.to_json(indent=2) + "\n")
    if hf_config is not None:
        (root / "hf_config.json").write_text(json.dumps(dict(hf_config), indent=2) + "\n")
    return root


def load_imported(workdir: str | Path) -> tuple[Llama, ml_collections.ConfigDict]:
    """The (model, config.model) that `save_imported` wrote."""
    import orbax.checkpoint as ocp

    root = imported_dir(workdir)
    if not (root / "config.json").exists():
        raise FileNotFoundError(f"{root / 'config.json'} does not exist: run `import` into {workdir} first")
    model_cfg = ml_collections.ConfigDict(json.loads((root / "config.json").read_text()))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(model_cfg, rngs=nnx.Rngs(0))))
    state = ocp.StandardCheckpointer().restore(root / "params", abstract)
    return nnx.merge(graphdef, state), model_cfg
