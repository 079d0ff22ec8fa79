"""Vision Transformer: patch embedding, cls token, learned positions, pre-LN blocks, GELU MLP, linear head.

Separate q, k, v projections and both MLP layers come from the factory; latents {q, k, v, o, fc1, fc2} are
threaded across depth. The patch embedding and the head stay dense, as in the official LaX code. Low-rank
variants of the official code add a LayerNorm over the MLP hidden layer (`model.mlp_hidden_norm`):
fc1 -> GELU -> Dropout -> LayerNorm(4d) -> fc2 -> Dropout. Shapes: B batch, P patches (+1 cls), D width,
H heads, E head dim, F mlp width, K classes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lax_pretrain.layers import Norm, init
from lax_pretrain.layers.broadcast import trailing
from lax_pretrain.models.attention import attend, attention_impl
from lax_pretrain.models.projections import dtype_of, make_projection
from lax_pretrain.models.stack import BlockStack, tag_residual
from lax_pretrain.nnx_compat import param, set_train_mode
from lax_pretrain.parallel.constraints import RESIDUAL, constrain

PROJECTIONS = ("q", "k", "v", "o", "fc1", "fc2")
LN_EPS = 1e-6
EMBED_INITS = ("timm", "trunc_normal")


def layer_norm(width: int, axis_name: str, param_dtype) -> Norm:
    return Norm(width, "layernorm", eps=LN_EPS, axis_name=axis_name, param_dtype=param_dtype)


def mlp_hidden_norm_on(cfg: Any) -> bool:
    """The official code adds the hidden LayerNorm to every low-rank variant, never to the dense baseline."""
    flag = str(cfg.get("mlp_hidden_norm", "auto")).lower()
    if flag not in ("auto", "true", "false"):
        raise ValueError(f"model.mlp_hidden_norm={flag!r} is not one of auto, true, false")
    return cfg.linear.kind != "dense" if flag == "auto" else flag == "true"


def embedding_init(
    kind: str, rngs: nnx.Rngs, fan_in: int, d: int, dtype
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(patch kernel (fan_in, D), patch bias (D,), cls token (1, 1, D)) per `model.embed_init`.

    'timm'          the official LaX code (stock timm): the patch embedding is a Conv2d left at PyTorch's default
                    init, weight and bias U(+-1/sqrt(C p^2)); cls token N(0, 1e-6).
    'trunc_normal'  kernel and cls trunc-normal(0.02), zero patch bias (big_vision-like; our earlier default).
    """
    if kind == "timm":
        return (
            init.torch_default_uniform(rngs.params(), (fan_in, d), fan_in, dtype),
            init.torch_default_uniform(rngs.params(), (d,), fan_in, dtype),
            init.normal(rngs.params(), (1, 1, d), 1e-6, dtype),
        )
    if kind == "trunc_normal":
        return (
            init.truncated_normal(rngs.params(), (fan_in, d), 0.02, dtype),
            jnp.zeros((d,), dtype),
            init.truncated_normal(rngs.params(), (1, 1, d), 0.02, dtype),
        )
    raise ValueError(f"model.embed_init={kind!r} is not one of {', '.join(EMBED_INITS)}")


