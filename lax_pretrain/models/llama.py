"""LLaMA-style decoder: RMSNorm, RoPE, causal grouped-query attention, SwiGLU MLP, no biases.

Every one of q, k, v, o, gate, up, down comes from the factory; latents {q, k, v, o, gate, up, down} are
threaded from block to block by `BlockStack`. Shapes: B batch, L length, D model width, H query heads,
K kv heads, E head dim, F ffn width, V vocab.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lax_pretrain.layers import Norm
from lax_pretrain.models.attention import attend, attention_impl
from lax_pretrain.models.projections import dtype_of, make_projection
from lax_pretrain.models.stack import BlockStack, tag_residual
from lax_pretrain.nnx_compat import param, set_train_mode
from lax_pretrain.parallel.constraints import RESIDUAL, constrain

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def rms_norm(width: int, eps: float, param_dtype) -> Norm:
    return Norm(width, "rmsnorm", eps=eps, axis_name="embed", param_dtype=param_dtype)


def rope_at(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """(sin, cos) of shape positions.shape + (E,) in Hugging Face's half-split layout (rotate_half)."""
    inv_freq_E2 = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq_E2.reshape((1,) * positions.ndim + (-1,))
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(angles), jnp.cos(angles)


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """(sin, cos) of shape (L, E) for positions 0..L-1, shared by every row of a batch."""
    return rope_at(jnp.arange(length), head_dim, theta)


