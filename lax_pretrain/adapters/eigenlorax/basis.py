"""The shared EigenLoRAx principal subspace of N saved LoRA adapters, and known adapters in it.

Per module, separately for A and B, the samples are the adapter's rank vectors (the r columns of A, the r rows
of B), stacked over N adapters into M_A (d_in, N r) and M_B (d_out, N r), centred per feature (the mean is not
stored and never added back) and reduced by a thin SVD to the top-K left singular vectors C_A (d_in, K),
C_B (d_out, K). A task is then the loadings alpha_A, alpha_B (K, r):

    A_hat = C_A alpha_A            B_hat = (C_B alpha_B)^T            delta(x) = (x A_hat) B_hat

Known adapters are reconstructed with no data by orthogonal projection (alpha_A = C_A^T A,
alpha_B = C_B^T B^T). Components beyond the data's rank, and `augment`'s extra ones, are random orthonormal
directions.

The `unwind=True` ablation flattens each whole factor into one sample instead (N samples per module): see
`fit_basis`. The basis is fitted offline in float64 numpy; everything returned is float32 jax.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from lax_pretrain.adapters.eigenlorax.loadings import Loadings, check_loadings
from lax_pretrain.adapters.signature import Adapter, ArrayLike, Signature, adapter_signature, check_signature

# Projections and reconstructions are offline and must be exact on GPU/TPU too (no bf16/TF32 passes).
HIGHEST = jax.lax.Precision.HIGHEST


def f32(x: ArrayLike) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


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

    def components(self, path: str) -> tuple[jax.Array, jax.Array]:
        """(C_A, C_B) of module `path`."""
        if path not in self.C_A:
            raise ValueError(f"module {path!r} is not in the basis (modules: {list(self.modules)})")
        return self.C_A[path], self.C_B[path]

    def loading_columns(self, rank: int) -> int:
        """Columns of a rank-`rank` task's (K, cols) loadings: r, or 1 for unwind (whose rank is fixed)."""
        if self.unwind and rank != self.rank:
            raise ValueError(f"an unwind basis is for rank {self.rank}, got rank {rank}")
        return 1 if self.unwind else rank

    def explained_variance(self, k: int) -> dict[str, tuple[float, float]]:
        """rho(k) for A and B per module; k beyond the available samples explains everything there is."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return {p: (_rho_at(self.rho_A[p], k), _rho_at(self.rho_B[p], k)) for p in self.modules}

    def check_signature(self, signature: Signature, what: str = "model") -> None:
        """Raise ValueError unless `signature` (path -> (d_in, d_out)) is exactly the basis's own."""
        check_signature(
            dict(self.model_signature),
            dict(signature),
            f"model signature mismatch: this basis was built for another model than this {what}",
        )


jax.tree_util.register_dataclass(
    Basis,
    data_fields=["C_A", "C_B", "rho_A", "rho_B"],
    meta_fields=["model_signature", "rank", "unwind", "n_random"],
)


def _rho_at(rho: jax.Array, k: int) -> float:
    return float(rho[min(k, rho.shape[0]) - 1])


# ----------------------------------------------------------------------------------------------- validation


def _adapter_rank(adapter: Adapter) -> int:
    ranks = {path: a.shape[1] for path, (a, _) in adapter.items()}
    if len(set(ranks.values())) != 1:
        raise ValueError(f"all modules of an adapter must share one rank, got {ranks}")
    return next(iter(ranks.values()))


def _check_adapters(adapters: Sequence[Adapter]) -> tuple[dict[str, tuple[int, int]], int]:
    """Common signature and rank of a non-empty list of adapters, or a ValueError naming the offender."""
    if len(adapters) == 0:
        raise ValueError("need at least one adapter, got an empty list")
    signature = adapter_signature(adapters[0])
    rank = _adapter_rank(adapters[0])
    for i, adapter in enumerate(adapters[1:], start=1):
        check_signature(signature, adapter_signature(adapter), f"adapter {i} does not match adapter 0")
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


