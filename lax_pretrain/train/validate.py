"""Config checks that run before anything compiles, each error naming the offending key or path.

None of them reads data: train() checks the dataset (and builds an embedded one on first use) only after these
and the workdir check, so a bad value never waits for, or leaves behind, a dataset build.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from lax_pretrain import data as data_lib
from lax_pretrain.models import build, get_task
from lax_pretrain.optim import validate_optimizer
from lax_pretrain.parallel.constraints import check_tp_impl
from lax_pretrain.parallel.mesh import process_indices
from lax_pretrain.train.checkpoint import check_checkpoint_location
from lax_pretrain.train.metrics import WANDB_MODES
from lax_pretrain.train.resume import record_launch
from lax_pretrain.train.storage import AnyPath, is_bucket, make_dirs

log = logging.getLogger(__name__)

POSITIVE_TRAIN_KEYS = (
    "steps",
    "batch_size",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "grad_accum",
)


def validate_config(config: Any, mesh: Mesh) -> dict[str, Any]:
    """Raises ValueError naming the key; returns the dataset info the model was checked against. Reads no data:
    whether the dataset is there (or an embedded one gets built) is `data.ensure_available`'s, which train()
    calls after every check; lax-plan compiles without any."""
    t = config.train
    for key in POSITIVE_TRAIN_KEYS:
        if int(t[key]) < 1:
            raise ValueError(f"train.{key}={t[key]} must be >= 1")
    check_optimizer(config.optim, int(t.steps))
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if t.batch_size % data_ways:
        raise ValueError(
            f"train.batch_size={t.batch_size} is not divisible by the data axes "
            f"(mesh.data x mesh.fsdp = {data_ways})"
        )
    if t.batch_size % t.grad_accum or (t.batch_size // t.grad_accum) % data_ways:
        raise ValueError(
            f"train.batch_size={t.batch_size} must split into train.grad_accum={t.grad_accum} "
            f"micro-batches that are each divisible by the data axes ({data_ways})"
        )
    processes = len(process_indices(mesh.devices.flat))  # the mesh's hosts, also for a target compiled here
    if t.batch_size % processes:
        raise ValueError(f"train.batch_size={t.batch_size} is not divisible by the {processes} processes")

    check_tp_impl(config.parallel.tp_impl)
    if config.wandb.mode not in WANDB_MODES:
        raise ValueError(f"wandb.mode={config.wandb.mode!r} is not one of {', '.join(WANDB_MODES)}")
    info = data_lib.dataset_info(config.data)  # unknown data.name / bad data keys fail here; reads no data
    m = config.model
    task = get_task(m)  # an unknown model.family fails here
    if info["kind"] != task.data_kind:
        raise ValueError(
            f"data.name={config.data.name!r} is a {info['kind']} dataset; model.family {m.family!r} "
            f"needs {task.data_kind}"
        )
    if "vocab_size" in info and m.vocab_size < info["vocab_size"]:
        raise ValueError(
            f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({info['vocab_size']}, data.tokenizer={config.data.tokenizer!r})"
        )
    if "image_shape" in info:
        h, w, c = info["image_shape"]
        if (m.image_size, m.image_size, m.channels) != (h, w, c):
            raise ValueError(
                f"model.image_size/channels = {m.image_size}x{m.image_size}x{m.channels} do not match "
                f"the data's {h}x{w}x{c} (data.name={config.data.name!r}, data.image_size)"
            )
        if m.num_classes != info["num_classes"]:
            raise ValueError(
                f"model.num_classes={m.num_classes} does not match the data's {info['num_classes']}"
            )
    nnx.eval_shape(lambda: build(m, rngs=nnx.Rngs(0)))  # every projection spec is validated here, abstractly
    return info


def check_optimizer(optim: Any, steps: int) -> None:
    """The optimizer values that would start a run that cannot train: refused naming the key. A warm-up as long
    as the run (smoke runs) is allowed, with a warning."""
    validate_optimizer(optim)  # a registered optim.name, its own keys only, its own checks
    for key in ("lr", "weight_decay", "warmup_init_lr", "min_lr_ratio", "b1", "b2", "eps", "clip_norm"):
        value = optim.get(key)
        if value is not None and not math.isfinite(float(value)):
            raise ValueError(f"optim.{key}={value} must be finite")
    if optim.lr <= 0:
        raise ValueError(f"optim.lr={optim.lr} must be > 0")
    if optim.weight_decay < 0:
        raise ValueError(f"optim.weight_decay={optim.weight_decay} must be >= 0")
    if int(optim.warmup_steps) < 0:
        raise ValueError(f"optim.warmup_steps={optim.warmup_steps} must be >= 0")
    if int(optim.warmup_steps) >= steps:
        log.warning(
            "optim.warmup_steps=%d is not shorter than train.steps=%d: the learning rate never reaches "
            "optim.lr=%g and never decays",
            optim.warmup_steps,
            steps,
            optim.lr,
        )


def check_workdir(workdir: AnyPath) -> None:
    """The workdir errors that need no write, so they come before anything compiles."""
    try:
        check_checkpoint_location(workdir)
    except ValueError as e:
        raise ValueError(f"--workdir={e}") from None
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir={workdir} exists and is not a directory")


def prepare_workdir(workdir: AnyPath, config: Any, changes: list[str]) -> None:
    """Creates the workdir (in a bucket: checks that it can be written to; a missing bucket is never created)
    and records this launch's config (train/resume.py); `changes`: the allowed changes against the run's
    earlier config."""
    check_workdir(workdir)
    check_writable(workdir)
    record_launch(workdir, config, changes)


def check_writable(workdir: AnyPath) -> None:
    """Creates the workdir where it is a directory (never a missing bucket) and writes and removes a probe."""
    try:
        make_dirs(workdir)
        probe = workdir / f".write_test.{jax.process_index()}"  # one per process: none removes another's
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        missing = (
            " (does the bucket exist?)" if is_bucket(workdir) and isinstance(e, FileNotFoundError) else ""
        )
        raise ValueError(f"--workdir={workdir} is not writable{missing}: {_first_line(e)}") from e


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
