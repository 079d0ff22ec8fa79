"""The task registry: one object per model family, the only place that knows what a family is.

A `Task` says what its model learns and how it is measured: the loss and the eval sums (and the host-side
summary of those sums), the batch a step reads (one builder, for synthetic and abstract batches alike), how
many tokens an example holds, the block class, the projections that LaX crosses, the headline metric and
whether higher is better, the throughput key. Everything else in the package asks `get_task(model_cfg)` and
never compares family names.

Losses are computed in float32 from float32 logits. A loss also returns, as (sum, count) pairs, every training
metric registered for the prediction it produces (`models/metrics.py`: token or class logits). Eval steps return
sums, so metrics are exact token-/image-weighted means over the whole eval set whatever the batch padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lax_pretrain.models import llama, vit
from lax_pretrain.models.metrics import CLASS_LOGITS, TOKEN_LOGITS, metric_sums

# ------------------------------------------------------------------------------------------ objectives


def lm_loss(model: Any, batch: dict) -> tuple[jax.Array, dict]:
    logits_BxLxV = model(batch["inputs"], train=True)
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    weights_BxL = batch["weights"].astype(jnp.float32)
    count = weights_BxL.sum()
    mean = (nll_BxL * weights_BxL).sum() / jnp.maximum(count, 1.0)
    return mean, {"count": count, **metric_sums(TOKEN_LOGITS, logits_BxLxV, batch)}


def lm_eval(model: Any, batch: dict) -> dict:
    logits_BxLxV = model(batch["inputs"])
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    weights_BxL = batch["weights"].astype(jnp.float32)
    return {"loss_sum": (nll_BxL * weights_BxL).sum(), "count": weights_BxL.sum()}


def image_loss(model: Any, batch: dict) -> tuple[jax.Array, dict]:
    logits_BxK = model(batch["images"], train=True)
    loss_B = optax.softmax_cross_entropy(logits_BxK, batch["targets"])
    count = jnp.asarray(loss_B.shape[0], jnp.float32)
    return loss_B.mean(), {"count": count, **metric_sums(CLASS_LOGITS, logits_BxK, batch)}


def image_eval(model: Any, batch: dict) -> dict:
    logits_BxK = model(batch["images"], train=False)
    weights_B = batch["weights"].astype(jnp.float32)
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, batch["labels"])
    correct_B = (jnp.argmax(logits_BxK, -1) == batch["labels"]).astype(jnp.float32)
    return {
        "loss_sum": (loss_B * weights_B).sum(),
        "correct": (correct_B * weights_B).sum(),
        "count": weights_B.sum(),
    }


def _mean_loss(batch_sums: list[dict]) -> tuple[dict[str, float], float]:
    loss_sum = sum(float(b["loss_sum"]) for b in batch_sums)
    count = sum(float(b["count"]) for b in batch_sums)
    return {"eval_loss": loss_sum / max(count, 1.0)}, count


def lm_summary(batch_sums: list[dict]) -> dict[str, float]:
    out, _ = _mean_loss(batch_sums)
    out["eval_ppl"] = float(jnp.exp(out["eval_loss"]))
    # GaLore/CoLA's eval divides the summed per-batch mean losses by (batches + 1): ~2% lower perplexity.
    means = [float(b["loss_sum"]) / max(float(b["count"]), 1.0) for b in batch_sums if float(b["count"]) > 0]
    out["eval_ppl_galore_quirk"] = float(jnp.exp(sum(means) / (len(means) + 1)))
    return out


def image_summary(batch_sums: list[dict]) -> dict[str, float]:
    out, count = _mean_loss(batch_sums)
    out["eval_top1"] = sum(float(b["correct"]) for b in batch_sums) / max(count, 1.0)
    return out


# ------------------------------------------------------------------------------------------ batches


def text_batch(model_cfg: Any, batch_size: int, seq_len: int, key: jax.Array) -> dict[str, jax.Array]:
    """Random tokens in the text pipeline's format (data/text.py): every target real."""
    k_in, k_out = jax.random.split(key)
    shape = (batch_size, seq_len)
    return {
        "inputs": jax.random.randint(k_in, shape, 0, model_cfg.vocab_size, jnp.int32),
        "targets": jax.random.randint(k_out, shape, 0, model_cfg.vocab_size, jnp.int32),
        "weights": jnp.ones(shape, jnp.float32),
    }


def image_batch(model_cfg: Any, batch_size: int, seq_len: int, key: jax.Array) -> dict[str, jax.Array]:
    """Random images and labels in the image pipeline's format (data/images.py); `seq_len` is unused."""
    del seq_len
    k_img, k_lab = jax.random.split(key)
    s, c, k = model_cfg.image_size, model_cfg.channels, model_cfg.num_classes
    labels_B = jax.random.randint(k_lab, (batch_size,), 0, k, jnp.int32)
    return {
        "images": jax.random.uniform(k_img, (batch_size, s, s, c), jnp.float32, -1.0, 1.0),
        "labels": labels_B,
        "targets": jax.nn.one_hot(labels_B, k, dtype=jnp.float32),
        "weights": jnp.ones((batch_size,), jnp.float32),
    }


