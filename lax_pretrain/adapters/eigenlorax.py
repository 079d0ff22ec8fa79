"""EigenLoRAx: recycle N LoRA adapters into per-module principal subspaces; new tasks train only loadings.

Row-vector convention throughout: a LoRA delta is (x A) B with A (d_in, r), B (r, d_out) and the LoRA scale
alpha/r already folded into B. An *adapter* is a dict module path -> (A, B).

Per module, separately for A and B, the samples are the adapter's rank vectors (the r columns of A, the r rows
of B), stacked over N adapters into M_A (d_in, N r) and M_B (d_out, N r), centred per feature (the mean is not
stored and never added back) and reduced by a thin SVD to the top-K left singular vectors C_A (d_in, K),
C_B (d_out, K). A task is then the loadings alpha_A, alpha_B (K, r):

    A_hat = C_A alpha_A            B_hat = (C_B alpha_B)^T            delta(x) = (x A_hat) B_hat

Known adapters are reconstructed with no data by orthogonal projection (alpha_A = C_A^T A,
alpha_B = C_B^T B^T), and many tasks are served from one basis (z = x C_A shared by all rows of a batch).

The `unwind=True` ablation flattens each whole factor into one sample instead (N samples per module): see
`fit_basis`. The basis is fitted offline in float64 numpy; everything returned is float32 jax.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import FrozenDict
from safetensors import safe_open
from safetensors.numpy import save_file

from lax_pretrain.nnx_compat import AXES_KEY, param

ArrayLike = np.ndarray | jax.Array
Adapter = Mapping[str, tuple[ArrayLike, ArrayLike]]
Signature = Mapping[str, tuple[int, int]]

# Projections and reconstructions are offline and must be exact on GPU/TPU too (no bf16/TF32 passes).
_HIGHEST = jax.lax.Precision.HIGHEST
_FORMAT_VERSION = 1
_HEADER_KEY = "eigenlorax"


# ----------------------------------------------------------------------------------------------- containers


@dataclasses.dataclass(frozen=True)
class Basis:
    """Frozen EigenLoRAx components for one model, one entry per adapted module path.

    C_A[p]: (d_in, K) and C_B[p]: (d_out, K), orthonormal columns (unwind: (d_in r, K) and (r d_out, K)).
    rho_A[p], rho_B[p]: cumulative explained variance rho(k) = sum_{j<=k} s_j^2 / sum_j s_j^2 for every
      available k = 1..min(dim, #samples) (rho[k - 1] is rho(k)), so any K can be judged, not only the fitted
      one.
    model_signature: module path -> (d_in, d_out) of the model the basis was built for.
    rank: the rank r of the adapters it was fitted on (structural only for unwind).
    unwind: whole-matrix ablation basis (see `fit_basis`).
    n_random: module path -> (n_A, n_B), how many trailing columns of (C_A, C_B) are random orthonormal
      directions rather than principal components (random extension beyond the data's rank, plus `augment`).
    """

    C_A: dict[str, jax.Array]
    C_B: dict[str, jax.Array]
    rho_A: dict[str, jax.Array]
    rho_B: dict[str, jax.Array]
    model_signature: FrozenDict  # FrozenDict[str, tuple[int, int]]: hashable, so a Basis can cross jax.jit
    rank: int
    unwind: bool = False
    n_random: FrozenDict = FrozenDict()  # FrozenDict[str, tuple[int, int]]

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self.C_A)

    @property
    def k(self) -> int:
        """Number of components K (the same for every module and for A and B)."""
        return next(iter(self.C_A.values())).shape[1]

    def explained_variance(self, k: int) -> dict[str, tuple[float, float]]:
        """rho(k) for A and B per module; k beyond the available samples explains everything there is."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return {p: (_rho_at(self.rho_A[p], k), _rho_at(self.rho_B[p], k)) for p in self.modules}

    def check_signature(self, signature: Signature, what: str = "model") -> None:
        """Raise ValueError unless `signature` (path -> (d_in, d_out)) is exactly the basis's own."""
        _check_signature(
            dict(self.model_signature),
            dict(signature),
            f"model signature mismatch: this basis was built for another model than this {what}",
        )


@dataclasses.dataclass(frozen=True)
class Loadings:
    """One task's trainable coefficients: alpha_A[p], alpha_B[p] of shape (K, r) (unwind: (K, 1))."""

    alpha_A: dict[str, jax.Array]
    alpha_B: dict[str, jax.Array]

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self.alpha_A)


jax.tree_util.register_dataclass(
    Basis,
    data_fields=["C_A", "C_B", "rho_A", "rho_B"],
    meta_fields=["model_signature", "rank", "unwind", "n_random"],
)
jax.tree_util.register_dataclass(Loadings, data_fields=["alpha_A", "alpha_B"], meta_fields=[])


def _rho_at(rho: jax.Array, k: int) -> float:
    return float(rho[min(k, rho.shape[0]) - 1])


# ----------------------------------------------------------------------------------------------- validation


def adapter_signature(adapter: Adapter) -> dict[str, tuple[int, int]]:
    """path -> (d_in, d_out) of an adapter, checking each (A, B) pair is a valid LoRA factorisation."""
    if not adapter:
        raise ValueError("adapter has no modules")
    signature = {}
    for path, factors in adapter.items():
        if len(factors) != 2:
            raise ValueError(f"{path}: expected a pair (A, B), got {len(factors)} arrays")
        a, b = factors
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"{path}: A and B must be 2-D, got shapes {a.shape} and {b.shape}")
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"{path}: rank mismatch inside the adapter, A {a.shape} vs B {b.shape}")
        signature[path] = (a.shape[0], b.shape[1])
    return signature