def apply_rope(x_BxLxHxE: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotates x by (sin, cos) of shape (L, E) (every row at positions 0..L-1) or (B, L, E) (per-row positions,
    cached decoding)."""
    half = x_BxLxHxE.shape[-1] // 2
    rotated = jnp.concatenate([-x_BxLxHxE[..., half:], x_BxLxHxE[..., :half]], axis=-1)
    sin_BxLx1xE, cos_BxLx1xE = (jnp.expand_dims(t if t.ndim == 3 else t[None], 2) for t in (sin, cos))
    return (x_BxLxHxE * cos_BxLx1xE + rotated * sin_BxLx1xE).astype(x_BxLxHxE.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: Any, *, first: bool, rngs: nnx.Rngs):
        d, h, kv, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, head_dim(cfg)
        if kv < 1 or h % kv:
            raise ValueError(
                f"model.num_kv_heads={kv} must divide model.num_heads={h} (grouped-query attention)"
            )
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, e
        self.attention = attention_impl(cfg, e)  # 'xla' or 'cudnn', per model.attention
        proj = functools.partial(make_projection, cfg, first=first, rngs=rngs)  # (name, d_in, d_out, axes)
        self.q = proj("q", d, h * e, ("embed", "heads"))
        self.k = proj("k", d, kv * e, ("embed", "heads"))
        self.v = proj("v", d, kv * e, ("embed", "heads"))
        self.o = proj("o", h * e, d, ("heads", "embed"))

    def __call__(
        self, x_BxLxD: jax.Array, latents: dict, sin: jax.Array, cos: jax.Array
    ) -> tuple[jax.Array, dict]:
        b, length, _ = x_BxLxD.shape
        (q_BxLxHxE, k_BxLxKxE, v_BxLxKxE), out_latents = self._qkv(x_BxLxD, latents, sin, cos)
        out_BxLxHxE = attend(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, impl=self.attention, causal=True)
        y, out_latents["o"] = self.o(out_BxLxHxE.reshape(b, length, -1), latents["o"])
        return y, out_latents

    def _qkv(self, x_BxLxD: jax.Array, latents: dict, sin: jax.Array, cos: jax.Array):
        """((q_BxLxHxE, k_BxLxKxE, v_BxLxKxE) with RoPE on q and k, {q, k, v latents}): both attention paths."""
        b, length, _ = x_BxLxD.shape
        h, kv, e = self.num_heads, self.num_kv_heads, self.head_dim
        q, lq = self.q(x_BxLxD, latents["q"])
        k, lk = self.k(x_BxLxD, latents["k"])
        v, lv = self.v(x_BxLxD, latents["v"])
        q_BxLxHxE = apply_rope(q.reshape(b, length, h, e), sin, cos)
        k_BxLxKxE = apply_rope(k.reshape(b, length, kv, e), sin, cos)
        return (q_BxLxHxE, k_BxLxKxE, v.reshape(b, length, kv, e)), {"q": lq, "k": lk, "v": lv}

    def decode(
        self,
        x_BxTxD: jax.Array,
        latents: dict,
        cache: dict,
        sin_BxTxE: jax.Array,
        cos_BxTxE: jax.Array,
        mask_BxTxS: jax.Array,
        index: jax.Array,
    ) -> tuple[jax.Array, dict, dict]:
        """T new tokens written at cache slots index..index+T-1 (`cache`: k, v of shape B x S x K x E), attending
        to the slots `mask_BxTxS` allows. Same projections as `__call__`; query head h reads kv head h // (H/K)."""
        b, t, _ = x_BxTxD.shape
        h, e = self.num_heads, self.head_dim
        (q_BxTxHxE, k_BxTxKxE, v_BxTxKxE), out_latents = self._qkv(x_BxTxD, latents, sin_BxTxE, cos_BxTxE)
        zero = jnp.zeros((), jnp.int32)
        start = (zero, index.astype(jnp.int32), zero, zero)
        k_BxSxKxE = jax.lax.dynamic_update_slice(cache["k"], k_BxTxKxE.astype(cache["k"].dtype), start)
        v_BxSxKxE = jax.lax.dynamic_update_slice(cache["v"], v_BxTxKxE.astype(cache["v"].dtype), start)
        # XLA's attention whatever model.attention says: an explicit mask over the cache slots.
        out_BxTxHxE = attend(
            q_BxTxHxE,
            k_BxSxKxE.astype(q_BxTxHxE.dtype),
            v_BxSxKxE.astype(q_BxTxHxE.dtype),
            impl="xla",
            mask_Bx1xTxS=mask_BxTxS[:, None],
        )
        y, out_latents["o"] = self.o(out_BxTxHxE.reshape(b, t, h * e), latents["o"])
        return y, out_latents, {"k": k_BxSxKxE, "v": v_BxSxKxE}


class SwiGLU(nnx.Module):
    def __init__(self, cfg: Any, *, first: bool, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.ffn_dim
        proj = functools.partial(make_projection, cfg, first=first, rngs=rngs)  # (name, d_in, d_out, axes)
        self.gate = proj("gate", d, f, ("embed", "mlp"))
        self.up = proj("up", d, f, ("embed", "mlp"))
        self.down = proj("down", f, d, ("mlp", "embed"))
        # CoLA's only_lr_act: the gate's low-rank activation already is the nonlinearity; drop the outer SiLU.
        self.outer_act = not cfg.only_lr_act

    def __call__(self, x_BxLxD: jax.Array, latents: dict) -> tuple[jax.Array, dict]:
        g, lg = self.gate(x_BxLxD, latents["gate"])
        u, lu = self.up(x_BxLxD, latents["up"])
        h_BxLxF = (jax.nn.silu(g) if self.outer_act else g) * u
        y, ld = self.down(h_BxLxF, latents["down"])
        return y, {"gate": lg, "up": lu, "down": ld}


class DecoderBlock(nnx.Module):
    def __init__(self, cfg: Any, *, first: bool, rngs: nnx.Rngs):
        pd = dtype_of(cfg.param_dtype, "model.param_dtype")
        self.attn_norm = rms_norm(cfg.d_model, cfg.norm_eps, pd)
        self.attn = Attention(cfg, first=first, rngs=rngs)
        self.mlp_norm = rms_norm(cfg.d_model, cfg.norm_eps, pd)
        self.mlp = SwiGLU(cfg, first=first, rngs=rngs)

    def __call__(self, x_BxLxD: jax.Array, latents: dict | None, sin: jax.Array, cos: jax.Array):
        latents = latents or dict.fromkeys(PROJECTIONS)
        a, la = self.attn(self.attn_norm(x_BxLxD), latents, sin, cos)
        x_BxLxD = tag_residual(constrain(x_BxLxD + a, RESIDUAL))
        m, lm = self.mlp(self.mlp_norm(x_BxLxD), latents)
        return tag_residual(constrain(x_BxLxD + m, RESIDUAL)), {**la, **lm}

    def decode(self, x_BxTxD: jax.Array, latents: dict | None, cache: dict, *args: Any):
        """`__call__` for T new tokens against a KV cache: `args` = (sin_BxTxE, cos_BxTxE, mask_BxTxS, index).
        LaX latents are per position, so they cross block to block here as in training and need no cache."""
        latents = latents or dict.fromkeys(PROJECTIONS)
        a, la, cache = self.attn.decode(self.attn_norm(x_BxTxD), latents, cache, *args)
        x_BxTxD = constrain(x_BxTxD + a, RESIDUAL)
        m, lm = self.mlp(self.mlp_norm(x_BxTxD), latents)
        return constrain(x_BxTxD + m, RESIDUAL), {**la, **lm}, cache


def head_dim(cfg: Any) -> int:
    return cfg.get("head_dim") or cfg.d_model // cfg.num_heads


class Llama(nnx.Module):
    """`model(tokens_BxL, *, train=False) -> logits_BxLxV` (float32 logits). The decoder has no dropout of its own;
    `train` switches that of adapters (LoRA dropout) on."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        self.cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: the graphdef can key jit caches
        self.dtype = dtype_of(cfg.dtype, "model.dtype")
        pd = dtype_of(cfg.param_dtype, "model.param_dtype")
        std = cfg.embed_init_std
        self.embed = param(
            std * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model), pd), ("vocab", "embed")
        )
        self.blocks = BlockStack(
            lambda first, r: DecoderBlock(cfg, first=first, rngs=r),
            cfg.num_layers,
            scan=cfg.scan_layers,
            remat=cfg.remat,
            rngs=rngs,
        )
        self.final_norm = rms_norm(cfg.d_model, cfg.norm_eps, pd)
        if not cfg.tie_embeddings:
            self.head = param(
                std * jax.random.normal(rngs.params(), (cfg.d_model, cfg.vocab_size), pd), ("embed", "vocab")
            )

    def __call__(self, tokens_BxL: jax.Array, *, train: bool = False) -> jax.Array:
        set_train_mode(self, train)
        x_BxLxD = self._embed(tokens_BxL)
        sin, cos = rope_tables(tokens_BxL.shape[1], head_dim(self.cfg), self.cfg.rope_theta)
        return self._logits(self.blocks(x_BxLxD, sin, cos))

    def _embed(self, tokens_BxL: jax.Array) -> jax.Array:
        table_VxD = constrain(self.embed[...], ("vocab", None))  # gather the fsdp shards before the lookup
        return constrain(jnp.take(table_VxD, tokens_BxL, axis=0).astype(self.dtype), RESIDUAL)

    def _logits(self, x_BxLxD: jax.Array) -> jax.Array:
        x_BxLxD = self.final_norm(x_BxLxD)
        head_DxV = self.embed[...].T if self.cfg.tie_embeddings else self.head[...]
        return jnp.dot(x_BxLxD, head_DxV.astype(self.dtype), preferred_element_type=jnp.float32)

    def init_cache(self, batch: int, max_len: int) -> dict:
        """An empty KV cache for `batch` rows of `max_len` slots (k, v: B x S x K x E per layer, model dtype)."""
        shape = (batch, max_len, self.cfg.num_kv_heads, head_dim(self.cfg))
        return self.blocks.init_cache(
            lambda: {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}
        )

    def decode(
        self, tokens_BxT: jax.Array, cache: dict, index: jax.Array, start_B: jax.Array
    ) -> tuple[jax.Array, dict]:
        """Runs T tokens at cache slots index..index+T-1 -> (logits_BxTxV float32, new cache).

        Row b's real tokens begin at slot start_B[b] (left padding): its RoPE position at slot j is
        j - start_B[b], and a query at slot i attends to slots start_B[b]..i (a padding query only to itself).
        Prefill is `decode(prompt_BxP, cache, 0, start_B)`; each next step feeds one token at the next slot."""
        set_train_mode(self, False)
        t, s = tokens_BxT.shape[1], self.blocks.cache_length(cache)
        index = jnp.asarray(index, jnp.int32)
        slots_T = index + jnp.arange(t, dtype=jnp.int32)
        start_B = jnp.asarray(start_B, jnp.int32)
        sin, cos = rope_at(slots_T[None, :] - start_B[:, None], head_dim(self.cfg), self.cfg.rope_theta)
        keys_1x1xS = jnp.arange(s, dtype=jnp.int32)[None, None, :]
        queries_1xTx1 = slots_T[None, :, None]
        mask_BxTxS = (keys_1x1xS <= queries_1xTx1) & (
            (keys_1x1xS >= start_B[:, None, None]) | (keys_1x1xS == queries_1xTx1)
        )
        x_BxTxD, cache = self.blocks.decode(self._embed(tokens_BxT), cache, sin, cos, mask_BxTxS, index)
        return self._logits(x_BxTxD), cache
