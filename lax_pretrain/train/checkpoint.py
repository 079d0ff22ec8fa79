"""Checkpoints: orbax CheckpointManager (async, keep N) holding the trainable state, the optimizer state,
the step and the data-iterator state.

Orbax writes each step into a temporary directory and renames it when complete, so a crash or preemption
mid-save never leaves a "latest" checkpoint that looks complete. Restores always target the current mesh's
shardings, so a run can resume on a different mesh.

Damage is decided from what is on disk, never from the kind of exception a restore raised: a step is damaged
when orbax's own markers say so (not finalized, an item's directory or commit marker missing, an empty file, an
item's metadata that does not parse) or when the storage layer reports the stored bytes themselves as invalid
(tensorstore's DATA_LOSS, OUT_OF_RANGE or NOT_FOUND for a file orbax's manifest lists). A damaged step is moved
aside to `<checkpoints>.damaged/<step>` with a warning that names it (nothing is ever deleted) and the previous
step is restored. Any other failure (a transient read error on a bucket, an out-of-memory during restore)
stops with `CheckpointReadError`, one line, and changes nothing. A checkpoint whose tree differs from the model's
is a different run, refused before any restore (train/resume.py), never treated as damage.

The directory may be a gs:// URL (train/storage.py): orbax writes the arrays through TensorStore's gcs driver
and everything else through etils epath. GCS has no rename, so orbax writes a step in place and marks it
finished with `<step>/commit_success.txt`; a step killed mid-save has none, is never listed (like a local
`<step>.orbax-checkpoint-tmp`), and orbax clears it when that step is saved again. Moving a damaged step aside
copies its objects, then deletes them. orbax 0.12.8 builds a local file path for any other URL (s3:// fails
mid-save), so such a directory is refused up front (`check_checkpoint_location`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from lax_pretrain.train.storage import (
    AnyPath,
    file_sizes,
    make_dirs,
    move_tree,
    resolved,
    scheme,
    workdir_path,
)

log = logging.getLogger(__name__)

RUN_CONFIG = "config.json"  # in the workdir: the config of its newest launch
ARRAY_ITEMS = ("params", "opt_state")
JSON_ITEMS = ("data", "meta")
COMMIT_MARKER = "commit_success.txt"  # orbax's per-item (and, on buckets, per-step) commit marker
# tensorstore's status codes for stored bytes that are wrong or missing, as opposed to a read that failed.
DAMAGE_STATUSES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND")
DAMAGED_SUFFIX = ".damaged"
# URL schemes orbax writes arrays to (TensorStore's gcs driver); for any other URL (s3://) it builds a local
# file path and fails mid-save, so such a workdir is refused before anything is written.
CHECKPOINT_URL_SCHEMES = ("gs",)


class CheckpointReadError(ValueError):
    """A checkpoint that is intact on disk could not be read (I/O, memory): reported in one line, nothing moved."""


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    return {
        **{item: ocp.StandardCheckpointHandler() for item in ARRAY_ITEMS},
        **{item: ocp.JsonCheckpointHandler() for item in JSON_ITEMS},
    }


class Checkpointer:
    """`read_only`: opens an existing directory without creating, cleaning or moving anything (the pre-flight
    checks, sampling, export)."""

    def __init__(
        self, directory: str | os.PathLike, *, keep: int, async_save: bool = True, read_only: bool = False
    ):
        check_checkpoint_location(directory)
        self.directory = resolved(directory)
        self.read_only = read_only
        # Not orbax's read_only mode, which warns on every open; this class never saves or moves when read-only,
        # and a manager that does not create its directory writes nothing until it saves (checked).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            create=not read_only,
            enable_async_checkpointing=async_save and not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())

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

    def steps_newest_first(self) -> list[int]:
        return sorted(self.manager.all_steps(), reverse=True)

    # ------------------------------------------------------------------------------------------ what is saved

    def meta(self, step: int) -> dict:
        return json.loads((self._step_dir(step) / "meta" / "metadata").read_text())

    def params_only(self, step: int) -> bool:
        return bool(self.meta(step).get("params_only"))

    def saved_tree(self, step: int, item: str) -> dict[str, tuple[tuple[int, ...], str]]:
        """'path/of/leaf' -> (shape, dtype) of array item `item` at `step`, from orbax's metadata alone."""
        metadata = self.manager.item_metadata(step)[item]
        return flat_tree(metadata.tree, lambda m: (tuple(m.shape), str(m.dtype)))

    def damage(self, step: int) -> str | None:
        """Why step `step` is damaged on disk, from orbax's markers and metadata alone; None if it is intact."""
        step_dir = self._step_dir(step)
        if not ocp.step.is_checkpoint_finalized(step_dir):
            return "not finalized"
        empty = sorted(name for name, size in file_sizes(step_dir).items() if size == 0)
        if empty:
            return f"{empty[0]} is empty"
        try:
            training = (step_dir / "meta" / COMMIT_MARKER).is_file() and not self.params_only(step)
            for item in ("meta", "params", *(("opt_state", "data") if training else ())):
                if not (step_dir / item / COMMIT_MARKER).is_file():
                    return f"{item}/ is missing or was never committed"
            self.saved_tree(step, "params")
            if training:
                self.saved_tree(step, "opt_state")
                json.loads((step_dir / "data" / "metadata").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError) as e:  # a metadata file that
            return f"its metadata is missing or does not parse ({_first_line(e)})"  # is not there or is cut short
        except Exception as e:  # noqa: BLE001 - a read that failed says nothing about the files
            raise CheckpointReadError(
                f"checkpoint step {step} in {self.directory}: its metadata could not be read "
                f"({type(e).__name__}: {_first_line(e)}); nothing was changed: retry"
            ) from e
        return None

    def _step_dir(self, step: int) -> AnyPath:
        return self.directory / str(step)

    # ----------------------------------------------------------------------------------------------- restore

    def restore(self, abstract_params: Any, abstract_opt_state: Any = None) -> tuple[int, dict] | None:
        """(step, {'params', 'opt_state', 'data'}) of the newest intact checkpoint, or None if there is none.
        Without `abstract_opt_state` only the parameters are read (sampling, export, fine-tuning).

        A damaged step is skipped with a warning; resuming training (`abstract_opt_state` given, not read-only)
        also moves it aside, so the step can be saved again and the damaged copy never becomes the newest.
        Raises CheckpointReadError when an intact step fails to read."""
        for step in self.steps_newest_first():
            why = self.damage(step)
            if why is None:
                params_only = self.params_only(step)
                args = {"params": ocp.args.StandardRestore(abstract_params)}
                if abstract_opt_state is not None and not params_only:
                    args.update(
                        opt_state=ocp.args.StandardRestore(abstract_opt_state), data=ocp.args.JsonRestore()
                    )
                try:
                    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
                except Exception as e:  # noqa: BLE001 - classified from the storage layer's verdict below
                    why = _stored_bytes_damage(e)
                    if why is None:
                        raise CheckpointReadError(
                            f"checkpoint step {step} in {self.directory} is intact on disk but could not be read "
                            f"({type(e).__name__}: {_first_line(e)}); nothing was changed: retry, or free "
                            "memory if it ran out"
                        ) from e
            if why is not None:
                self._set_aside(step, why, move=abstract_opt_state is not None)
                continue
            # A parameters-only checkpoint gives no optimizer or data state: the caller starts those fresh.
            return step, {k: restored[k] if k in args else None for k in ("params", "opt_state", "data")}
        return None

    def _set_aside(self, step: int, why: str, *, move: bool) -> None:
        if not move or self.read_only:
            log.warning(
                "checkpoint step %d in %s is damaged (%s); using the previous one", step, self.directory, why
            )
            return
        aside = self.directory.with_name(self.directory.name + DAMAGED_SUFFIX) / str(step)
        while aside.exists():  # a step damaged twice keeps both copies
            aside = aside.with_name(aside.name + "+")
        if jax.process_index() == 0:
            make_dirs(aside.parent)
            move_tree(self._step_dir(step), aside)
        _sync(f"checkpoint_set_aside_{step}")
        self.manager.reload()
        log.warning(
            "checkpoint step %d in %s is damaged (%s): moved to %s; falling back to the previous one",
            step,
            self.directory,
            why,
            aside,
        )

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _stored_bytes_damage(error: BaseException) -> str | None:
    """The storage layer's statement, anywhere in the exception's chain, that stored bytes are bad or missing."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        match = re.match(rf"({'|'.join(DAMAGE_STATUSES)}): ", str(e).strip())
        if match:
            return _first_line(e)
        e = e.__cause__ or e.__context__
    return None


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


EMPTY_NODE = "empty"  # a state with no arrays (optax's EmptyState; orbax saves it as None)


def _empty(node: Any) -> bool:
    return node is None or (isinstance(node, tuple) and not node)


def flat_tree(tree: Any, leaf_fn) -> dict[str, Any]:
    """'a/b/0/c' -> leaf_fn(leaf) for a pytree of arrays, ShapeDtypeStructs or orbax metadata; NNX's `value`
    wrappers are dropped so a live state and the dict orbax saved of it have the same paths. Empty states are
    kept as EMPTY_NODE: where they sit is part of the tree's structure (a mask wraps one, clipping adds one)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_empty)
    out = {}
    for path, leaf in flat:
        names = [_key_name(k) for k in path]
        out["/".join(n for n in names if n != "value")] = EMPTY_NODE if _empty(leaf) else leaf_fn(leaf)
    return out


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings of the (current-mesh) `state`: orbax restores straight into them."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def check_checkpoint_location(path: str | os.PathLike) -> None:
    """Raises ValueError (one line) for a URL whose scheme orbax cannot write checkpoint arrays to."""
    kind = scheme(path)
    if kind is not None and kind not in CHECKPOINT_URL_SCHEMES:
        raise ValueError(
            f"{path}: orbax-checkpoint {ocp.__version__} writes checkpoints to a local path or gs:// only, not "
            f"{kind}://; mount the bucket (e.g. mountpoint-s3) and give a path under the mount"
        )


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    path = workdir_path(workdir) / RUN_CONFIG
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: --workdir must be a training run or an import (`lax-convert import --out=...`)"
        )
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path} cannot be read as a run config ({e}); restore it (configs/ beside it holds each training "
            "launch's copy) or use a new --workdir"
        ) from e


def read_params(workdir: str | os.PathLike, abstract_params: Any) -> tuple[int, Any]:
    """(step, parameters) of the newest intact checkpoint in `workdir`, restored into `abstract_params`'
    shardings; nothing in the workdir is moved or written."""
    directory = workdir_path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint in {directory}")
    checkpointer = Checkpointer(directory, keep=1, async_save=False, read_only=True)
    try:
        restored = checkpointer.restore(abstract_params)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    return restored[0], restored[1]["params"]


def load_trained_model(workdir: str | os.PathLike) -> tuple[nnx.Module, ml_collections.ConfigDict, int]:
    """(model with the newest checkpoint's parameters, its config, the step) from a training workdir."""
    from lax_pretrain.models import build

    config = load_config(workdir)
    model = build(config.model, rngs=nnx.Rngs(0))
    step, params = read_params(workdir, abstract_like(nnx.state(model, nnx.Param)))
    nnx.update(model, params)
    return model, config, step
