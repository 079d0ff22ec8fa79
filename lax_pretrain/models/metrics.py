"""Training metrics: one function each, registered for the kind of prediction it reads.

A metric is `(logits, batch) -> (sum, count)`, two float32 scalars over the batch it is given. The task's loss
returns every metric registered for its prediction type in its aux output; the train step adds the sums and the
counts over micro-batches (and the global batch spans every device), and reports `sum / max(count, 1)` under the
metric's name; the loop logs it to metrics.jsonl and W&B. Sums, not means, so the value is exactly the
token-/example-weighted mean over the whole step's batch however it is split and padded.

Prediction types (the task's loss says which one it produces):
- `token_logits`: logits_BxLxV over the vocabulary at each position; batch `targets` (int32 BxL) and
  `weights` (BxL, 0 on padding).
- `class_logits`: logits_BxK over the classes; batch `labels` (int32 B, each example's own label, before mixup),
  `targets` (float32 BxK, the soft targets the loss reads) and `weights` (B).

A new metric, in any module imported before training (`--import=MODULE` for one outside the package):

    @register_metric(TOKEN_LOGITS, "top5")
    def top5(logits_BxLxV, batch): ...
        return hits_sum, weights_sum
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from lax_pretrain.registry import Registry

MetricFn = Callable[[jax.Array, dict], tuple[jax.Array, jax.Array]]

TOKEN_LOGITS = "token_logits"
CLASS_LOGITS = "class_logits"
PREDICTIONS = (TOKEN_LOGITS, CLASS_LOGITS)

METRICS: dict[str, Registry[MetricFn]] = {p: Registry(f"training metric on {p}") for p in PREDICTIONS}

# Keys the step and the loop write into the same train record (and the same W&B row): a metric under one of
# them would overwrite it. `eval_` keys share the W&B row of an evaluation step.
RESERVED_NAMES = frozenset(
    {
        "loss",
        "grad_norm",
        "lr",
        "count",
        "step",
        "time",
        "mfu",
        "tflops_per_s",
        "tokens_per_s",
        "images_per_s",
    }
)
RESERVED_PREFIXES = ("eval_", "data_bad_")


def register_metric(prediction: str, name: str) -> Callable[[MetricFn], MetricFn]:
    """`@register_metric(TOKEN_LOGITS, "name")` over a `(logits, batch) -> (sum, count)` function."""
    if prediction not in METRICS:
        raise ValueError(f"prediction type {prediction!r} is not one of {', '.join(PREDICTIONS)}")
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
        raise ValueError(
            f"training metric name {name!r} is taken by the step or the loop "
            f"({', '.join(sorted(RESERVED_NAMES))}, {'*, '.join(RESERVED_PREFIXES)}*)"
        )
    return METRICS[prediction].decorator(name)


def metric_sums(prediction: str, logits: jax.Array, batch: dict) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{name: (sum, count)} of every metric registered for `prediction`, as float32 scalars. Read when the step
    is traced: a metric registered later is in the next program built."""
    pairs = {}
    for name, fn in METRICS[prediction].items():
        total, count = fn(jax.lax.stop_gradient(logits), batch)
        pairs[name] = (jnp.asarray(total, jnp.float32), jnp.asarray(count, jnp.float32))
    return pairs


def means(pairs: dict[str, tuple[jax.Array, jax.Array]]) -> dict[str, jax.Array]:
    """{name: sum / max(count, 1)}: a batch with no real token reports 0, never NaN."""
    return {name: total / jnp.maximum(count, 1.0) for name, (total, count) in pairs.items()}


# ------------------------------------------------------------------------------------------ built-ins


@register_metric(TOKEN_LOGITS, "accuracy")
def token_accuracy(logits_BxLxV: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Next-token top-1 accuracy, token-weighted (padding excluded)."""
    weights_BxL = batch["weights"].astype(jnp.float32)
    correct_BxL = (jnp.argmax(logits_BxLxV, -1) == batch["targets"]).astype(jnp.float32)
    return (correct_BxL * weights_BxL).sum(), weights_BxL.sum()


@register_metric(CLASS_LOGITS, "accuracy")
def class_accuracy(logits_BxK: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Top-1 accuracy against each example's own label (under mixup, the label before mixing), example-weighted."""
    weights_B = batch["weights"].astype(jnp.float32)
    correct_B = (jnp.argmax(logits_BxK, -1) == batch["labels"]).astype(jnp.float32)
    return (correct_B * weights_B).sum(), weights_B.sum()
