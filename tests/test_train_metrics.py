"""Training metrics (models/metrics.py): the built-in accuracies against numpy, and a metric registered from
this module (outside the package, as a user's module would) that reaches metrics.jsonl and W&B from a real
`train()` run with the right value: the same under grad_accum=2 as with one batch, and equal to a numpy
computation over the first step's batch (fetched from the same deterministic pipeline) and initial parameters.

The runs train a tiny CoLA + LaX LLaMA (d_model 32, 2 layers, rank 8, 16-token windows, batch 16) on the
8 fake CPU devices of conftest.py for 2 steps: the step is sharded over devices, so the device sums are
checked too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lax_pretrain.models.metrics as metrics_lib
import lax_pretrain.train.metrics as writer_lib
from lax_pretrain import data as data_lib
from lax_pretrain.config import from_compact
from lax_pretrain.data import tfds_io
from lax_pretrain.models.metrics import (
    CLASS_LOGITS,
    METRICS,
    TOKEN_LOGITS,
    class_accuracy,
    register_metric,
    token_accuracy,
)
from lax_pretrain.parallel import make_mesh
from lax_pretrain.registry import Registry
from lax_pretrain.train import train
from lax_pretrain.train.metrics import read_metrics
from lax_pretrain.train.program import build_program

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")

# ------------------------------------------------------------------------------------------ built-ins


def test_token_accuracy_is_the_token_weighted_numpy_accuracy():
    rng = np.random.default_rng(0)
    logits_BxLxV = rng.normal(size=(4, 12, 10)).astype(np.float32)
    targets_BxL = rng.integers(0, 10, size=(4, 12))
    # About half the targets are the argmax (random ones would be right 1 time in 10); ragged padding.
    agree_BxL = rng.random((4, 12)) < 0.5
    targets_BxL = np.where(agree_BxL, logits_BxLxV.argmax(-1), targets_BxL).astype(np.int32)
    weights_BxL = (np.arange(12)[None, :] < np.array([12, 3, 0, 7])[:, None]).astype(np.float32)
    batch = {"targets": jnp.asarray(targets_BxL), "weights": jnp.asarray(weights_BxL)}
    total, count = token_accuracy(jnp.asarray(logits_BxLxV), batch)
    correct = (logits_BxLxV.argmax(-1) == targets_BxL) & (weights_BxL > 0)
    assert float(count) == weights_BxL.sum() == 22
    assert float(total) == correct.sum() and 0 < correct.sum() < 22


def test_class_accuracy_is_the_example_weighted_numpy_accuracy():
    rng = np.random.default_rng(1)
    logits_BxK = rng.normal(size=(32, 5)).astype(np.float32)
    labels_B = rng.integers(0, 5, size=32).astype(np.int32)
    weights_B = (rng.random(32) < 0.7).astype(np.float32)  # 0: eval top-up rows
    batch = {"labels": jnp.asarray(labels_B), "weights": jnp.asarray(weights_B)}
    total, count = class_accuracy(jnp.asarray(logits_BxK), batch)
    correct = (logits_BxK.argmax(-1) == labels_B) & (weights_B > 0)
    assert float(count) == weights_B.sum() and float(total) == correct.sum() and correct.sum() > 0
    # One name, one function per prediction type: the losses of both task families report `accuracy`.
    assert dict(METRICS[CLASS_LOGITS].items())["accuracy"] is class_accuracy
    assert dict(METRICS[TOKEN_LOGITS].items())["accuracy"] is token_accuracy


@pytest.mark.parametrize("name", ["loss", "lr", "count", "time", "eval_accuracy"])
def test_names_the_step_or_the_loop_write_are_refused(name):
    with pytest.raises(ValueError, match=f"'{name}' is taken"):
        register_metric(TOKEN_LOGITS, name)


def test_an_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="'tokens' is not one of token_logits, class_logits"):
        register_metric("tokens", "accuracy")


# ------------------------------------------------------------------------------- a metric from outside


def target_prob(logits_BxLxV: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    """The probability the model gives the target token, token-weighted: continuous, so that a wrong weighting
    of the micro-batches shows."""
    probs_BxLxV = jax.nn.softmax(logits_BxLxV.astype(jnp.float32), -1)
    target_BxL = jnp.take_along_axis(probs_BxLxV, batch["targets"][..., None], -1)[..., 0]
    weights_BxL = batch["weights"].astype(jnp.float32)
    return (target_BxL * weights_BxL).sum(), weights_BxL.sum()


@pytest.fixture
def target_prob_registered(monkeypatch):
    """`target_prob` registered through the public decorator into a copy of the package's token-logit registry,
    which the test's teardown swaps back: later tests see the package's metrics only."""
    copy = Registry(METRICS[TOKEN_LOGITS].what)
    for name, fn in METRICS[TOKEN_LOGITS].items():
        copy.register(name, fn)
    monkeypatch.setitem(metrics_lib.METRICS, TOKEN_LOGITS, copy)
    register_metric(TOKEN_LOGITS, "target_prob")(target_prob)


class FakeWandbRun:
    """What MetricWriter calls on a W&B run: the rows it logs."""

    starting_step = 0

    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log(self, row: dict, *, step: int, commit: bool) -> None:
        self.rows.append((step, row))

    def finish(self) -> None:
        pass


def tiny_config(data_dir: str, **train_overrides):
    config = from_compact("llama", "nano,kind=cola,lax=kron")
    config.model.update(d_model=32, num_layers=2, num_heads=2, num_kv_heads=2, ffn_dim=64)
    for p in PROJECTIONS:
        config.model.proj[p].rank = 8
    config.data.update(seq_len=16, eval_batches=1, data_dir=data_dir)
    config.train.update(
        steps=2, batch_size=16, log_every=1, eval_every=2, checkpoint_every=2, eval_at_start=False
    )
    config.train.update(train_overrides)
    config.optim.warmup_steps = 1  # step 2 updates at the peak lr: its metric reads moved parameters
    config.wandb.mode = "disabled"
    return config


def first_step_numpy_metrics(config) -> dict[str, float]:
    """accuracy and target_prob of the first step, in numpy: the pipeline's first batch through the model's
    initial parameters (the same seed and shardings as the run's), the logits brought to the host."""
    tfds_io.build_if_needed(config.data)
    batch = next(
        data_lib.make_train_iterator(
            config.data, global_batch_size=config.train.batch_size, seed=config.train.seed
        )
    )
    program = build_program(config, make_mesh(config.mesh))
    with program.context():
        model = nnx.merge(program.graphdef, program.params, program.frozen)
        logits_BxLxV = np.asarray(model(jnp.asarray(batch["inputs"]), train=True), np.float64)
    weights_BxL = np.asarray(batch["weights"], np.float64)
    targets_BxL = np.asarray(batch["targets"])
    probs_BxLxV = np.exp(logits_BxLxV - logits_BxLxV.max(-1, keepdims=True))
    probs_BxLxV /= probs_BxLxV.sum(-1, keepdims=True)
    target_prob_BxL = np.take_along_axis(probs_BxLxV, targets_BxL[..., None], -1)[..., 0]
    correct_BxL = logits_BxLxV.argmax(-1) == targets_BxL
    return {
        "accuracy": (correct_BxL * weights_BxL).sum() / weights_BxL.sum(),
        "target_prob": (target_prob_BxL * weights_BxL).sum() / weights_BxL.sum(),
    }


@pytest.mark.slow
def test_a_registered_metric_reaches_metrics_jsonl_and_wandb_exactly(
    target_prob_registered, tfds_dir, tmp_path, monkeypatch
):
    one, two = tiny_config(tfds_dir), tiny_config(tfds_dir, grad_accum=2)
    two.wandb.mode = "offline"  # its writer starts a W&B run: the fake one records its rows
    fake = FakeWandbRun()
    monkeypatch.setattr(writer_lib, "_start_wandb", lambda *args, **kwargs: fake)
    want = first_step_numpy_metrics(one)
    train(one, tmp_path / "one")
    train(two, tmp_path / "two")
    rec_one = [r for r in read_metrics(tmp_path / "one") if "loss" in r]
    rec_two = [r for r in read_metrics(tmp_path / "two") if "loss" in r]
    assert [r["step"] for r in rec_one] == [r["step"] for r in rec_two] == [1, 2]
    assert want["target_prob"] > 0
    for records in (rec_one, rec_two):
        # Sharded logits vs the host's, float32 sums in another order: measured ~1e-7 relative on CPU.
        assert records[0]["target_prob"] == pytest.approx(want["target_prob"], rel=1e-5)
        assert records[0]["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
    for a, b in zip(rec_one, rec_two):
        assert b["target_prob"] == pytest.approx(a["target_prob"], rel=1e-5)
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-6)
    # W&B gets the same values as metrics.jsonl, one row per step.
    logged = {step: row for step, row in fake.rows if "loss" in row}
    assert sorted(logged) == [1, 2]
    for r in rec_two:
        assert logged[r["step"]]["target_prob"] == r["target_prob"]
        assert logged[r["step"]]["accuracy"] == r["accuracy"]
