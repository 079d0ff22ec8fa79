"""An import is a normal workdir: the one loader (`train.checkpoint.load_trained_model`) reads imports and
training runs alike, and `lax-convert export` and `lax-finetune --base` take either. Like a training run's,
it may be a local directory or a gs:// URL (train/storage.py).

WORKDIR/config.json       {"name", "model"}: the model config (config.model) of the imported weights
WORKDIR/checkpoints/0/    a parameters-only orbax checkpoint (`Checkpointer.save_params`); `lax-train` in this
                          workdir starts from these parameters (fresh optimizer and data order)
WORKDIR/hf_config.json    the source config.json, so an export keeps its token ids and context size
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
from flax import nnx

from lax_pretrain.models.llama import Llama
from lax_pretrain.train import storage
from lax_pretrain.train.checkpoint import Checkpointer, check_checkpoint_location, load_trained_model

HF_CONFIG = "hf_config.json"


def save_imported(
    model: Llama, model_cfg: Any, workdir: str | Path, hf_config: Mapping[str, Any] | None = None
) -> storage.AnyPath:
    """Writes the import layout into `workdir`; replaces an earlier import, refuses a training run's workdir."""
    workdir = storage.resolved(workdir)
    ckpt = Checkpointer(workdir / "checkpoints", keep=1, async_save=False)
    trained = [s for s in ckpt.manager.all_steps() if s != 0]
    if trained:
        ckpt.close()
        raise FileExistsError(
            f"--out={workdir} holds a training run (checkpoints at steps {trained}); import into a new directory"
        )
    storage.make_dirs(workdir)
    ckpt.save_params(0, nnx.state(model, nnx.Param))
    ckpt.close()
    config = ml_collections.ConfigDict({"name": "imported", "model": model_cfg.to_dict()})
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
    if hf_config is not None:
        (workdir / HF_CONFIG).write_text(json.dumps(dict(hf_config), indent=2) + "\n")
    return workdir


def check_import_location(workdir: str | Path) -> None:
    """The one-line errors of an `--out` known before any weight is read: a URL that is not a workdir's, one
    orbax cannot write checkpoints to (s3://)."""
    try:
        check_checkpoint_location(storage.workdir_path(workdir))
    except ValueError as e:
        raise ValueError(f"--out={e}") from None


def load_imported(workdir: str | Path) -> tuple[Llama, ml_collections.ConfigDict]:
    """(model, config.model) of any workdir: an import or a training run (its newest checkpoint)."""
    model, config, _ = load_trained_model(workdir)
    return model, config.model


def source_hf_config(workdir: str | Path) -> dict | None:
    """The Hugging Face config.json an import came from (None for a workdir trained here)."""
    path = storage.workdir_path(workdir) / HF_CONFIG
    return json.loads(path.read_text()) if path.exists() else None
