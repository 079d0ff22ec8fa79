"""A workdir is one run. Before anything is built or written, a launch into a workdir that holds checkpoints is
checked against them; a different run is refused in one line, the workdir untouched.

Same run, decided from:
- the newest intact checkpoint's own tree (orbax's item metadata, no hand-kept list of keys): every parameter
  and optimizer-state path, shape and dtype must be the new run's. This catches a changed kind, rank, crossing
  or parameter precision, and an optimizer setting that changes its state (clipping on/off, the decay mask).
- `model.*` in the workdir's config.json (each projection's effective spec), but for the keys that change how
  the same function is computed (`EXECUTION_KEYS`: remat, the kron gate's and TT's contraction order, the
  attention kernel). This catches what leaves the tree alone: svd <-> cola, the compute dtype, an activation,
  a parameter-free crossing.
- the keys whose change makes the saved data-iterator state meaningless (`DATA_STREAM_KEYS`).
A parameters-only checkpoint (an import) is compared by its parameter tree alone: its parameters are initial
values, whatever config made them.

`train.init_from=<workdir>` starts a new run (in a new workdir) from another run's parameters: the tree of
its parameters must match; its optimizer state and data order are not taken.

Everything else may change on resume (more steps, the eval/log/checkpoint intervals, W&B, the mesh, the
learning rate): it is allowed, named in a warning, and recorded (`configs/<launch time>.json` beside
config.json, which always holds the newest launch's config). More steps also move the cosine decay's horizon:
the steps already trained followed the old one; the warning says so.

Every process reads the same files and reaches the same decision; only process 0 writes.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import jax
import ml_collections

from lax_pretrain.models import get_task
from lax_pretrain.models.projections import projection_spec
from lax_pretrain.train.checkpoint import RUN_CONFIG, Checkpointer, flat_tree, load_config
from lax_pretrain.train.storage import AnyPath, make_dirs, workdir_path

log = logging.getLogger(__name__)

LAUNCHES_DIR = "configs"
# Model keys that choose how the same parameters compute the same function: changing one resumes the run.
EXECUTION_KEYS = ("remat", "kron_impl", "tt_order", "attention")
# What the saved data-iterator state indexes: the examples, their order and how a step's batch is cut.
DATA_STREAM_KEYS = (
    "data.name",
    "data.tokenizer",
    "data.seq_len",
    "data.packing",
    "data.document_format",
    "data.works",
    "data.works_train_fraction",
    "data.c4_dir",
    "data.train_files",
    "data.cache_dir",
    "data.text_key",
    "data.shuffle_window",
    "train.batch_size",
    "train.seed",
)
MAX_LISTED = 3


def flat_config(tree: dict) -> dict[str, Any]:
    """'a.b.c' -> value of a config as JSON holds it (tuples as lists)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", tree)
    return out


def read_run_config(workdir: AnyPath) -> dict | None:
    """The workdir's config.json as a dict (None if there is none); a damaged one is named in one line."""
    return load_config(workdir).to_dict() if (workdir / RUN_CONFIG).exists() else None


def _run_keys(config: dict) -> dict[str, Any]:
    """The config as compared: flat keys, with `model.linear` and `model.proj` replaced by each projection's
    effective spec (`model.proj.<p>.<key>`), so a kind set in either place compares as the same thing."""
    flat = {
        k: v for k, v in flat_config(config).items() if not k.startswith(("model.linear.", "model.proj."))
    }
    model = ml_collections.ConfigDict(config["model"])
    for name in get_task(model).projections:
        for key, value in projection_spec(model, name, first=False).items():
            flat[f"model.proj.{name}.{key}"] = value.to_dict() if hasattr(value, "to_dict") else value
    return flat


def _is_model_key(key: str) -> bool:
    return key.startswith("model.") and key.rsplit(".", 1)[-1] not in EXECUTION_KEYS


def _tree_differences(name: str, saved: dict, new: dict) -> list[str]:
    if saved == new:
        return []
    only_saved = sorted(set(saved) - set(new))
    only_new = sorted(set(new) - set(saved))
    changed = sorted(k for k in set(saved) & set(new) if saved[k] != new[k])
    parts = []
    if changed:
        k = changed[0]
        parts.append(f"{len(changed)} {name} leaves changed, e.g. {k} {_leaf(saved[k])} -> {_leaf(new[k])}")
    if only_saved:
        parts.append(f"{len(only_saved)} {name} leaves only in the checkpoint, e.g. {only_saved[0]}")
    if only_new:
        parts.append(f"{len(only_new)} {name} leaves only in this config, e.g. {only_new[0]}")
    return parts


def _leaf(shape_dtype: tuple | str) -> str:
    if isinstance(shape_dtype, str):  # EMPTY_NODE
        return shape_dtype
    shape, dtype = shape_dtype
    return f"{dtype}{list(shape)}"


