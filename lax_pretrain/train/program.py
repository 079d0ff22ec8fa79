"""The one program builder: from (config, mesh) to the sharded state and the jitted train and eval steps.

    program = build_program(config, mesh)                   # what train() runs: concrete, sharded state
    program = build_program(config, mesh, abstract=True)    # the same program, nothing allocated
    compiled = program.lower_train_step().compile()         # the comm report, the memory suite, lax-plan

The training loop, every benchmark, the comm report and the memory suite build their step here, so a benchmark
times exactly the program training runs. Batches are described by the task's batch spec (one synthetic-batch
builder, `Task.batch`); their shardings put the batch dimension over the data axes.

`compile_block_step` compiles one transformer block's forward + backward (no embedding, head or optimizer) for
the per-block collective accounting.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from lax_pretrain.models import Task, build, get_task
from lax_pretrain.optim import make_optimizer, state_shardings
from lax_pretrain.parallel import (
    RESIDUAL,
    batch_sharding,
    check_process_rows,
    logical_to_spec,
    place_values,
    rules_from_config,
    sharded_init,
    sharding_context,
)
from lax_pretrain.parallel.target import compiling_for
from lax_pretrain.train.checkpoint import abstract_like
from lax_pretrain.train.step import jit_train_step, make_eval_step, make_train_step

ModelFactory = Callable[[nnx.Rngs], nnx.Module]
LATENT_BxLxR = ("batch", None, "rank")


@dataclasses.dataclass
class Program:
    """A config's sharded state and steps. `params`, `frozen` and `opt_state` are arrays, or ShapeDtypeStructs
    carrying their shardings when built abstract. Call the steps (or lower them) inside `context()`."""

    config: Any
    task: Task
    mesh: Mesh
    rules: dict
    graphdef: nnx.GraphDef
    params: Any
    frozen: Any
    opt_state: Any
    param_shardings: Any
    frozen_shardings: Any
    opt_shardings: Any
    batch_spec: dict[str, jax.ShapeDtypeStruct]  # the global batch, with shardings
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    train_step: Any  # jitted (params, opt_state, frozen, batch, step) -> (params, opt_state, metrics)
    eval_step: Any  # jitted (params, frozen, batch) -> eval sums

    @property
    def batch_shardings(self) -> dict[str, NamedSharding]:
        return {k: v.sharding for k, v in self.batch_spec.items()}

    def context(self):
        return sharding_context(self.mesh, self.rules, self.config.parallel.tp_impl)

    def lower_train_step(self):
        """The train step lowered for abstract arguments of this program's shapes and shardings."""
        with self.context(), compiling_for(self.mesh.devices.flat[0]):
            return self.train_step.lower(
                abstract_like(self.params),
                abstract_like(self.opt_state),
                abstract_like(self.frozen),
                self.batch_spec,
                jax.ShapeDtypeStruct((), jnp.int32),
            )


