"""LaX (latent crossing): the gates that map the previous block's latent, and the latent norm after them.

Per projection p and block l >= 1 (docs/methods.md 3.2):
    u = encode(x) + gate(z_{l-1}^p);  u = latent_norm(u);  z_l^p = act(u);  y = decode(z_l^p) + b
The latent passed on (z) is taken after the norm and the activation. Block 0 has no gate and no norm.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from flax import nnx

from lax_pretrain.layers import init
from lax_pretrain.layers.broadcast import trailing
from lax_pretrain.layers.norm import Norm
from lax_pretrain.layers.registry import GATES, Gate, register_gate
from lax_pretrain.layers.spec import LinearSpec, balanced_factors
from lax_pretrain.nnx_compat import param
from lax_pretrain.parallel.target import compile_platform

LATENT_NORM_EPS = 1e-6


def kron_factored(z_NxR: jax.Array, g1: jax.Array, g0: jax.Array) -> jax.Array:
    """z @ kron(g1, g0) as two small contractions, 2 r (f0 + f1) FLOPs per token: per token X = z as
    (f0, f1), out = g1^T X g0."""
    f0, f1 = g1.shape[0], g0.shape[0]
    x = z_NxR.reshape(*z_NxR.shape[:-1], f0, f1)
    y = jnp.einsum("...ab,bd->...ad", x, g0)
    y = jnp.einsum("...ad,ac->...cd", y, g1)
    return y.reshape(z_NxR.shape)


def kron_gemm(z_NxR: jax.Array, g1: jax.Array, g0: jax.Array) -> jax.Array:
    """z @ kron(g1, g0) as one (r x r) matmul, 2 r^2 FLOPs per token; the product is formed once per call."""
    return z_NxR @ jnp.kron(g1, g0)


KRON_IMPL_FNS = {"factored": kron_factored, "gemm": kron_gemm}

# `kron_impl='auto'`: the one GEMM up to this latent width, the two contractions above it, per backend. The GEMM
# costs 2 r^2 FLOPs per token against 2 r (f0 + f1), but it is one well-shaped matmul that the add and the
# latent norm follow without a copy, while the contractions are tiny-K matmuls with a transpose of the latent
# between them (XLA:CPU: copies each way, forward and backward). Once the r^2 FLOPs cost more than those passes
# over the latent, the contractions win. CPU, measured: layer by layer (docs/benchmarks/kron/bench.md: one d -> d
# svd/cola/tt layer at r = d/4, 4096 tokens, forward + backward) the GEMM is faster at r = 64, mixed at 128 and
# slower from 256 on; in the 60m train step (r = 128, docs/benchmarks/cpu_speed) it is faster for all three kinds.
# GPU/TPU: a roofline guess until scripts/device_check.sh measures it (its kron rows): the GEMM while
# 2 r^2 / (peak FLOP/s) < ~4 passes of r bf16 values / (HBM bytes/s), i.e. r < 4 F / BW ~ 1000 on an H100
# (989e12 FLOP/s, 3.35e12 B/s), halved for the GEMM's real efficiency.
KRON_GEMM_MAX_WIDTH = {"cpu": 128, "gpu": 512, "tpu": 512}


def kron_impl_for(width: int, backend: str | None = None) -> str:
    """The implementation `kron_impl='auto'` picks for a latent of `width` on `backend` (default: the platform
    the program is built for, `parallel.target.compile_platform()`: a plan for a TPU picks as the TPU run)."""
    limit = KRON_GEMM_MAX_WIDTH.get(backend or compile_platform(), KRON_GEMM_MAX_WIDTH["gpu"])
    return "gemm" if width <= limit else "factored"


class KronGate(nnx.Module):
    """z -> z @ kron(g1, g0): per token, X = z viewed as (f0, f1) row-major, output vec_row(g1^T X g0).

    impl: 'factored' | 'gemm' | 'auto' (`kron_impl_for`); parameters and function do not depend on it."""

    def __init__(self, width: int, *, impl: str = "auto", rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.f0, self.f1 = balanced_factors(width)
        self.impl = kron_impl_for(width) if impl == "auto" else impl
        self.g0 = param(
            init.kaiming_uniform(rngs.params(), (self.f1, self.f1), self.f1, param_dtype),
            ("latent", "latent"),
        )
        self.g1 = param(
            init.kaiming_uniform(rngs.params(), (self.f0, self.f0), self.f0, param_dtype),
            ("latent", "latent"),
        )

    def __call__(self, z_NxR: jax.Array) -> jax.Array:
        g1, g0 = self.g1[...].astype(z_NxR.dtype), self.g0[...].astype(z_NxR.dtype)
        return KRON_IMPL_FNS[self.impl](z_NxR, g1, g0)

    @property
    def param_count(self) -> int:
        return self.f0**2 + self.f1**2

    @property
    def flops_per_token(self) -> int:
        """The gate's analytic FLOPs (the factored count: what the gate is, whichever way it runs)."""
        return 2 * self.f0 * self.f1 * (self.f0 + self.f1)