class VitBlock(nnx.Module):
    def __init__(self, cfg: Any, *, first: bool, rngs: nnx.Rngs):
        d, f, self.num_heads = cfg.d_model, cfg.mlp_dim, cfg.num_heads
        self.attention = attention_impl(cfg, d // cfg.num_heads)  # 'xla' or 'cudnn', per model.attention
        pd = dtype_of(cfg.param_dtype, "model.param_dtype")
        proj = functools.partial(make_projection, cfg, first=first, rngs=rngs)  # (name, d_in, d_out, axes)
        self.attn_norm = layer_norm(d, "embed", pd)
        self.q = proj("q", d, d, ("embed", "heads"))
        self.k = proj("k", d, d, ("embed", "heads"))
        self.v = proj("v", d, d, ("embed", "heads"))
        self.o = proj("o", d, d, ("heads", "embed"))
        self.mlp_norm = layer_norm(d, "embed", pd)
        self.fc1 = proj("fc1", d, f, ("embed", "mlp"))
        self.fc2 = proj("fc2", f, d, ("mlp", "embed"))
        self.hidden_norm = layer_norm(f, "mlp", pd) if mlp_hidden_norm_on(cfg) else None
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x_BxPxD: jax.Array, latents: dict | None):
        latents = latents or dict.fromkeys(PROJECTIONS)
        b, p, d = x_BxPxD.shape
        h = self.attn_norm(x_BxPxD)
        q, lq = self.q(h, latents["q"])
        k, lk = self.k(h, latents["k"])
        v, lv = self.v(h, latents["v"])
        q_BxPxHxE, k_BxPxHxE, v_BxPxHxE = (
            t.reshape(b, p, self.num_heads, d // self.num_heads) for t in (q, k, v)
        )
        a_BxPxHxE = attend(q_BxPxHxE, k_BxPxHxE, v_BxPxHxE, impl=self.attention)
        a, lo = self.o(a_BxPxHxE.reshape(b, p, d), latents["o"])
        x_BxPxD = tag_residual(constrain(x_BxPxD + a, RESIDUAL))
        m, l1 = self.fc1(self.mlp_norm(x_BxPxD), latents["fc1"])
        m = self.dropout(jax.nn.gelu(m, approximate=False))
        if self.hidden_norm is not None:
            m = self.hidden_norm(m)
        m, l2 = self.fc2(m, latents["fc2"])
        m = self.dropout(m)
        x_BxPxD = tag_residual(constrain(x_BxPxD + m, RESIDUAL))
        return x_BxPxD, {"q": lq, "k": lk, "v": lv, "o": lo, "fc1": l1, "fc2": l2}


class ViT(nnx.Module):
    """`model(images_BxHxWxC, *, train=False) -> logits_BxK` (float32 logits)."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        self.cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: the graphdef can key jit caches
        self.dtype = dtype_of(cfg.dtype, "model.dtype")
        pd = dtype_of(cfg.param_dtype, "model.param_dtype")
        ps, c, d = cfg.patch_size, cfg.channels, cfg.d_model
        if cfg.image_size % ps:
            raise ValueError(f"model.image_size={cfg.image_size} is not a multiple of model.patch_size={ps}")
        n_patches = (cfg.image_size // ps) ** 2
        patch_kernel, patch_bias, cls = embedding_init(
            cfg.get("embed_init", "trunc_normal"), rngs, ps * ps * c, d, pd
        )
        self.patch_kernel = param(patch_kernel, ("patch", "embed"))
        self.patch_bias = param(patch_bias, ("embed",))
        self.cls = param(cls, (None, None, "embed"))
        self.pos = param(
            init.truncated_normal(rngs.params(), (1, n_patches + 1, d), 0.02, pd), (None, None, "embed")
        )
        self.blocks = BlockStack(
            lambda first, r: VitBlock(cfg, first=first, rngs=r),
            cfg.num_layers,
            scan=cfg.scan_layers,
            remat=cfg.remat,
            rngs=rngs,
        )
        self.final_norm = layer_norm(d, "embed", pd)
        self.head_kernel = param(
            init.truncated_normal(rngs.params(), (d, cfg.num_classes), 0.02, pd), ("embed", "classes")
        )
        self.head_bias = param(jnp.zeros((cfg.num_classes,), pd), ("classes",))

    def __call__(self, images_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
        set_train_mode(self, train)
        b, height, width, c = images_BxHxWxC.shape
        ps = self.cfg.patch_size
        # Non-overlapping patches, flattened (row, col, channel) to match a conv kernel (ps, ps, C, D).
        x = images_BxHxWxC.reshape(b, height // ps, ps, width // ps, ps, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, -1, ps * ps * c).astype(self.dtype)
        x_BxPxD = x @ self.patch_kernel[...].astype(self.dtype)
        x_BxPxD = x_BxPxD + trailing(self.patch_bias[...], x_BxPxD)
        cls = jnp.broadcast_to(self.cls[...].astype(self.dtype), (b, 1, x_BxPxD.shape[-1]))
        x_BxPxD = jnp.concatenate([cls, x_BxPxD], axis=1) + self.pos[...].astype(self.dtype)
        x_BxPxD = constrain(x_BxPxD, RESIDUAL)
        x_BxPxD = self.final_norm(self.blocks(x_BxPxD))
        cls_BxD = x_BxPxD[:, 0]
        logits_BxK = jnp.dot(
            cls_BxD, self.head_kernel[...].astype(self.dtype), preferred_element_type=jnp.float32
        )
        return logits_BxK + trailing(self.head_bias[...], logits_BxK)
