"""The sharded programs of a config, built the way the training loop builds them, for inspection without
data: one compiled train step, one transformer block forward + backward.

    mesh = make_mesh(config.mesh)
    compiled = compile_train_step(config, mesh)                 # what train() runs per step
    compiled = compile_block_step(config, mesh)                 # one block, embedding and head excluded
    comm_report(compiled)                                       # collectives per step, memory per device

Nothing here allocates parameters: shapes come from `nnx.eval_shape`, batches are ShapeDtypeStructs.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from lax_pretrain.models import build
from lax_pretrain.models.llama import DecoderBlock, head_dim, rope_tables
from lax_pretrain.models.vit import VitBlock
from lax_pretrain.parallel.constraints import RESIDUAL, sharding_context
from lax_pretrain.parallel.rules import MeshAxes, logical_to_spec, rules_from_config, sharded_init
from lax_pretrain.train.optimizer import make_optimizer
from lax_pretrain.train.step import jit_train_step, make_train_step
from lax_pretrain.train.tasks import TASKS

LATENT_BxLxR = ("batch", None, "rank")


def abstract_batch(config: Any, mesh: Mesh, rules: dict[str, MeshAxes]) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the data pipeline feeds `train()`, as sharded ShapeDtypeStructs."""
    m, b = config.model, config.train.batch_size
    if m.family == "llama":
        seq = config.data.seq_len
        shapes = {"inputs": ((b, seq), jnp.int32), "targets": ((b, seq), jnp.int32),
                  "weights": ((b, seq), jnp.float32)}
    else:
        s, k = m.image_size, m.num_classes
        shapes = {"images": ((b, s, s, m.channels), jnp.float32), "labels": ((b,), jnp.int32),
                  "targets": ((b, k), jnp.float32), "weights": ((b,), jnp.float32)}
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=_named(mesh, rules, ("batch",) + (None,) * (len(shape) - 1),
                                                                   shape))
            for k, (shape, dtype) in shapes.items()}


def compile_train_step(config: Any, mesh: Mesh):
    """The compiled train step of `train(config, ...)` on `mesh` (its init and optimizer shardings included)."""
    rules = rules_from_config(config.parallel)
    loss_fn, _ = TASKS[config.model.family]
    factory = lambda rngs: build(config.model, rngs=rngs)  # noqa: E731
    graphdef, init, (train_sh, frozen_sh) = sharded_init(factory, mesh, rules, seed=config.train.seed)
    with sharding_context(mesh, rules, config.parallel.tp_impl):
        params, frozen = jax.eval_shape(init)
        params, frozen = _with_shardings(params, train_sh), _with_shardings(frozen, frozen_sh)
        tx, schedule = make_optimizer(config.optim, config.train.steps)
        opt_sh = jax.jit(tx.init).lower(params).compile().output_shardings
        opt_state = _with_shardings(jax.eval_shape(tx.init, params), opt_sh)
        batch = abstract_batch(config, mesh, rules)
        step = make_train_step(graphdef, frozen, loss_fn, tx, schedule, grad_accum=config.train.grad_accum,
                               dropout_seed=config.train.seed)
        step_fn = jit_train_step(step, train_sh, opt_sh, frozen_sh, {k: v.sharding for k, v in batch.items()})
        return step_fn.lower(params, opt_state, frozen, batch, 0).compile()


def compile_block_step(config: Any, mesh: Mesh):
    """One transformer block forward + backward: its outputs (residual and latents, as the next block needs
    them) and, from cotangents for both, the gradients of its parameters, its input and (a crossing block,
    used when the config crosses) the previous block's latents. Embedding, head and optimizer excluded."""
    rules = rules_from_config(config.parallel)
    cfg = copy.deepcopy(config.model)
    if cfg.family == "vit":
        cfg.dropout = 0.0
    b = config.train.batch_size
    length = config.data.seq_len if cfg.family == "llama" else (cfg.image_size // cfg.patch_size) ** 2 + 1
    make = DecoderBlock if cfg.family == "llama" else VitBlock
    crossed = cfg.linear.crossing != "none" or any(
        dict(p or {}).get("crossing", "none") != "none" for p in dict(cfg.get("proj", {}) or {}).values())
    extra = rope_tables(length, head_dim(cfg), cfg.rope_theta) if cfg.family == "llama" else ()

    x_shape = (b, length, cfg.d_model)
    _, latent_shapes = jax.eval_shape(lambda x: make(cfg, first=True, rngs=nnx.Rngs(0))(x, None, *extra),
                                      jax.ShapeDtypeStruct(x_shape, jnp.float32))
    graphdef, init, (param_sh, rest_sh) = sharded_init(lambda r: make(cfg, first=not crossed, rngs=r), mesh, rules)
    with sharding_context(mesh, rules, config.parallel.tp_impl):
        params, rest = jax.eval_shape(init)
        params, rest = _with_shardings(params, param_sh), _with_shardings(rest, rest_sh)
        x = jax.ShapeDtypeStruct(x_shape, jnp.float32, sharding=_named(mesh, rules, RESIDUAL, x_shape))
        lat = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=_named(
            mesh, rules, LATENT_BxLxR, s.shape)), latent_shapes)
        lat_in = lat if crossed else None

        def forward_backward(params, x, lat_in, dy, dlat):
            def block(params, x, lat_in):
                return nnx.merge(graphdef, params, rest)(x, lat_in, *extra)

            (y, lat_out), vjp = jax.vjp(block, params, x, lat_in)
            cotangent = {k: None if v is None else dlat[k] for k, v in lat_out.items()}
            return (y, lat_out), vjp((dy, cotangent))

        lat_sh = jax.tree.map(lambda s: s.sharding, lat)
        out_sh = ((x.sharding, lat_sh), (param_sh, x.sharding, lat_sh if crossed else None))
        return jax.jit(forward_backward, out_shardings=out_sh).lower(params, x, lat_in, x, lat).compile()


def _named(mesh: Mesh, rules: dict[str, MeshAxes], names, shape) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def _with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` carrying `shardings` (a prefix tree: one sharding per variable)."""
    def attach(sharding, sub):
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), sub)

    return jax.tree.map(attach, shardings, tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
