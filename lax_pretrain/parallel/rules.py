"""One table maps logical axis names (on every parameter and activation) to mesh axes.

    batch -> (data, fsdp)   embed -> fsdp   mlp, heads, vocab, classes -> tensor   rank, layers, TT -> replicated

`config.parallel.rules` overrides entries as [[name, mesh_axis_or_null], ...]. A dimension that a mesh axis
does not divide stays replicated (e.g. a byte vocabulary of 259 over tensor=4), and a mesh axis is used at most
once per array.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lax_pretrain.nnx_compat import logical_axes

MeshAxes = str | tuple[str, ...] | None

DEFAULT_RULES: dict[str, MeshAxes] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "vocab": "tensor",
    "classes": "tensor",
    "patch": None,
    "rank": None,
    "layers": None,
    "tt_rank": None,
    "tt_mode": None,
}


def rules_from_config(parallel_cfg: Any) -> dict[str, MeshAxes]:
    rules = dict(DEFAULT_RULES)
    for entry in parallel_cfg.get("rules", []) or []:
        if len(entry) != 2:
            raise ValueError(f"parallel.rules entry {entry!r} must be [logical_name, mesh_axis_or_null]")
        name, axes = entry
        rules[name] = tuple(axes) if isinstance(axes, list) else axes
    return rules


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: dict[str, MeshAxes]) -> PartitionSpec:
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for name, size in zip(names, shape):
        axes = rules.get(name) if name is not None else None
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes_t = tuple(a for a in axes_t if a not in used and mesh.shape[a] > 1)
        total = 1
        for a in axes_t:
            total *= mesh.shape[a]
        if not axes_t or size % total:
            spec.append(None)
            continue
        used.update(axes_t)
        spec.append(axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules: dict[str, MeshAxes]) -> nnx.State:
    """A NamedSharding per variable, from its logical axes (replicated where it has none)."""

    def one(variable: nnx.Variable) -> NamedSharding:
        names = logical_axes(variable) or (None,) * variable.ndim
        return NamedSharding(mesh, logical_to_spec(names, variable.shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int, rules: dict[str, MeshAxes]) -> NamedSharding:
    """Leading (batch) dimension over the data axes, the rest replicated."""
    axes = rules["batch"]
    axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes_t = tuple(a for a in axes_t if mesh.shape[a] > 1)
    lead = None if not axes_t else (axes_t[0] if len(axes_t) == 1 else axes_t)
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def batch_shardings(batch: dict, mesh: Mesh, rules: dict[str, MeshAxes]) -> dict[str, NamedSharding]:
    return {k: batch_sharding(mesh, v.ndim, rules) for k, v in batch.items()}