# ------------------------------------------------------------------------------------------ the registry


@dataclasses.dataclass(frozen=True)
class Task:
    family: str
    model_class: type
    block_class: type
    projections: tuple[str, ...]  # the latents LaX threads across depth
    data_kind: str  # 'text' | 'image': which datasets feed it
    # (model, batch) -> (weighted mean loss, aux): aux["count"] is the loss's weight (gradient accumulation
    # weights by it) and every other entry a training metric's (sum, count) for the prediction type the loss
    # produces (models/metrics.py)
    loss: Callable[[Any, dict], tuple[jax.Array, dict]]
    eval_sums: Callable[[Any, dict], dict]
    summarize: Callable[[list[dict]], dict[str, float]]
    make_batch: Callable[[Any, int, int, jax.Array], dict[str, jax.Array]]
    tokens_per_example: Callable[[Any, int], int]  # (model_cfg, seq_len): sequence tokens or patches + cls
    outside_flops_per_token: Callable[[Any, int], int]  # embedding/head FLOPs per token at that many tokens
    block_args: Callable[[Any, int], tuple]  # extra arguments of block(x, latents, *args) at that length
    embedding_attrs: tuple[str, ...]  # top-level parameters outside the blocks (non-embedding counts)
    headline: str  # the eval metric runs are compared by
    headline_label: str
    higher_is_better: bool
    throughput_key: str  # metrics.jsonl key of the per-second rate: tokens or images
    counts_tokens: bool  # whether that rate counts tokens (else examples)

    def batch(self, model_cfg: Any, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, jax.Array]:
        """A random batch of the step's format (the one synthetic-batch builder: benchmarks, programs)."""
        return self.make_batch(model_cfg, batch_size, seq_len, jax.random.key(seed))

    def batch_spec(self, model_cfg: Any, batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The batch's shapes and dtypes, allocating nothing."""
        return jax.eval_shape(lambda: self.batch(model_cfg, batch_size, seq_len))

    def throughput(self, examples_per_s: float, tokens_per_example: int) -> float:
        return examples_per_s * tokens_per_example if self.counts_tokens else examples_per_s


TASKS = {
    "llama": Task(
        family="llama",
        model_class=llama.Llama,
        block_class=llama.DecoderBlock,
        projections=llama.PROJECTIONS,
        data_kind="text",
        loss=lm_loss,
        eval_sums=lm_eval,
        summarize=lm_summary,
        make_batch=text_batch,
        tokens_per_example=lambda cfg, seq_len: seq_len,
        outside_flops_per_token=lambda cfg, tokens: 2 * cfg.d_model * cfg.vocab_size,
        block_args=lambda cfg, length: llama.rope_tables(length, llama.head_dim(cfg), cfg.rope_theta),
        embedding_attrs=("embed", "head"),
        headline="eval_ppl",
        headline_label="val perplexity",
        higher_is_better=False,
        throughput_key="tokens_per_s",
        counts_tokens=True,
    ),
    "vit": Task(
        family="vit",
        model_class=vit.ViT,
        block_class=vit.VitBlock,
        projections=vit.PROJECTIONS,
        data_kind="image",
        loss=image_loss,
        eval_sums=image_eval,
        summarize=image_summary,
        make_batch=image_batch,
        tokens_per_example=lambda cfg, seq_len: (cfg.image_size // cfg.patch_size) ** 2 + 1,
        # The patch embedding amortised over the tokens, the classifier on the cls token only.
        outside_flops_per_token=lambda cfg, tokens: (
            (
                2 * cfg.patch_size**2 * cfg.channels * cfg.d_model * (tokens - 1)
                + 2 * cfg.d_model * cfg.num_classes
            )
            // tokens
        ),
        block_args=lambda cfg, length: (),
        embedding_attrs=("patch_kernel", "patch_bias", "cls", "pos", "head_kernel", "head_bias"),
        headline="eval_top1",
        headline_label="val top-1",
        higher_is_better=True,
        throughput_key="images_per_s",
        counts_tokens=False,
    ),
}


def get_task(model_cfg_or_family: Any) -> Task:
    """The task of a model config (or a family name); an unknown family names the key."""
    family = (
        model_cfg_or_family if isinstance(model_cfg_or_family, str) else model_cfg_or_family.get("family")
    )
    if family not in TASKS:
        raise ValueError(f"model.family={family!r} is not one of {', '.join(TASKS)}")
    return TASKS[family]
