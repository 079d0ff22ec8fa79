"""What is being learned: the loss and eval sums of a language model and of an image classifier.

Losses are computed in float32 from float32 logits. Eval steps return sums, so metrics are exact
token-/image-weighted means over the whole eval set whatever the batch padding.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def lm_loss(model: Any, batch: dict) -> tuple[jax.Array, dict]:
    logits_BxLxV = model(batch["inputs"], train=True)
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    weights = batch["weights"].astype(jnp.float32)
    count = weights.sum()
    return (nll_BxL * weights).sum() / jnp.maximum(count, 1.0), {"count": count}


def lm_eval(model: Any, batch: dict) -> dict:
    logits_BxLxV = model(batch["inputs"])
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    weights = batch["weights"].astype(jnp.float32)
    return {"loss_sum": (nll_BxL * weights).sum(), "count": weights.sum()}


def image_loss(model: Any, batch: dict) -> tuple[jax.Array, dict]:
    logits_BxK = model(batch["images"], train=True)
    loss_B = optax.softmax_cross_entropy(logits_BxK, batch["targets"])
    return loss_B.mean(), {"count": jnp.asarray(loss_B.shape[0], jnp.float32)}


def image_eval(model: Any, batch: dict) -> dict:
    logits_BxK = model(batch["images"], train=False)
    weights = batch["weights"].astype(jnp.float32)
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, batch["labels"])
    correct_B = (jnp.argmax(logits_BxK, -1) == batch["labels"]).astype(jnp.float32)
    return {"loss_sum": (loss_B * weights).sum(), "correct": (correct_B * weights).sum(), "count": weights.sum()}


TASKS = {"llama": (lm_loss, lm_eval), "vit": (image_loss, image_eval)}


def summarize_eval(family: str, batch_sums: list[dict]) -> dict[str, float]:
    """Eval metrics from the per-batch sums (host side)."""
    loss_sum = sum(float(b["loss_sum"]) for b in batch_sums)
    count = sum(float(b["count"]) for b in batch_sums)
    out = {"eval_loss": loss_sum / max(count, 1.0)}
    if family == "llama":
        out["eval_ppl"] = float(jnp.exp(out["eval_loss"]))
        # GaLore/CoLA's eval divides the summed per-batch mean losses by (batches + 1): ~2% lower perplexity.
        means = [float(b["loss_sum"]) / max(float(b["count"]), 1.0) for b in batch_sums if float(b["count"]) > 0]
        out["eval_ppl_galore_quirk"] = float(jnp.exp(sum(means) / (len(means) + 1)))
    else:
        out["eval_top1"] = sum(float(b["correct"]) for b in batch_sums) / max(count, 1.0)
    return out