def _adapter_rank(adapter: Adapter) -> int:
    ranks = {path: a.shape[1] for path, (a, _) in adapter.items()}
    if len(set(ranks.values())) != 1:
        raise ValueError(f"all modules of an adapter must share one rank, got {ranks}")
    return next(iter(ranks.values()))


def _check_signature(
    expected: dict[str, tuple[int, int]], got: dict[str, tuple[int, int]], context: str
) -> None:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shapes = {p: (expected[p], got[p]) for p in expected if p in got and tuple(expected[p]) != tuple(got[p])}
    if missing or extra or shapes:
        raise ValueError(
            f"{context}: missing modules {missing}, unexpected modules {extra}, "
            f"(d_in, d_out) expected vs got {shapes}"
        )


def _check_adapters(adapters: Sequence[Adapter]) -> tuple[dict[str, tuple[int, int]], int]:
    """Common signature and rank of a non-empty list of adapters, or a ValueError naming the offender."""
    if len(adapters) == 0:
        raise ValueError("need at least one adapter, got an empty list")
    signature = adapter_signature(adapters[0])
    rank = _adapter_rank(adapters[0])
    for i, adapter in enumerate(adapters[1:], start=1):
        _check_signature(signature, adapter_signature(adapter), f"adapter {i} does not match adapter 0")
        if (r := _adapter_rank(adapter)) != rank:
            raise ValueError(
                f"adapter {i} has rank {r}, adapter 0 has rank {rank}: all adapters need one rank"
            )
    for i, adapter in enumerate(adapters):
        for path, (a, b) in adapter.items():
            if not (
                np.isfinite(np.asarray(a, np.float64)).all() and np.isfinite(np.asarray(b, np.float64)).all()
            ):
                raise ValueError(f"adapter {i}, {path}: non-finite values")
    return signature, rank


def _check_loadings(basis: Basis, loadings: Loadings) -> int:
    """The loadings' column count (r, or 1 for unwind), after checking them against the basis."""
    if set(loadings.alpha_A) != set(basis.modules) or set(loadings.alpha_B) != set(basis.modules):
        raise ValueError(
            f"loadings modules {sorted(loadings.alpha_A)} / {sorted(loadings.alpha_B)} "
            f"do not match the basis modules {sorted(basis.modules)}"
        )
    cols = {loadings.alpha_A[p].shape[-1] for p in basis.modules}
    if len(cols) != 1:
        raise ValueError(f"loadings have different ranks across modules: {sorted(cols)}")
    (r,) = cols
    if basis.unwind and r != 1:
        raise ValueError(f"an unwind basis takes loadings of shape (K, 1), got rank {r}")
    for p in basis.modules:
        for side, c, alpha in (
            ("A", basis.C_A[p], loadings.alpha_A[p]),
            ("B", basis.C_B[p], loadings.alpha_B[p]),
        ):
            if alpha.shape != (c.shape[1], r):
                raise ValueError(
                    f"{p}: alpha_{side} has shape {alpha.shape}, expected (K, r) = {(c.shape[1], r)}"
                )
    return r


# ----------------------------------------------------------------------------------------------- fitting


def _samples(adapters: Sequence[Adapter], path: str, unwind: bool) -> tuple[np.ndarray, np.ndarray]:
    """M_A (d_in, N r) and M_B (d_out, N r); unwind: (d_in r, N) and (r d_out, N). float64."""
    a_list = [np.asarray(adapter[path][0], np.float64) for adapter in adapters]
    b_list = [np.asarray(adapter[path][1], np.float64) for adapter in adapters]
    if unwind:
        # One sample per adapter: the whole factor flattened row-major (A -> d_in r values, B -> r d_out).
        return np.stack([a.reshape(-1) for a in a_list], 1), np.stack([b.reshape(-1) for b in b_list], 1)
    # A's rank vectors are its columns, B's are its rows (the columns of B^T).
    return np.concatenate(a_list, 1), np.concatenate([b.T for b in b_list], 1)


