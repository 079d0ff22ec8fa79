"""The train step's gradient accumulation is exact: with padded rows of different lengths, `grad_accum=4` gives the
full batch's token-weighted loss and gradient, checked against the loss and gradient of the whole batch taken in
one piece (jax.value_and_grad of the task's loss, no accumulation code involved). The training metrics the loss
returns as (sum, count) pairs come out as the whole batch's token-weighted means, checked against numpy.

A tiny CoLA + LaX LLaMA on one device, float32; the "optimizer" keeps the gradient it is given as its state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lax_pretrain.config import from_compact
from lax_pretrain.models import build, get_task
from lax_pretrain.train.step import make_train_step

BATCH, SEQ, ACCUM = 8, 16, 4


@pytest.fixture(scope="module")
def setup():
    config = from_compact("llama", "nano,kind=cola,lax=kron")
    m = config.model
    m.update(d_model=32, num_layers=2, num_heads=2, num_kv_heads=2, ffn_dim=64, vocab_size=64)
    for p in m.proj:
        m.proj[p].rank = 8
    task = get_task(m)
    graphdef, trainable, frozen = nnx.split(build(m, rngs=nnx.Rngs(0)), nnx.Param, ...)
    k_in, k_out = jax.random.split(jax.random.key(1))
    # Row r keeps its first lengths[r] targets: micro-batches of 2 rows hold 11..32 real tokens, so the mean
    # of their means differs from the batch mean.
    lengths = np.array([16, 1, 3, 16, 9, 2, 16, 16])
    weights = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.float32)
    batch = {
        "inputs": jax.random.randint(k_in, (BATCH, SEQ), 0, 64, jnp.int32),
        "targets": jax.random.randint(k_out, (BATCH, SEQ), 0, 64, jnp.int32),
        "weights": jnp.asarray(weights),
    }
    return graphdef, trainable, frozen, task, batch


def keep_gradient() -> optax.GradientTransformation:
    """Updates nothing; its state is the last gradient, exactly as the step computed it."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def step_outputs(setup, grad_accum: int):
    """(gradient, metrics) of one step."""
    graphdef, trainable, frozen, task, batch = setup
    tx = keep_gradient()
    step = make_train_step(
        graphdef, frozen, task.loss, tx, optax.constant_schedule(1.0), grad_accum=grad_accum, dropout_seed=0
    )
    _, grads, metrics = jax.jit(step)(trainable, tx.init(trainable), frozen, batch, 0)
    return grads, metrics


def run_step(setup, grad_accum: int):
    grads, metrics = step_outputs(setup, grad_accum)
    return float(metrics["loss"]), grads


def test_accumulated_loss_and_gradient_are_the_full_batch_ones(setup):
    graphdef, trainable, frozen, task, batch = setup

    def whole_batch_loss(p):
        return task.loss(nnx.merge(graphdef, p, frozen), batch)[0]

    ref_loss, ref_grads = jax.value_and_grad(whole_batch_loss)(trainable)
    one_loss, one_grads = run_step(setup, 1)
    accum_loss, accum_grads = run_step(setup, ACCUM)

    # The mean of the micro-batch means (what accumulation did before) has a measurably different gradient.
    def micro_means_loss(p):
        model = nnx.merge(graphdef, p, frozen)
        micro = jax.tree.map(lambda x: x.reshape(ACCUM, -1, *x.shape[1:]), batch)
        return (
            sum(task.loss(model, jax.tree.map(lambda x, k=k: x[k], micro))[0] for k in range(ACCUM)) / ACCUM
        )

    means_grads = jax.grad(micro_means_loss)(trainable)
    gap = max(
        float(jnp.abs(a - b).max() / jnp.abs(b).max())
        for a, b in zip(jax.tree.leaves(means_grads), jax.tree.leaves(ref_grads))
    )
    assert gap > 0.05, gap  # measured 0.4: far above the tolerances below
    # float32 sums in a different order: measured |diff| ~1e-7 relative on CPU.
    assert one_loss == pytest.approx(float(ref_loss), rel=1e-6)
    assert accum_loss == pytest.approx(float(ref_loss), rel=1e-5)
    flat_ref = dict(nnx.to_flat_state(ref_grads))
    for grads in (one_grads, accum_grads):
        flat = dict(nnx.to_flat_state(grads))
        assert flat.keys() == flat_ref.keys()
        for path, g in flat.items():
            ref = np.asarray(flat_ref[path].value)
            np.testing.assert_allclose(
                np.asarray(g.value), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=str(path)
            )


def test_all_padding_micro_batch_adds_nothing(setup):
    """A micro-batch with no real token (count 0) contributes neither loss nor gradient, and the step stays
    finite."""
    graphdef, trainable, frozen, task, batch = setup
    weights = np.asarray(batch["weights"]).copy()
    weights[:2] = 0.0  # the first micro-batch is all padding
    padded = {**batch, "weights": jnp.asarray(weights)}
    loss, grads = run_step((graphdef, trainable, frozen, task, padded), ACCUM)
    ref_loss = float(task.loss(nnx.merge(graphdef, trainable, frozen), padded)[0])
    assert np.isfinite(loss) and loss == pytest.approx(ref_loss, rel=1e-5)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_metrics_are_whole_batch_means_under_accumulation(setup):
    """The step's `accuracy` (the built-in training metric) is the whole batch's token-weighted accuracy for
    grad_accum 1 and 4, computed here in numpy from the whole batch's logits; the mean of the micro-batch
    accuracies (what averaging per-micro-batch means would report) is measurably different. An untrained model
    is almost never right, so a random share of the targets are set to its own predictions (the logits depend
    only on the inputs)."""
    graphdef, trainable, frozen, task, batch = setup
    logits_BxLxV = np.asarray(nnx.merge(graphdef, trainable, frozen)(batch["inputs"], train=True))
    predicted_BxL = logits_BxLxV.argmax(-1)
    # More agreement in later rows: micro-batch accuracies differ, and so do the mean of them and the batch's.
    agree_BxL = np.random.default_rng(0).random(predicted_BxL.shape) < np.linspace(0.1, 0.9, BATCH)[:, None]
    targets_BxL = np.where(agree_BxL, predicted_BxL, np.asarray(batch["targets"]))
    batch = {**batch, "targets": jnp.asarray(targets_BxL, jnp.int32)}
    weights_BxL = np.asarray(batch["weights"])
    correct_BxL = (predicted_BxL == targets_BxL).astype(np.float64)
    want = (correct_BxL * weights_BxL).sum() / weights_BxL.sum()
    rows = BATCH // ACCUM
    micro_means = [
        (correct_BxL[k : k + rows] * weights_BxL[k : k + rows]).sum() / weights_BxL[k : k + rows].sum()
        for k in range(0, BATCH, rows)
    ]
    assert 0.2 < want < 0.8 and abs(np.mean(micro_means) - want) > 0.02, (micro_means, want)
    for grad_accum in (1, ACCUM):
        _, metrics = step_outputs((graphdef, trainable, frozen, task, batch), grad_accum)
        assert set(metrics) == {"loss", "grad_norm", "lr", "accuracy"}
        # A count of correct tokens over a count of real ones: exact but for float32 division.
        assert float(metrics["accuracy"]) == pytest.approx(want, rel=1e-6), grad_accum