def _centred_svd(m_DxN: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left singular vectors, singular values and cumulative explained variance of the centred samples."""
    mc_DxN = m_DxN - m_DxN.mean(axis=1, keepdims=True)  # per feature: the mean over samples (columns)
    u_DxN, s_N, _ = np.linalg.svd(mc_DxN, full_matrices=False)
    cumulative_N = np.cumsum(s_N**2)
    if cumulative_N[-1] == 0.0:
        raise ValueError(
            f"{what}: the centred samples are all zero (identical samples), there is nothing to fit"
        )
    return u_DxN, s_N, cumulative_N / cumulative_N[-1]  # dividing by the last entry makes rho(full) exactly 1


def _numerical_rank(s_N: np.ndarray, shape: tuple[int, int]) -> int:
    # Adapters are float32 (or narrower), so directions below float32 round-off are not signal.
    return int(np.sum(s_N > s_N[0] * max(shape) * np.finfo(np.float32).eps))


def _orthonormal_extension(c_DxK: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[C | Q_new]: n random directions (U[0,1) then QR of [C | R]) orthonormal to C and to each other."""
    d, k = c_DxK.shape
    if n == 0:
        return c_DxK
    if k + n > d:
        raise ValueError(f"cannot have {k + n} orthonormal components in dimension {d}")
    r_DxN = rng.uniform(0.0, 1.0, size=(d, n))
    q, _ = np.linalg.qr(np.concatenate([c_DxK, r_DxN], axis=1))  # Q's first k columns span C: keep C itself
    return np.concatenate([c_DxK, q[:, k:]], axis=1)


def _principal_components(
    m_DxN: np.ndarray, k: int, rng: np.random.Generator, what: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Top-k components of the centred samples, their rho, and how many trailing ones are random."""
    u_DxN, s_N, rho_N = _centred_svd(m_DxN, what)
    n_signal = min(k, _numerical_rank(s_N, m_DxN.shape))
    # Beyond the rank of the centred samples (<= #samples - 1) the SVD's vectors are arbitrary; say so by
    # replacing them with the same random orthonormal extension `augment` uses.
    return _orthonormal_extension(u_DxN[:, :n_signal], k - n_signal, rng), rho_N, k - n_signal


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
        c_a[path], c_b[path], rho_a[path], rho_b[path] = map(f32, (ca, cb, ra, rb))
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
        c_a[p] = f32(_orthonormal_extension(np.asarray(basis.C_A[p], np.float64), n_random, rng))
        c_b[p] = f32(_orthonormal_extension(np.asarray(basis.C_B[p], np.float64), n_random, rng))
        na, nb = basis.n_random.get(p, (0, 0))
        counts[p] = (na + n_random, nb + n_random)
    return dataclasses.replace(basis, C_A=c_a, C_B=c_b, n_random=FrozenDict(counts))


# ----------------------------------------------------------------------------------------------- known adapters


def project(basis: Basis, adapter: Adapter) -> Loadings:
    """Zero-shot loadings of a known adapter: alpha_A = C_A^T A, alpha_B = C_B^T B^T (no mean term).

    The adapter's LoRA scale must already be folded into B. Unwind basis: alpha = C^T vec(factor), (K, 1).
    """
    basis.check_signature(adapter_signature(adapter), "adapter")
    basis.loading_columns(_adapter_rank(adapter))  # an unwind basis takes adapters of its own rank only
    alpha_a, alpha_b = {}, {}
    for p in basis.modules:
        a, b = f32(adapter[p][0]), f32(adapter[p][1])
        if basis.unwind:
            a, b = a.reshape(-1, 1), b.reshape(-1, 1)
        else:
            b = b.T  # B's rank vectors are its rows
        alpha_a[p] = jnp.matmul(basis.C_A[p].T, a, precision=HIGHEST)
        alpha_b[p] = jnp.matmul(basis.C_B[p].T, b, precision=HIGHEST)
    return Loadings(alpha_a, alpha_b)


def reconstruct(basis: Basis, loadings: Loadings) -> dict[str, tuple[jax.Array, jax.Array]]:
    """The adapter of the loadings: A_hat = C_A alpha_A (d_in, r), B_hat = (C_B alpha_B)^T (r, d_out)."""
    check_loadings(basis, loadings)
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
    a_hat = jnp.matmul(C_A, alpha_A, precision=HIGHEST)
    b_hat = jnp.matmul(C_B, alpha_B, precision=HIGHEST)
    if unwind_shape is None:
        return a_hat, b_hat.T
    d_in, d_out, r = unwind_shape
    return a_hat.reshape(d_in, r), b_hat.reshape(r, d_out)
