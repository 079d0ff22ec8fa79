"""The one attention call of both families: `jax.nn.dot_product_attention`, implementation per `model.attention`.

  auto   cuDNN flash attention where it runs (an NVIDIA GPU, bfloat16/float16 compute, head dim a multiple of 8
         and at most 128), XLA's attention everywhere else. "Where it runs" is the device the program is
         built for (`parallel.target.compile_device()`): a plan compiled for H100s on a CPU host picks cuDNN
         as the run on the H100s will.
  xla    XLA's attention: any backend and dtype
  cudnn  cuDNN flash attention; where it cannot run that is a config error naming `model.attention`

An odd sequence length (ViT's 196 patches + 1 class token) runs XLA's attention whatever the choice: cuDNN's
training kernels refuse it ("Unsupported sequence length Q 197, KV 197"; found by lax-plan --target=h100x8).
The choice is made when the model is built (so a bad value fails before anything compiles) and stored as a
plain string on the module. Both implementations compute softmax(q k^T / sqrt(E)) v with float32 logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
from jax._src.cudnn import fused_attention_stablehlo as _cudnn_fmha

from lax_pretrain.parallel.target import compile_device

ATTENTIONS = ("auto", "xla", "cudnn")
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128


def cudnn_unavailable(dtype: str, head_dim: int) -> str | None:
    """Why cuDNN flash attention cannot run this model here (None: it can)."""
    device = compile_device()
    if device.platform != "gpu" or "nvidia" not in device.device_kind.lower():
        return f"it needs an NVIDIA GPU and the device is {device.device_kind!r} ({device.platform})"
    if dtype not in CUDNN_DTYPES:
        return f"it computes in {' or '.join(CUDNN_DTYPES)} and model.dtype={dtype!r}"
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
        return f"it needs a head dim that is a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}, got {head_dim}"
    return None


def attention_impl(model_cfg: Any, head_dim: int) -> str:
    """'xla' or 'cudnn' for `model.attention` (default auto); ValueError naming the key otherwise."""
    choice = str(model_cfg.get("attention", "auto"))
    if choice not in ATTENTIONS:
        raise ValueError(f"model.attention={choice!r} is not one of {', '.join(ATTENTIONS)}")
    if choice == "xla":
        return "xla"
    why_not = cudnn_unavailable(model_cfg.dtype, head_dim)
    if choice == "cudnn" and why_not:
        raise ValueError(f"model.attention='cudnn' cannot run here: {why_not}; use auto or xla")
    return "xla" if why_not else "cudnn"


@contextlib.contextmanager
def cudnn_answered_for(cudnn_version: int, compute_capability: tuple[int, int]) -> Iterator[None]:
    """Tracing cuDNN attention asks the host's cuDNN for its version and the first local GPU for its compute
    capability; compiling for a GPU system that is not here (lax-plan --target), the target answers instead.
    jax has no public hook for this, so its three private checks are replaced for the duration."""
    originals = {
        name: getattr(_cudnn_fmha, name)
        for name in ("check_cudnn_version", "check_compute_capability", "is_cuda_compute_capability_equal")
    }

    def parse(capability: str) -> tuple[int, ...]:
        return tuple(int(x) for x in capability.split("."))

    _cudnn_fmha.check_cudnn_version = lambda: cudnn_version
    _cudnn_fmha.check_compute_capability = lambda c: compute_capability >= parse(c)
    _cudnn_fmha.is_cuda_compute_capability_equal = lambda c: compute_capability == parse(c)
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(_cudnn_fmha, name, fn)


def attend(
    q_BxTxHxE: jax.Array,
    k_BxSxKxE: jax.Array,
    v_BxSxKxE: jax.Array,
    *,
    impl: str,
    causal: bool = False,
    mask_Bx1xTxS: jax.Array | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(E)) v -> (B, T, H, E); grouped-query when K < H (query head h reads kv head
    h // (H/K)). `mask` (True = attend) broadcasts over the heads."""
    if impl == "cudnn" and (q_BxTxHxE.shape[1] % 2 or k_BxSxKxE.shape[1] % 2):
        impl = "xla"  # cuDNN's training kernels refuse odd lengths (ViT's 197 tokens), jax 0.10.2
    return jax.nn.dot_product_attention(
        q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, mask=mask_Bx1xTxS, is_causal=causal, implementation=impl
    )