class DenseGate(nnx.Module):
    """A full linear map between latents (allows different widths): trunc-normal(0.02) kernel, zero bias."""

    def __init__(self, in_width: int, width: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.in_width, self.width = in_width, width
        self.kernel = param(
            init.truncated_normal(rngs.params(), (in_width, width), 0.02, param_dtype), ("latent", "latent")
        )
        self.bias = param(jnp.zeros((width,), param_dtype), ("latent",))

    def __call__(self, z_NxR: jax.Array) -> jax.Array:
        y_NxR = z_NxR @ self.kernel[...].astype(z_NxR.dtype)
        return y_NxR + trailing(self.bias[...], y_NxR)

    @property
    def param_count(self) -> int:
        return (self.in_width + 1) * self.width

    @property
    def flops_per_token(self) -> int:
        return 2 * self.in_width * self.width


def _kron(spec: LinearSpec, in_width: int, width: int, *, rngs: nnx.Rngs, param_dtype) -> KronGate:
    return KronGate(width, impl=spec.kron_impl, rngs=rngs, param_dtype=param_dtype)


def _dense(spec: LinearSpec, in_width: int, width: int, *, rngs: nnx.Rngs, param_dtype) -> DenseGate:
    return DenseGate(in_width, width, rngs=rngs, param_dtype=param_dtype)


def _identity(spec: LinearSpec, in_width: int, width: int, *, rngs: nnx.Rngs, param_dtype) -> None:
    return None


def _warn_prime_width(spec: LinearSpec, where: str) -> None:
    f0, _ = balanced_factors(spec.latent_dim)
    if f0 == 1:
        warnings.warn(
            f"{where}: kron gate on prime latent width {spec.latent_dim} degenerates to a dense "
            f"{spec.latent_dim}x{spec.latent_dim} map",
            stacklevel=4,
        )


register_gate("identity", Gate(build=_identity))  # u + z: no parameters
register_gate("dense", Gate(build=_dense, same_width=False))
register_gate("kron", Gate(build=_kron, check=_warn_prime_width))


def make_gate(spec: LinearSpec, *, rngs: nnx.Rngs, param_dtype=jnp.float32) -> nnx.Module | None:
    """The gate of a crossing layer (its registered `build`); None for a parameter-free crossing."""
    width = spec.latent_dim
    in_width = spec.latent_in_dim if spec.latent_in_dim is not None else width
    gate = GATES.get(spec.crossing, key="crossing")
    return gate.build(spec, in_width, width, rngs=rngs, param_dtype=param_dtype)


def make_latent_norm(spec: LinearSpec, *, param_dtype=jnp.float32) -> Norm | None:
    """The norm over the latent after the crossing (crossing layers only), eps 1e-6."""
    if spec.latent_norm == "none":
        return None
    return Norm(
        spec.latent_dim, spec.latent_norm, eps=LATENT_NORM_EPS, axis_name="latent", param_dtype=param_dtype
    )
