"""Dense -> low-rank initialisation: factorize every projection of an (imported) dense LLaMA.

    model, model_config, report = to_low_rank(dense_model, model_config, kind="svd", rank=64)
    report[(block, "q")]  # ||W - W_hat||_F / ||W||_F of that projection

svd  truncated SVD W = U S V^T; down = U_r sqrt(S_r), up = sqrt(S_r) V_r^T (the scale split evenly, so
     neither factor starts orders of magnitude larger than the other). The rank is capped per projection at
     min(d_in, d_out): at that rank the factorization is exact.
tt   the same split at the latent bond (rank r_p, the optimal rank-r_p approximation), then each half is a
     TT-SVD of its own: the input half L (d_in, r_p), reshaped to (n_1, .., n_p, r_p), swept left to right
     (left-orthogonal cores), the output half R (r_p, d_out), reshaped to (r_p, m_1, .., m_q), right to left.
     Modes are input then output, row-major, as in lax_pretrain/layers/tt.py. Shapes default to
     `lax_pretrain.config.tt_shape(d_in, d_out, rank)` (outer ranks maximal, latent bond `rank`).
     A bond wider than the rank its unfolding has (e.g. 172 = 4 x 43 out modes behind a latent of 8) is
     padded without changing the product, in a way that leaves it trainable (see `split_svd`).

Embedding, head and norms are copied unchanged. CoLA is not offered: its latent activation is nonlinear, so no
factorization reproduces a dense layer. LaX crossing is left off ('none'): crossed latents and the latent
norm change the function, so set `linear.crossing` afterwards if the run should cross from scratch.
All decompositions run in float64 numpy; the factors are stored in the model's parameter dtype and the
report measures what is stored.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from lax_pretrain.convert.representable import check_linear
from lax_pretrain.convert.weights import (
    dense_params,
    model_from_params,
    module_of,
    norm_paths,
    top_paths,
)
from lax_pretrain.layers import tt_shape, validate
from lax_pretrain.models.llama import PROJECTIONS, Llama
from lax_pretrain.models.projections import dtype_of, projection_spec

KINDS = ("svd", "tt")
TTShape = tuple[Sequence[int], Sequence[int], Sequence[int]]  # (in modes, out modes, ranks with the 1s)


def split_svd(w_MxN: np.ndarray, rank: int, *, balanced: bool) -> tuple[np.ndarray, np.ndarray]:
    """Truncated SVD w ~ left @ right with exactly `rank` columns / rows.

    balanced: left = U sqrt(S), right = sqrt(S) V^T; else left = U (orthonormal columns), right = S V^T.
    Past the matrix's rank the product stays exact with zero rows in `right`; `left` gets small random
    columns there, so those bonds can still learn (two zero sides would never receive a gradient).
    """
    u, s, vt = np.linalg.svd(w_MxN, full_matrices=False)
    kept = min(rank, s.size)
    root = np.sqrt(s[:kept])
    left_scale, right_scale = (root, root) if balanced else (np.ones(kept), s[:kept])
    left = np.zeros((w_MxN.shape[0], rank))
    right = np.zeros((rank, w_MxN.shape[1]))
    left[:, :kept] = u[:, :kept] * left_scale
    right[:kept] = right_scale[:, None] * vt[:kept]
    if kept < rank:
        rms = np.sqrt(np.mean(left[:, :kept] ** 2)) if kept else 1.0
        left[:, kept:] = 1e-3 * rms * np.random.default_rng(0).standard_normal((left.shape[0], rank - kept))
    return left, right


def _left_sweep(t: np.ndarray, modes: Sequence[int], ranks: Sequence[int]) -> list[np.ndarray]:
    """TT-SVD of t (ranks[0], *modes, ranks[-1]) left to right: cores (ranks[k], modes[k], ranks[k+1]),
    all left-orthogonal but the last, which keeps the remainder."""
    cores, rest = [], t.reshape(ranks[0], -1)
    for k, mode in enumerate(modes[:-1]):
        core, rest = split_svd(rest.reshape(ranks[k] * mode, -1), ranks[k + 1], balanced=False)
        cores.append(core.reshape(ranks[k], mode, ranks[k + 1]))
    cores.append(rest.reshape(ranks[-2], modes[-1], ranks[-1]))
    return cores


def tt_decompose(
    w_IxO: np.ndarray, in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int]
) -> list[np.ndarray]:
    """TT cores (r_{k-1}, s_k, r_k) of w (d_in, d_out) for the given modes and ranks (with the outer 1s)."""
    p = len(in_modes)
    left, right = split_svd(w_IxO, ranks[p], balanced=True)
    in_cores = _left_sweep(left, in_modes, ranks[: p + 1])
    # The output half swept from its far end: reverse its modes, sweep left to right, flip every core back.
    right_rev = right.reshape(ranks[p], *out_modes).transpose(tuple(range(len(out_modes), -1, -1)))
    rev_cores = _left_sweep(right_rev, out_modes[::-1], ranks[p:][::-1])
    return in_cores + [c.transpose(2, 1, 0) for c in rev_cores[::-1]]


def tt_full(cores: Sequence[np.ndarray], d_in: int) -> np.ndarray:
    """The (d_in, d_out) matrix of TT cores (input modes first, row-major)."""
    out = cores[0]
    for core in cores[1:]:
        out = np.tensordot(out, core, axes=([-1], [0]))
    return out.reshape(d_in, -1)


def relative_error(w: np.ndarray, w_hat: np.ndarray) -> float:
    """||w - w_hat||_F / ||w||_F in float64."""
    w = np.asarray(w, np.float64)
    return float(np.linalg.norm(w - np.asarray(w_hat, np.float64)) / np.linalg.norm(w))


def low_rank_overrides(
    kind: str,
    rank: int,
    shapes: Mapping[str, tuple[int, int]],
    tt_shapes: Mapping[str, TTShape] | None = None,
) -> dict[str, dict]:
    """`model.proj` for the target kind, as `llama_config` writes it, with the real projection shapes
    (grouped-query k/v and head_dim make them differ from the presets' d x d)."""
    proj = {}
    for name, (d_in, d_out) in shapes.items():
        if kind == "svd":
            proj[name] = {"rank": min(rank, d_in, d_out)}
        else:
            in_modes, out_modes, ranks = (tt_shapes or {}).get(name) or tt_shape(d_in, d_out, rank)
            proj[name] = {
                "tt_in_modes": list(in_modes),
                "tt_out_modes": list(out_modes),
                "tt_ranks": list(ranks),
                "intra": False,
            }
    return proj


def low_rank_config(model_cfg: Any, kind: str, proj: Mapping[str, dict]) -> ml_collections.ConfigDict:
    cfg = copy.deepcopy(model_cfg)
    cfg.linear.kind = kind
    cfg.linear.rank = None
    cfg.linear.crossing = "none"  # see the module docstring
    cfg.linear.intra = False
    cfg.linear.intra_gate = False
    cfg.linear.latent_act = None
    cfg.proj = dict(proj)
    return cfg


def _factorize(w: np.ndarray, spec: Any, dtype: Any) -> tuple[dict, np.ndarray]:
    """({sub-path: factor} in the parameter dtype, the float64 matrix those stored factors represent)."""
    w64 = np.asarray(w, np.float64)
    if spec.kind == "svd":
        down, up = (f.astype(dtype) for f in split_svd(w64, spec.rank, balanced=True))
        return {("down",): down, ("up",): up}, down.astype(np.float64) @ up.astype(np.float64)
    cores = [c.astype(dtype) for c in tt_decompose(w64, spec.tt_in_modes, spec.tt_out_modes, spec.tt_ranks)]
    w_hat = tt_full([c.astype(np.float64) for c in cores], w.shape[0])
    return {("cores", k): c for k, c in enumerate(cores)}, w_hat


def to_low_rank(
    dense_model: Llama,
    model_config: Any,
    kind: str = "svd",
    rank: int = 64,
    tt_shapes: Mapping[str, TTShape] | None = None,
) -> tuple[Llama, ml_collections.ConfigDict, dict[tuple[int, str], float]]:
    """(low-rank model, its config.model, {(block, projection): relative Frobenius error}).

    kind: 'svd' | 'tt'; rank: svd rank (capped per projection at min(d_in, d_out)), or the latent (middle)
    TT rank of the default shapes;
    tt_shapes: projection name -> (in modes, out modes, ranks) overriding `tt_shape` (e.g. the official
    ViT-style shapes, or uncapped ranks for an exact TT). The source may be any linear model (dense, svd, tt).
    """
    if kind not in KINDS:
        why = (
            " (CoLA's latent activation is nonlinear: no factorization reproduces a dense layer)"
            if kind == "cola"
            else ""
        )
        raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}{why}")
    if rank < 1:
        raise ValueError(f"rank={rank} must be >= 1")
    unknown = sorted(set(tt_shapes or {}) - set(PROJECTIONS))
    if unknown:
        raise ValueError(f"tt_shapes has no projection {unknown[0]!r}; known: {', '.join(PROJECTIONS)}")
    check_linear(model_config)
    top, blocks = dense_params(dense_model)
    shapes = {name: blocks[0][name].shape for name in PROJECTIONS}
    cfg = low_rank_config(model_config, kind, low_rank_overrides(kind, rank, shapes, tt_shapes))
    # Validate every spec before any decomposition: a bad tt_shapes entry fails naming model.proj.<name>.
    specs = {
        n: validate(projection_spec(cfg, n, first=False), *shapes[n], where=f"model.proj.{n}")
        for n in PROJECTIONS
    }
    dtype = np.dtype(dtype_of(cfg.param_dtype, "model.param_dtype"))
    report, block_params = {}, []
    for i, weights in enumerate(blocks):
        params = norm_paths(weights)
        for name in PROJECTIONS:
            factors, w_hat = _factorize(weights[name], specs[name], dtype)
            params.update({(module_of(name), name, *sub): value for sub, value in factors.items()})
            report[(i, name)] = relative_error(weights[name], w_hat)
        block_params.append(params)
    model = model_from_params(cfg, top_paths(top), block_params)
    return model, cfg, report