def _centred_svd(m_dxn: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left singular vectors, singular values and cumulative explained variance of the centred samples."""
    mc_dxn = m_dxn - m_dxn.mean(axis=1, keepdims=True)  # per feature: the mean over samples (columns)
    u, s, _ = np.linalg.svd(mc_dxn, full_matrices=False)
    cumulative = np.cumsum(s**2)
    if cumulative[-1] == 0.0:
        raise ValueError(
            f"{what}: the centred samples are all zero (identical samples), there is nothing to fit"
        )
    return u, s, cumulative / cumulative[-1]  # dividing by the last entry makes rho(full) exactly 1


def _numerical_rank(s: np.ndarray, shape: tuple[int, int]) -> int:
    # Adapters are float32 (or narrower), so directions below float32 round-off are not signal.
    return int(np.sum(s > s[0] * max(shape) * np.finfo(np.float32).eps))


def _orthonormal_extension(c_dxk: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[C | Q_new]: n random directions (U[0,1) then QR of [C | R]) orthonormal to C and to each other."""
    d, k = c_dxk.shape
    if n == 0:
        return c_dxk
    if k + n > d:
        raise ValueError(f"cannot have {k + n} orthonormal components in dimension {d}")
    r_dxn = rng.uniform(0.0, 1.0, size=(d, n))
    q, _ = np.linalg.qr(np.concatenate([c_dxk, r_dxn], axis=1))  # Q's first k columns span C: keep C itself
    return np.concatenate([c_dxk, q[:, k:]], axis=1)


def _principal_components(
    m_dxn: np.ndarray, k: int, rng: np.random.Generator, what: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Top-k components of the centred samples, their rho, and how many trailing ones are random."""
    u, s, rho = _centred_svd(m_dxn, what)
    n_signal = min(k, _numerical_rank(s, m_dxn.shape))
    # Beyond the rank of the centred samples (<= #samples - 1) the SVD's vectors are arbitrary; say so by
    # replacing them with the same random orthonormal extension `augment` uses.
    return _orthonormal_extension(u[:, :n_signal], k - n_signal, rng), rho, k - n_signal


def _check_k(k: int, signature: dict[str, tuple[int, int]], n_samples: int, rank: int, unwind: bool) -> None:
    kind = "N (the number of adapters; unwind)" if unwind else "N r (the number of rank vectors)"
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n_samples:
        raise ValueError(f"k = {k} is larger than the available {kind} = {n_samples}")
    for path, (d_in, d_out) in signature.items():
        dims = (d_in * rank, rank * d_out) if unwind else (d_in, d_out)
        if k > min(dims):
            raise ValueError(
                f"{path}: k = {k} exceeds the component dimension {min(dims)} (d_in, d_out = {dims})"
            )


def fit_basis(adapters: Sequence[Adapter], k: int, *, unwind: bool = False, seed: int = 0) -> Basis:
    """Fit K principal components per module, separately for A and B, from N adapters of one rank r.

    Rank-vector variant (default): samples are the N r columns of the A's (d_in vectors) and the N r rows of
    the B's (d_out vectors); K <= N r. Loadings are (K, r): A_hat = C_A alpha_A, B_hat = (C_B alpha_B)^T.

    unwind=True (whole-matrix ablation): each adapter's A is flattened row-major into one d_in r sample and
    its B into one r d_out sample, so there are N samples per module and K <= N. A component is then a whole
    factor, and a task's loadings are one coefficient per component, shape (K, 1):
    A_hat = reshape(C_A alpha_A, (d_in, r)), B_hat = reshape(C_B alpha_B, (r, d_out)); the rank r is fixed by
    the adapters the basis was fitted on.

    Components beyond the numerical rank of the centred samples (<= N r - 1, or N - 1 for unwind) are random
    orthonormal directions (seeded by `seed`); a warning names them and `Basis.n_random` counts them.
    """
    signature, rank = _check_adapters(adapters)
    _check_k(k, signature, len(adapters) * (1 if unwind else rank), rank, unwind)
    rng = np.random.default_rng(seed)
    c_a, c_b, rho_a, rho_b, n_random = {}, {}, {}, {}, {}
    for path in signature:
        m_a, m_b = _samples(adapters, path, unwind)
        ca, ra, na = _principal_components(m_a, k, rng, f"{path} (A)")
        cb, rb, nb = _principal_components(m_b, k, rng, f"{path} (B)")
        c_a[path], c_b[path], rho_a[path], rho_b[path] = map(_f32, (ca, cb, ra, rb))
        n_random[path] = (na, nb)
    extended = {p: n for p, n in n_random.items() if any(n)}
    if extended:
        warnings.warn(
            f"k = {k} exceeds the rank of the centred samples; trailing random orthonormal components "
            f"per module (A, B): {extended}",
            stacklevel=2,
        )
    return Basis(c_a, c_b, rho_a, rho_b, FrozenDict(signature), rank, unwind, FrozenDict(n_random))


def choose_k(source: Sequence[Adapter] | Basis, threshold: float, *, unwind: bool = False) -> int:
    """Smallest K whose explained variance reaches `threshold` (e.g. 0.9) for A and B of every module.

    From a Basis this reads its stored rho, which covers every available K (the answer may exceed `basis.k`:
    refit then).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if isinstance(source, Basis):
        rhos = [np.asarray(r) for r in (*source.rho_A.values(), *source.rho_B.values())]
    else:
        signature, _ = _check_adapters(source)
        rhos = [_centred_svd(m, path)[2] for path in signature for m in _samples(source, path, unwind)]
    # A module whose samples run out before K has already explained everything (rho = 1 from there on); the
    # slack absorbs float32 round-off of a stored rho (0.9 reads back as 0.89999998).
    return max(int(np.argmax(rho >= threshold - 1e-7)) + 1 for rho in rhos)


def augment(basis: Basis, n_random: int, *, seed: int) -> Basis:
    """Append n_random random orthonormal directions to every C_A and C_B (draw U[0,1), QR of [C | R]).

    The original columns are kept as they are, so the span only grows; the new loadings rows start random
    and are trained.
    """
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}")
    for p in basis.modules:
        for side, c in (("C_A", basis.C_A[p]), ("C_B", basis.C_B[p])):
            if c.shape[1] + n_random > c.shape[0]:
                raise ValueError(
                    f"{p}: cannot have {c.shape[1] + n_random} orthonormal {side} components in "
                    f"dimension {c.shape[0]}"
                )
    rng = np.random.default_rng(seed)
    c_a, c_b, counts = {}, {}, {}
    for p in basis.modules:
        c_a[p] = _f32(_orthonormal_extension(np.asarray(basis.C_A[p], np.float64), n_random, rng))
        c_b[p] = _f32(_orthonormal_extension(np.asarray(basis.C_B[p], np.float64), n_random, rng))
        na, nb = basis.n_random.get(p, (0, 0))
        counts[p] = (na + n_random, nb + n_random)
    return dataclasses.replace(basis, C_A=c_a, C_B=c_b, n_random=FrozenDict(counts))


def _f32(x: ArrayLike) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


# ----------------------------------------------------------------------------------------------- loadings


def project(basis: Basis, adapter: Adapter) -> Loadings:
    """Zero-shot loadings of a known adapter: alpha_A = C_A^T A, alpha_B = C_B^T B^T (no mean term).

    The adapter's LoRA scale must already be folded into B. Unwind basis: alpha = C^T vec(factor), (K, 1).
    """
    basis.check_signature(adapter_signature(adapter), "adapter")
    rank = _adapter_rank(adapter)
    if basis.unwind and rank != basis.rank:
        raise ValueError(f"an unwind basis is for rank {basis.rank} adapters, got rank {rank}")
    alpha_a, alpha_b = {}, {}
    for p in basis.modules:
        a, b = _f32(adapter[p][0]), _f32(adapter[p][1])
        if basis.unwind:
            a, b = a.reshape(-1, 1), b.reshape(-1, 1)
        else:
            b = b.T  # B's rank vectors are its rows
        alpha_a[p] = jnp.matmul(basis.C_A[p].T, a, precision=_HIGHEST)
        alpha_b[p] = jnp.matmul(basis.C_B[p].T, b, precision=_HIGHEST)
    return Loadings(alpha_a, alpha_b)


def reconstruct(basis: Basis, loadings: Loadings) -> dict[str, tuple[jax.Array, jax.Array]]:
    """The adapter of the loadings: A_hat = C_A alpha_A (d_in, r), B_hat = (C_B alpha_B)^T (r, d_out)."""
    _check_loadings(basis, loadings)
    return {
        p: lora_factors(
            basis.C_A[p],
            basis.C_B[p],
            loadings.alpha_A[p],
            loadings.alpha_B[p],
            unwind_shape=(*basis.model_signature[p], basis.rank) if basis.unwind else None,
        )
        for p in basis.modules
    }


def lora_factors(
    C_A: ArrayLike,
    C_B: ArrayLike,
    alpha_A: ArrayLike,
    alpha_B: ArrayLike,
    *,
    unwind_shape: tuple[int, int, int] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Materialise (A_hat, B_hat) of one module; unwind_shape = (d_in, d_out, r) for an unwind basis."""
    a_hat = jnp.matmul(C_A, alpha_A, precision=_HIGHEST)
    b_hat = jnp.matmul(C_B, alpha_B, precision=_HIGHEST)
    if unwind_shape is None:
        return a_hat, b_hat.T
    d_in, d_out, r = unwind_shape
    return a_hat.reshape(d_in, r), b_hat.reshape(r, d_out)


def init_loadings(basis: Basis, rank: int, *, seed: int, scale: float = 0.5) -> Loadings:
    """Fresh loadings for a new task, U(-scale, scale) (the reference's default: U(-0.5, 0.5)).

    For an unwind basis `rank` must be the basis's rank and the loadings are (K, 1).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if basis.unwind and rank != basis.rank:
        raise ValueError(f"an unwind basis is for rank {basis.rank}, got rank {rank}")
    cols = 1 if basis.unwind else rank
    keys = iter(jax.random.split(jax.random.key(seed), 2 * len(basis.modules)))
    alpha_a, alpha_b = {}, {}
    for p in basis.modules:
        alpha_a[p] = jax.random.uniform(next(keys), (basis.C_A[p].shape[1], cols), jnp.float32, -scale, scale)
        alpha_b[p] = jax.random.uniform(next(keys), (basis.C_B[p].shape[1], cols), jnp.float32, -scale, scale)
    return Loadings(alpha_a, alpha_b)


# ----------------------------------------------------------------------------------------------- forward


def eigenlora_delta(
    x: jax.Array, C_A: jax.Array, C_B: jax.Array, alpha_A: jax.Array, alpha_B: jax.Array
) -> jax.Array:
    """delta(x) = (x C_A alpha_A)(C_B alpha_B)^T for x (..., d_in); returns (..., d_out) in x's dtype.

    B_hat = alpha_B^T C_B^T is formed once (r K d_out flops, independent of the token count). On the A side
    the per-token cost is d_in min(K, r): with K < r project first, (x C_A) alpha_A; otherwise fold the
    loadings into A_hat = C_A alpha_A once and do x A_hat (the usual K >= r case; K=32, r=8: 4x fewer flops
    on x).
    """
    d_in, k_a = C_A.shape
    r = alpha_A.shape[1]
    if x.shape[-1] != d_in or alpha_A.shape[0] != k_a or alpha_B.shape != (C_B.shape[1], r):
        raise ValueError(
            f"shape mismatch: x {x.shape}, C_A {C_A.shape}, C_B {C_B.shape}, "
            f"alpha_A {alpha_A.shape}, alpha_B {alpha_B.shape} (expected alpha (K, r))"
        )
    dtype = x.dtype
    b_hat_rxo = (C_B @ alpha_B).T.astype(dtype)
    if k_a < r:
        h = (x @ C_A.astype(dtype)) @ alpha_A.astype(dtype)
    else:
        h = x @ (C_A @ alpha_A).astype(dtype)
    return h @ b_hat_rxo


def serve_delta(
    x_BxLxD: jax.Array,
    task_ids_B: jax.Array,
    C_A: jax.Array,
    C_B: jax.Array,
    alpha_A_TxKxr: jax.Array,
    alpha_B_TxKxr: jax.Array,
) -> jax.Array:
    """Deltas for a batch mixing tasks, row b using task task_ids_B[b]: x (B, ..., D) -> (B, ..., d_out).

    z = x C_A is one dense matmul shared by all rows; each row then gathers only its task's (K, r) loadings
    for two tiny batched matmuls; C_B^T is again shared. Ids >= T give NaN rows (a visible error, not a
    silent clamp); negative ids count from the end, as in numpy.
    """
    t, k_a, r = alpha_A_TxKxr.shape
    if (
        x_BxLxD.shape[-1] != C_A.shape[0]
        or C_A.shape[1] != k_a
        or alpha_B_TxKxr.shape != (t, C_B.shape[1], r)
        or task_ids_B.shape != x_BxLxD.shape[:1]
    ):
        raise ValueError(
            f"shape mismatch: x {x_BxLxD.shape}, task_ids {task_ids_B.shape}, C_A {C_A.shape}, "
            f"C_B {C_B.shape}, alpha_A {alpha_A_TxKxr.shape}, alpha_B {alpha_B_TxKxr.shape} "
            "(expected (T, K, r) loadings and one task id per row)"
        )
    dtype = x_BxLxD.dtype
    gather = dict(axis=0, mode="fill", fill_value=jnp.nan)
    a_BxKxR = jnp.take(alpha_A_TxKxr, task_ids_B, **gather).astype(dtype)
    b_BxKxR = jnp.take(alpha_B_TxKxr, task_ids_B, **gather).astype(dtype)
    z_BxLxK = x_BxLxD @ C_A.astype(dtype)
    h_BxLxR = jnp.einsum("b...k,bkr->b...r", z_BxLxK, a_BxKxR)
    u_BxLxK = jnp.einsum("b...r,bkr->b...k", h_BxLxR, b_BxKxR)
    return u_BxLxK @ C_B.T.astype(dtype)


class Frozen(nnx.Variable):
    """A fixed EigenLoRAx component matrix: not an nnx.Param, so optimizers over nnx.Param never see it."""


def _frozen(value: ArrayLike, axes: tuple[str | None, ...]) -> Frozen:
    return Frozen(_f32(value), **{AXES_KEY: axes}, eager_sharding=False)


class EigenLoRA(nnx.Module):
    """One module's delta: frozen C_A, C_B (Frozen) and trainable loadings alpha_A, alpha_B (nnx.Param).

    Pure delta: `__call__(x)` returns (x A_hat) B_hat for x (..., d_in); the wrapper adds it to the frozen
    base map. `axes` are the logical names of (d_in, d_out), to shard the components like the base map.
    """

    def __init__(
        self,
        C_A: ArrayLike,
        C_B: ArrayLike,
        rank: int,
        *,
        rngs: nnx.Rngs | None = None,
        loadings: tuple[ArrayLike, ArrayLike] | None = None,
        unwind_shape: tuple[int, int] | None = None,
        axes: tuple[str | None, str | None] = (None, None),
        init_scale: float = 0.5,
    ):
        """unwind_shape = (d_in, d_out) selects the unwind ablation (C_A (d_in r, K), loadings (K, 1)).

        Loadings start U(-init_scale, init_scale) from `rngs`, or from `loadings` = (alpha_A, alpha_B) to
        warm-start (e.g. from `project`).
        """
        self.rank = rank
        self.unwind_shape = unwind_shape
        cols = 1 if unwind_shape else rank
        if unwind_shape:
            d_in, d_out = unwind_shape
            if C_A.shape[0] != d_in * rank or C_B.shape[0] != rank * d_out:
                raise ValueError(
                    f"unwind components {C_A.shape}, {C_B.shape} do not fit (d_in, d_out, r) = "
                    f"{(d_in, d_out, rank)}"
                )
            axes_a, axes_b = (None, None), (None, None)
        else:
            axes_a, axes_b = (axes[0], None), (axes[1], None)
        k_a, k_b = C_A.shape[1], C_B.shape[1]
        if loadings is None:
            if rngs is None:
                raise ValueError("EigenLoRA needs rngs (random loadings) or loadings=(alpha_A, alpha_B)")
            alpha_a = jax.random.uniform(rngs.params(), (k_a, cols), jnp.float32, -init_scale, init_scale)
            alpha_b = jax.random.uniform(rngs.params(), (k_b, cols), jnp.float32, -init_scale, init_scale)
        else:
            alpha_a, alpha_b = map(_f32, loadings)
            if alpha_a.shape != (k_a, cols) or alpha_b.shape != (k_b, cols):
                raise ValueError(
                    f"loadings of shapes {alpha_a.shape}, {alpha_b.shape}; expected "
                    f"{(k_a, cols)} and {(k_b, cols)}"
                )
        self.C_A = _frozen(C_A, axes_a)
        self.C_B = _frozen(C_B, axes_b)
        self.alpha_A = param(alpha_a, (None, None))  # tiny: replicated
        self.alpha_B = param(alpha_b, (None, None))

    @classmethod
    def from_basis(
        cls,
        basis: Basis,
        path: str,
        rank: int,
        *,
        rngs: nnx.Rngs | None = None,
        loadings: Loadings | None = None,
        axes: tuple[str | None, str | None] = (None, None),
        init_scale: float = 0.5,
    ) -> EigenLoRA:
        """The module for `path` of `basis`, optionally warm-started from a task's `loadings`."""
        if path not in basis.C_A:
            raise ValueError(f"module {path!r} is not in the basis (modules: {list(basis.modules)})")
        if basis.unwind and rank != basis.rank:
            raise ValueError(f"an unwind basis is for rank {basis.rank}, got rank {rank}")
        pair = None
        if loadings is not None:
            _check_loadings(basis, loadings)
            pair = (loadings.alpha_A[path], loadings.alpha_B[path])
        return cls(
            basis.C_A[path],
            basis.C_B[path],
            rank,
            rngs=rngs,
            loadings=pair,
            axes=axes,
            init_scale=init_scale,
            unwind_shape=tuple(basis.model_signature[path]) if basis.unwind else None,
        )

    def factors(self) -> tuple[jax.Array, jax.Array]:
        """(A_hat (d_in, r), B_hat (r, d_out)): the plain LoRA factors this module currently represents."""
        unwind_shape = (*self.unwind_shape, self.rank) if self.unwind_shape else None
        return lora_factors(
            self.C_A[...], self.C_B[...], self.alpha_A[...], self.alpha_B[...], unwind_shape=unwind_shape
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.unwind_shape:
            # components are whole factors: materialise them (d_in K r flops, once per call)
            a_hat, b_hat = self.factors()
            return (x @ a_hat.astype(x.dtype)) @ b_hat.astype(x.dtype)
        return eigenlora_delta(x, self.C_A[...], self.C_B[...], self.alpha_A[...], self.alpha_B[...])


class MultiTaskEigenLoRA(nnx.Module):
    """One module's shared basis plus T tasks' loadings (nnx.Param, (T, K, r)); each batch row has a task."""

    def __init__(
        self,
        C_A: ArrayLike,
        C_B: ArrayLike,
        alpha_A_TxKxr: ArrayLike,
        alpha_B_TxKxr: ArrayLike,
        *,
        axes: tuple[str | None, str | None] = (None, None),
    ):
        t, k_a, r = alpha_A_TxKxr.shape
        if C_A.shape[1] != k_a or alpha_B_TxKxr.shape != (t, C_B.shape[1], r):
            raise ValueError(
                f"loadings {alpha_A_TxKxr.shape}, {alpha_B_TxKxr.shape} do not fit components "
                f"{C_A.shape}, {C_B.shape} (expected (T, K, r) each)"
            )
        self.C_A = _frozen(C_A, (axes[0], None))
        self.C_B = _frozen(C_B, (axes[1], None))
        self.alpha_A = param(_f32(alpha_A_TxKxr), (None, None, None))
        self.alpha_B = param(_f32(alpha_B_TxKxr), (None, None, None))

    @classmethod
    def from_basis(
        cls,
        basis: Basis,
        path: str,
        tasks: Sequence[Loadings],
        *,
        axes: tuple[str | None, str | None] = (None, None),
    ) -> MultiTaskEigenLoRA:
        """Stack the loadings of `tasks` (task id = position in the list) for module `path`."""
        if basis.unwind:
            raise ValueError(
                "multi-task serving shares z = x C_A across rows, which needs a rank-vector basis, "
                "not an unwind one"
            )
        if path not in basis.C_A:
            raise ValueError(f"module {path!r} is not in the basis (modules: {list(basis.modules)})")
        if not tasks:
            raise ValueError("need at least one task's loadings")
        ranks = {_check_loadings(basis, task) for task in tasks}
        if len(ranks) != 1:
            raise ValueError(f"all tasks must share one rank to be stacked, got {sorted(ranks)}")
        alpha_a = jnp.stack([task.alpha_A[path] for task in tasks])
        alpha_b = jnp.stack([task.alpha_B[path] for task in tasks])
        return cls(basis.C_A[path], basis.C_B[path], alpha_a, alpha_b, axes=axes)

    def __call__(self, x_BxLxD: jax.Array, task_ids_B: jax.Array) -> jax.Array:
        return serve_delta(
            x_BxLxD, task_ids_B, self.C_A[...], self.C_B[...], self.alpha_A[...], self.alpha_B[...]
        )


# ----------------------------------------------------------------------------------------------- files


def save_basis(path: str | PathLike, basis: Basis) -> None:
    """safetensors: tensors "C_A/<module>", "C_B/<module>"; JSON header metadata under key "eigenlorax"."""
    tensors = {}
    for p in basis.modules:
        tensors[f"C_A/{p}"] = np.ascontiguousarray(np.asarray(basis.C_A[p], np.float32))
        tensors[f"C_B/{p}"] = np.ascontiguousarray(np.asarray(basis.C_B[p], np.float32))
    header = {
        "format": "eigenlorax.basis",
        "version": _FORMAT_VERSION,
        "modules": list(basis.modules),
        "K": basis.k,
        "rank": basis.rank,
        "unwind": basis.unwind,
        "model_signature": {p: list(s) for p, s in basis.model_signature.items()},
        "n_random": {p: list(n) for p, n in basis.n_random.items()},
        # float32 -> Python float -> JSON is exact, so the arrays round-trip bit for bit
        "explained_variance": {
            p: {"A": _floats(basis.rho_A[p]), "B": _floats(basis.rho_B[p])} for p in basis.modules
        },
    }
    save_file(tensors, str(path), metadata={_HEADER_KEY: json.dumps(header)})


def load_basis(path: str | PathLike) -> Basis:
    header, tensors = _read(path, "eigenlorax.basis")
    modules = header["modules"]
    rho = header["explained_variance"]
    return Basis(
        C_A={p: tensors[f"C_A/{p}"] for p in modules},
        C_B={p: tensors[f"C_B/{p}"] for p in modules},
        rho_A={p: _f32(np.asarray(rho[p]["A"], np.float32)) for p in modules},
        rho_B={p: _f32(np.asarray(rho[p]["B"], np.float32)) for p in modules},
        model_signature=FrozenDict({p: tuple(header["model_signature"][p]) for p in modules}),
        rank=header["rank"],
        unwind=header["unwind"],
        n_random=FrozenDict({p: tuple(n) for p, n in header["n_random"].items()}),
    )


def save_loadings(path: str | PathLike, loadings: Loadings, meta: Mapping[str, Any] | None = None) -> None:
    """safetensors: tensors "alpha_A/<module>", "alpha_B/<module>"; header JSON: modules, K, rank, `meta`.

    `meta` is any JSON-serialisable dict (task name, basis file, ...); `load_loadings` gives it back.
    """
    tensors = {}
    for p in loadings.modules:
        tensors[f"alpha_A/{p}"] = np.ascontiguousarray(np.asarray(loadings.alpha_A[p], np.float32))
        tensors[f"alpha_B/{p}"] = np.ascontiguousarray(np.asarray(loadings.alpha_B[p], np.float32))
    first = next(iter(loadings.alpha_A.values()))
    header = {
        "format": "eigenlorax.loadings",
        "version": _FORMAT_VERSION,
        "modules": list(loadings.modules),
        "K": first.shape[0],
        "rank": first.shape[1],
        "meta": dict(meta or {}),
    }
    save_file(tensors, str(path), metadata={_HEADER_KEY: json.dumps(header)})


def load_loadings(path: str | PathLike) -> tuple[Loadings, dict[str, Any]]:
    """(loadings, meta) as saved by `save_loadings`."""
    header, tensors = _read(path, "eigenlorax.loadings")
    modules = header["modules"]
    loadings = Loadings(
        {p: tensors[f"alpha_A/{p}"] for p in modules}, {p: tensors[f"alpha_B/{p}"] for p in modules}
    )
    return loadings, header["meta"]


def _floats(x: jax.Array) -> list[float]:
    return [float(v) for v in np.asarray(x, np.float32)]


def _read(path: str | PathLike, expected_format: str) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    with safe_open(str(path), framework="numpy") as f:
        raw = (f.metadata() or {}).get(_HEADER_KEY)
        if raw is None:
            raise ValueError(f"{path}: not an EigenLoRAx file (no {_HEADER_KEY!r} header metadata)")
        header = json.loads(raw)
        if header.get("format") != expected_format:
            raise ValueError(f"{path}: holds {header.get('format')!r}, expected {expected_format!r}")
        if header.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"{path}: format version {header.get('version')}, this code reads {_FORMAT_VERSION}"
            )
        tensors = {name: _f32(f.get_tensor(name)) for name in f.keys()}
    return header, tensors


# ----------------------------------------------------------------------------------------------- memory


def serving_bytes(basis: Basis, n_tasks: int, rank: int, *, bytes_per_value: int = 4) -> int:
    """Bytes to serve n_tasks from one basis: each C_A, C_B once, plus 2 K r loadings per task and module."""
    cols = 1 if basis.unwind else rank
    shared = sum(basis.C_A[p].size + basis.C_B[p].size for p in basis.modules)
    per_task = sum((basis.C_A[p].shape[1] + basis.C_B[p].shape[1]) * cols for p in basis.modules)
    return (shared + n_tasks * per_task) * bytes_per_value


def lora_serving_bytes(signature: Signature, n_tasks: int, rank: int, *, bytes_per_value: int = 4) -> int:
    """Bytes to serve n_tasks full rank-r LoRAs: (d_in + d_out) r values per module per task."""
    return n_tasks * sum((d_in + d_out) * rank for d_in, d_out in signature.values()) * bytes_per_value
