"""Checkpoints: orbax CheckpointManager (async, keep N) holding the trainable state, the optimizer state,
the step and the data-iterator state.

Orbax writes each step into a temporary directory and renames it when complete, so a crash or preemption
mid-save never leaves a "latest" checkpoint that looks complete. If the newest checkpoint is damaged anyway
(disk errors, a half-copied workdir), restore warns and falls back to the previous one. Restores always
target the current mesh's shardings, so a run can resume on a different mesh.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, params: Any, opt_state: Any, data_state: dict, *, force: bool = False) -> None:
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave({"step": int(step)}),
        )
        self.manager.save(step, args=args, force=force)

    def save_params(self, step: int, params: Any) -> None:
        """A parameters-only checkpoint (a Hugging Face import): loaders read it like any other; a training run
        started in its workdir takes its parameters as initial values (fresh optimizer and data order)."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            meta=ocp.args.JsonSave({"step": int(step), "params_only": True}),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_params: Any, abstract_opt_state: Any = None) -> tuple[int, dict] | None:
        """(step, {'params', 'opt_state', 'data'}) of the newest checkpoint that restores, or None if there is
        none. Without `abstract_opt_state` only the parameters are read (sampling, export, fine-tuning).

        Resuming training (`abstract_opt_state` given) deletes the damaged newer steps it skipped: orbax would
        otherwise refuse to save those steps again and the damaged one would stay the newest."""
        damaged: list[int] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            args = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
            if abstract_opt_state is not None and not self._params_only(step):
                args.update(
                    opt_state=ocp.args.StandardRestore(abstract_opt_state), data=ocp.args.JsonRestore()
                )
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**args))
            except Exception as e:  # noqa: BLE001 - any damage means "try the previous one"
                log.warning(
                    "checkpoint at step %d in %s cannot be restored (%s: %s); falling back to the "
                    "previous one",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                damaged.append(step)
                continue
            self._drop(damaged, training=abstract_opt_state is not None)
            # A parameters-only checkpoint gives no optimizer or data state: the caller starts those fresh.
            return step, {k: restored[k] if k in args else None for k in ("params", "opt_state", "data")}
        self._drop(damaged, training=abstract_opt_state is not None)
        return None

    def _params_only(self, step: int) -> bool:
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception:  # noqa: BLE001 - unreadable metadata: the full restore decides (and reports) below
            return False
        return bool(meta.get("params_only"))

    def _drop(self, steps: list[int], *, training: bool) -> None:
        if not training or not steps:
            return
        for step in steps:
            self.manager.delete(step)
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings of the (current-mesh) `state`: orbax restores straight into them."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: --workdir must be a training run or an import (`lax-convert import --out=...`)"
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_trained_model(workdir: str | Path) -> tuple[nnx.Module, ml_collections.ConfigDict, int]:
    """(model with the newest checkpoint's parameters, its config, the step) from a training workdir."""
    from lax_pretrain.models import build

    config = load_config(workdir)
    model = build(config.model, rngs=nnx.Rngs(0))
    abstract = abstract_like(nnx.state(model, nnx.Param))
    checkpointer = Checkpointer(Path(workdir) / "checkpoints", keep=1 << 30, async_save=False)
    restored = checkpointer.restore(abstract)
    checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
    step, state = restored
    nnx.update(model, state["params"])
    return model, config, step
