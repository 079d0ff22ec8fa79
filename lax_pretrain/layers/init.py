"""Paper-faithful initialisers for every factor (see docs/methods.md section 2).

'lax'         official LaX ViT code: kaiming-normal, fan_in mode, relu gain, untruncated, with PyTorch's
              fan_in = size(1) * prod(shape[2:]) of the factor as stored there.
'cola'        official CoLA LLaMA code: both factors N(0, s^2), s = r^(-1/4) (d_in + d_out)^(-1/4), so the
              product has variance 1/(d_in + d_out); TT uses the same target through the variance-correct rule.
'tt_variance' variance-correct product init (t3f, "Compute Better Spent"): each of the d factors gets
              std = sigma^(1/d) * (prod internal ranks)^(-1/(2d)), so the product has std sigma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lax_pretrain.layers.spec import LinearSpec


def normal(key: jax.Array, shape: Sequence[int], std: float, dtype=jnp.float32) -> jax.Array:
    return std * jax.random.normal(key, shape, dtype)


def truncated_normal(key: jax.Array, shape: Sequence[int], std: float, dtype=jnp.float32) -> jax.Array:
    """timm's trunc_normal_(std): a normal cut at +-2 (absolute), i.e. +-2/std standard deviations."""
    bound = 2.0 / std
    return std * jax.random.truncated_normal(key, -bound, bound, shape, dtype)


def kaiming_uniform(key: jax.Array, shape: Sequence[int], fan_in: int, dtype=jnp.float32) -> jax.Array:
    """PyTorch kaiming_uniform_(a=0): U(-sqrt(6/fan_in), sqrt(6/fan_in))."""
    bound = math.sqrt(6.0 / fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_default_uniform(key: jax.Array, shape: Sequence[int], fan_in: int, dtype=jnp.float32) -> jax.Array:
    """PyTorch's default nn.Linear / nn.Conv2d init of weight and bias alike (kaiming_uniform_(a=sqrt(5))
    reduces to it): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def variance_correct_std(sigma: float, internal_ranks: Sequence[int]) -> float:
    """Std of each of len(internal_ranks) + 1 factors whose chained product has entries of std sigma."""
    d = len(internal_ranks) + 1
    return sigma ** (1.0 / d) * math.prod(internal_ranks) ** (-1.0 / (2 * d))


def target_sigma(spec: LinearSpec, d_in: int, d_out: int) -> float:
    """Std of the represented matrix aimed at by the product rules ('cola', 'tt_variance')."""
    if spec.init == "cola":
        return 1.0 / math.sqrt(d_in + d_out)
    return spec.init_std if spec.init_std is not None else 1.0 / math.sqrt(d_in)


def dense_kernel(key: jax.Array, spec: LinearSpec, d_in: int, d_out: int, dtype) -> jax.Array:
    shape = (d_in, d_out)
    if spec.init == "lax":  # the dense baseline of the LaX code is stock timm: trunc_normal(0.02)
        return truncated_normal(key, shape, spec.init_std or 0.02, dtype)
    if spec.init == "cola":  # Hugging Face LLaMA init used by the CoLA code for its dense baseline
        return normal(key, shape, spec.init_std or 0.02, dtype)
    return normal(key, shape, target_sigma(spec, d_in, d_out), dtype)


def low_rank_factors(
    key: jax.Array, spec: LinearSpec, d_in: int, d_out: int, dtype
) -> tuple[jax.Array, jax.Array]:
    """(down (d_in, r), up (r, d_out)) for svd and cola."""
    r = spec.rank
    k_down, k_up = jax.random.split(key)
    if spec.init == "lax":  # torch stores (d_in, r) here with fan_in = r; (r, d_out) with fan_in = d_out
        return (
            normal(k_down, (d_in, r), math.sqrt(2.0 / r), dtype),
            normal(k_up, (r, d_out), math.sqrt(2.0 / d_out), dtype),
        )
    std = variance_correct_std(
        target_sigma(spec, d_in, d_out), [r]
    )  # 'cola' reduces to r^-1/4 (d_in+d_out)^-1/4
    return normal(k_down, (d_in, r), std, dtype), normal(k_up, (r, d_out), std, dtype)


def tt_cores(key: jax.Array, spec: LinearSpec, d_in: int, d_out: int, dtype) -> list[jax.Array]:
    """Cores G_k of shape (r_{k-1}, s_k, r_k), modes = input modes then output modes."""
    modes = spec.tt_in_modes + spec.tt_out_modes
    ranks = spec.tt_ranks
    keys = jax.random.split(key, len(modes))
    shapes = [(ranks[k], modes[k], ranks[k + 1]) for k in range(len(modes))]
    if spec.init == "lax":
        # The LaX code stores the first core as (n_1, r_1) (fan_in r_1) and the others with fan_in s_k * r_k.
        fan_ins = [ranks[1]] + [modes[k] * ranks[k + 1] for k in range(1, len(modes))]
        return [normal(k, s, math.sqrt(2.0 / f), dtype) for k, s, f in zip(keys, shapes, fan_ins)]
    std = variance_correct_std(target_sigma(spec, d_in, d_out), ranks[1:-1])
    return [normal(k, s, std, dtype) for k, s in zip(keys, shapes)]


def bias(key: jax.Array, spec: LinearSpec, d_out: int, dtype) -> jax.Array:
    if spec.bias_init == "normal":  # the LaX code's factorized-layer bias: N(0, 1), never re-initialised
        return jax.random.normal(key, (d_out,), dtype)
    return jnp.zeros((d_out,), dtype)