def global_batch_spec(task: Task, config: Any, mesh: Mesh, rules: dict) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the data pipeline feeds a step, batch dimension over the data axes."""
    spec = task.batch_spec(config.model, config.train.batch_size, config.data.get("seq_len", 0))
    out = {}
    for k, s in spec.items():
        sharding = batch_sharding(mesh, len(s.shape), rules)
        check_process_rows(sharding, s.shape[0])
        out[k] = jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding)
    return out


def build_program(
    config: Any,
    mesh: Mesh,
    *,
    model_factory: ModelFactory | None = None,
    trainable: nnx.filterlib.Filter = nnx.Param,
    abstract: bool = False,
    init_values: Mapping[tuple, Any] | None = None,
) -> Program:
    """The sharded state and jitted steps of `config` on `mesh`.

    model_factory: rngs -> model (default: the config's model); trainable: which variables the optimizer
    updates (adapter fine-tuning passes a filter); init_values: flat state path -> host array replacing the
    factory's values there (a pretrained base), placed straight into its sharding, never a jit constant."""
    # Everything that depends on the device kind (attention, kron gate) follows the mesh's devices: the host's
    # in training, a TPU slice's or GPU node's when lax-plan compiles for one (parallel/target.py).
    with compiling_for(mesh.devices.flat[0]):
        return _build(config, mesh, model_factory, trainable, abstract, init_values)


def _build(config, mesh, model_factory, trainable, abstract, init_values) -> Program:
    task = get_task(config.model)
    rules = rules_from_config(config.parallel)
    factory = model_factory or (lambda rngs: build(config.model, rngs=rngs))
    graphdef, init_state, (param_sh, frozen_sh) = sharded_init(
        factory, mesh, rules, seed=config.train.seed, trainable=trainable
    )
    known = {path for sh in (param_sh, frozen_sh) for path, _ in nnx.to_flat_state(sh)}
    unknown = set(init_values or ()) - known
    if unknown:
        raise ValueError(
            f"init_values has {len(unknown)} paths the model does not, e.g. "
            f"{sorted('/'.join(map(str, p)) for p in unknown)[:3]}"
        )
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    if abstract:
        # Outside the mesh context: eager work there (optax's init, a PRNG key) would run on the mesh's
        # devices, which for a target compile (lax-plan --target) are descriptions that cannot run anything.
        params, frozen = (
            _with_shardings(s, sh) for s, sh in zip(jax.eval_shape(init_state), (param_sh, frozen_sh))
        )
        opt_sh = state_shardings(config.optim, tx, params, mesh)
        opt_state = _with_shardings(jax.eval_shape(tx.init, params), opt_sh)
    else:
        with sharding_context(mesh, rules, config.parallel.tp_impl):
            params, frozen = init_state()
            if init_values:
                params = place_values(params, param_sh, init_values)
                frozen = place_values(frozen, frozen_sh, init_values)
            opt_sh = state_shardings(config.optim, tx, params, mesh)
            opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    batch_spec = global_batch_spec(task, config, mesh, rules)
    batch_sh = {k: v.sharding for k, v in batch_spec.items()}
    step = make_train_step(
        graphdef,
        frozen,
        task.loss,
        tx,
        schedule,
        grad_accum=config.train.grad_accum,
        dropout_seed=config.train.seed,
    )
    train_step = jit_train_step(step, param_sh, opt_sh, frozen_sh, batch_sh)
    eval_step = make_eval_step(graphdef, task.eval_sums, param_sh, frozen_sh, batch_sh)
    return Program(
        config,
        task,
        mesh,
        rules,
        graphdef,
        params,
        frozen,
        opt_state,
        param_sh,
        frozen_sh,
        opt_sh,
        batch_spec,
        tx,
        schedule,
        train_step,
        eval_step,
    )


def compile_block_step(config: Any, mesh: Mesh):
    """One transformer block forward + backward: its outputs (residual and latents, as the next block needs
    them) and, from cotangents for both, the gradients of its parameters, its input and (a crossing block,
    used when the config crosses) the previous block's latents. Embedding, head and optimizer excluded."""
    task = get_task(config.model)
    rules = rules_from_config(config.parallel)
    cfg = copy.deepcopy(config.model)
    if "dropout" in cfg:
        cfg.dropout = 0.0
    b = config.train.batch_size
    length = task.tokens_per_example(cfg, config.data.get("seq_len", 0))
    make = task.block_class
    crossed = cfg.linear.crossing != "none" or any(
        dict(p or {}).get("crossing", "none") != "none" for p in dict(cfg.get("proj", {}) or {}).values()
    )
    extra = task.block_args(cfg, length)

    x_shape = (b, length, cfg.d_model)
    _, latent_shapes = jax.eval_shape(
        lambda x: make(cfg, first=True, rngs=nnx.Rngs(0))(x, None, *extra),
        jax.ShapeDtypeStruct(x_shape, jnp.float32),
    )
    graphdef, init, (param_sh, rest_sh) = sharded_init(
        lambda r: make(cfg, first=not crossed, rngs=r), mesh, rules
    )
    with sharding_context(mesh, rules, config.parallel.tp_impl):
        params, rest = jax.eval_shape(init)
        params, rest = _with_shardings(params, param_sh), _with_shardings(rest, rest_sh)
        x = jax.ShapeDtypeStruct(x_shape, jnp.float32, sharding=_named(mesh, rules, RESIDUAL, x_shape))
        lat = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(
                s.shape, s.dtype, sharding=_named(mesh, rules, LATENT_BxLxR, s.shape)
            ),
            latent_shapes,
        )
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


def _named(mesh: Mesh, rules: dict, names, shape) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def _with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` carrying `shardings` (a prefix tree: one sharding per variable)."""

    def attach(sharding, sub):
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), sub)

    return jax.tree.map(attach, shardings, tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
