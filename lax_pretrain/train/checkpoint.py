"""Checkpoints: orbax CheckpointManager (async, keep N) holding the trainable state, the optimizer state,
the step and the data-iterator state.

Orbax writes each step into a temporary directory and renames it when complete, so a crash or preemption
mid-save never leaves a "latest" checkpoint that looks complete. If the newest checkpoint is damaged anyway
(disk errors, a half-copied workdir), restore warns and falls back to the previous one. Restores always
target the current mesh's shardings, so a run can resume on a different mesh.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, data_state: dict | None, *, force: bool = False) -> None:
        args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave({"step": int(step)})}
        if data_state is not None:
            args["data"] = ocp.args.JsonSave(data_state)
        self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state: Any, *, with_data: bool = True) -> tuple[int, Any, dict | None] | None:
        """(step, state, data_state) of the newest checkpoint that restores, or None if there is none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
            if with_data:
                args["data"] = ocp.args.JsonRestore()
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**args))
            except Exception as e:  # noqa: BLE001 - any damage means "try the previous one"
                log.warning("checkpoint at step %d in %s cannot be restored (%s: %s); falling back to the "
                            "previous one", step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
                continue
            data = restored["data"] if with_data else None
            return step, restored["state"], data
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings of the (current-mesh) `state`: orbax restores straight into them."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
