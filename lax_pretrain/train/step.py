"""The functional train and eval steps: nnx.split -> jax.jit(in/out shardings, donation) -> nnx.merge.

The trainable state and the optimizer state are donated and updated; everything else (frozen parameters of a
fine-tuned base, RNG streams) is read only. Dropout is reseeded from (seed, step) inside the step, so no RNG
state has to be checkpointed for an exact resume. Gradient accumulation scans over micro-batches and makes one
optimizer update per step; it is exact: each micro-batch's mean loss and gradient are weighted by its count (the
task's `count`: tokens that are not padding, or examples), so `grad_accum=k` gives the full batch's
token-weighted loss and gradient however the padding falls (not the mean of the micro-batch means).

The step is the one place training metrics are combined: every entry of the loss's aux output other than
`count` is a training metric's (sum, count) pair (models/metrics.py); the pairs add over the micro-batches, and
over devices by being sums over the global batch, so `<name>: sum / max(count, 1)` in the step's metrics is the
whole batch's weighted mean whatever `grad_accum`, the mesh and the padding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lax_pretrain.models.metrics import means


def _has_dropout_stream(graphdef_and_state: Any) -> bool:
    return any("dropout" in map(str, path) for path, _ in nnx.to_flat_state(graphdef_and_state))


def _metric_pairs(aux: dict) -> dict[str, tuple[jax.Array, jax.Array]]:
    """The loss's training metrics: every aux entry but the loss's own weight."""
    pairs = {name: value for name, value in aux.items() if name != "count"}
    not_pairs = sorted(
        name for name, value in pairs.items() if not (isinstance(value, tuple) and len(value) == 2)
    )
    if not_pairs:
        raise TypeError(f"loss aux entries {not_pairs} are not (sum, count) pairs (see models/metrics.py)")
    return pairs


def make_train_step(
    graphdef: nnx.GraphDef,
    frozen: nnx.State,
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    grad_accum: int,
    dropout_seed: int,
):
    reseed = _has_dropout_stream(frozen)
    dropout_key = jax.random.key(dropout_seed)

    def loss_on(trainable, frozen, batch, rng_index):
        # Fresh Variables at this trace level: reseeding mutates the RNG variables, which NNX forbids on
        # variables created by the outer jit trace.
        frozen = jax.tree.map(lambda v: v, frozen)
        model = nnx.merge(graphdef, trainable, frozen)
        if reseed:
            nnx.reseed(model, dropout=jax.random.fold_in(dropout_key, rng_index), policy="match_shape")
        return loss_fn(model, batch)

    grad_fn = jax.value_and_grad(loss_on, has_aux=True)

    def step(trainable, opt_state, frozen, batch, step_index):
        if grad_accum == 1:
            (loss, aux), grads = grad_fn(trainable, frozen, batch, step_index)
            pairs = _metric_pairs(aux)
        else:
            micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

            def body(carry, xs):
                # Each micro-batch's mean loss and its gradient, weighted by the micro-batch's count (tokens
                # that are not padding; examples for images): sums over the whole batch, divided once below.
                i, mb = xs
                (loss_i, aux_i), grads_i = grad_fn(trainable, frozen, mb, step_index * grad_accum + i)
                count_i = aux_i["count"].astype(jnp.float32)
                weighted = jax.tree.map(lambda g: g * count_i.astype(g.dtype), (loss_i, grads_i))
                return jax.tree.map(jnp.add, carry, (*weighted, count_i)), _metric_pairs(aux_i)

            zeros = (
                jnp.zeros((), jnp.float32),
                jax.tree.map(jnp.zeros_like, trainable),
                jnp.zeros((), jnp.float32),
            )
            (loss_sum, grad_sum, count), micro_pairs = jax.lax.scan(
                body, zeros, (jnp.arange(grad_accum), micro)
            )
            # A metric's sums and counts stacked per micro-batch: their totals are the whole batch's pair.
            pairs = jax.tree.map(lambda x: x.sum(0), micro_pairs)
            # As the task's loss: the full batch's token-weighted mean (max(count, 1): an all-padding batch).
            scale = 1.0 / jnp.maximum(count, 1.0)
            loss, grads = jax.tree.map(lambda x: x * scale.astype(x.dtype), (loss_sum, grad_sum))
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "lr": schedule(step_index),
            **means(pairs),
        }
        return trainable, opt_state, metrics

    return step


def jit_train_step(step: Callable, trainable_sh: Any, opt_sh: Any, frozen_sh: Any, batch_sh: dict):
    return jax.jit(
        step,
        in_shardings=(trainable_sh, opt_sh, frozen_sh, batch_sh, None),
        out_shardings=(trainable_sh, opt_sh, None),
        donate_argnums=(0, 1),
    )


def make_eval_step(
    graphdef: nnx.GraphDef, eval_fn: Callable, trainable_sh: Any, frozen_sh: Any, batch_sh: dict
):
    def step(trainable, frozen, batch):
        return eval_fn(nnx.merge(graphdef, trainable, frozen), batch)

    return jax.jit(step, in_shardings=(trainable_sh, frozen_sh, batch_sh))