def _value_changes(keys: list[str], saved: dict, new: dict) -> list[str]:
    return [f"{k} {saved.get(k)!r} -> {new.get(k)!r}" for k in keys]


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], str]:
    return tuple(x.shape), str(x.dtype)


def _newest_intact(workdir: AnyPath) -> tuple[int, bool, dict[str, dict]] | None:
    """(step, parameters only?, {item: its saved tree}) of the workdir's newest intact checkpoint, or None."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return None
    ckpt = Checkpointer(directory, keep=1, async_save=False, read_only=True)
    try:
        step = next((s for s in ckpt.steps_newest_first() if ckpt.damage(s) is None), None)
        if step is None:
            return None
        params_only = ckpt.params_only(step)
        items = ("params",) if params_only else ("params", "opt_state")
        return step, params_only, {item: ckpt.saved_tree(step, item) for item in items}
    finally:
        ckpt.close()


def check_resume(workdir: AnyPath, config: Any, abstract_params: Any, abstract_opt_state: Any) -> list[str]:
    """Raises ValueError (one line) if `workdir` holds a different run than `config`; otherwise returns the
    allowed changes against the workdir's config ('key old -> new'), empty for a fresh workdir."""
    saved_config = read_run_config(workdir)
    newest = _newest_intact(workdir)
    if newest is None:
        return []  # nothing trained to keep: a fresh start, whatever an earlier config was
    step, params_only, saved_trees = newest
    param_differences = _tree_differences(
        "params", saved_trees["params"], flat_tree(abstract_params, _shape_dtype)
    )
    differences = list(param_differences)
    if "opt_state" in saved_trees:
        differences += _tree_differences(
            "opt_state", saved_trees["opt_state"], flat_tree(abstract_opt_state, _shape_dtype)
        )
    changes: list[str] = []
    if saved_config is not None:
        saved = _run_keys(saved_config)
        new = _run_keys(json.loads(config.to_json_best_effort()))
        # A key only one side has (a config written by an older version) is not a difference of the run.
        changed = sorted(k for k in set(saved) & set(new) if saved[k] != new[k])
        forbidden = [k for k in changed if _is_model_key(k) or k in DATA_STREAM_KEYS]
        if forbidden and not params_only:
            listed = _value_changes(forbidden[:MAX_LISTED], saved, new)
            if len(forbidden) > MAX_LISTED:
                listed.append(f"{len(forbidden) - MAX_LISTED} more config keys")
            differences = listed + differences
        changes = _value_changes([k for k in changed if k not in forbidden], saved, new)
    if differences:
        start_from = (
            f" (--config.train.init_from={workdir} starts it from this run's parameters)"
            if not param_differences
            else ""
        )
        raise ValueError(
            f"--workdir={workdir} holds a different run (checkpoint step {step}): {'; '.join(differences)}. "
            f"Nothing was changed. Train this config in a new --workdir{start_from}, or resume with the "
            f"workdir's own config ({workdir / RUN_CONFIG})"
        )
    return changes


def check_init_from(config: Any, abstract_params: Any) -> int | None:
    """`train.init_from`: a workdir whose newest intact checkpoint's parameters a fresh run starts from (its
    optimizer state and data order start afresh). Returns that step (None when unset); raises naming the key
    when there is no such checkpoint or its parameter tree is not this model's."""
    source = config.train.get("init_from", "")
    if not source:
        return None
    newest = _newest_intact(workdir_path(source))
    if newest is None:
        raise FileNotFoundError(f"train.init_from={source!r} holds no intact checkpoint (checkpoints/<step>)")
    step, _, saved_trees = newest
    differences = _tree_differences("params", saved_trees["params"], flat_tree(abstract_params, _shape_dtype))
    if differences:
        raise ValueError(
            f"train.init_from={source!r} (checkpoint step {step}) holds other parameters than this model's: "
            f"{'; '.join(differences)}"
        )
    return step


def record_launch(workdir: AnyPath, config: Any, changes: list[str]) -> None:
    """config.json := this launch's config, and a copy under configs/<UTC launch time>.json (process 0)."""
    if changes:
        log.warning("resuming %s with changed config: %s", workdir, "; ".join(changes))
        if any(c.startswith("train.steps ") for c in changes):
            log.warning(
                "train.steps changed: the cosine decay now ends at train.steps=%d; the steps already trained "
                "followed the old horizon",
                config.train.steps,
            )
    if jax.process_index() != 0:
        return
    text = json.dumps(json.loads(config.to_json_best_effort()), indent=2) + "\n"
    launches = workdir / LAUNCHES_DIR
    make_dirs(launches)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path, n = launches / f"{stamp}.json", 1
    while path.exists():  # two launches within a second
        path, n = launches / f"{stamp}-{n}.json", n + 1
    path.write_text(text)
    (workdir / RUN_CONFIG).write_text(text)
