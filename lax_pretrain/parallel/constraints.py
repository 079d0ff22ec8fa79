"""Activation shardings: the rules table and TP implementation in force while a step is traced, and
`constrain(x, logical_names)`, the one helper models use to pin an activation's layout.

    with sharding_context(mesh, rules, tp_impl="auto"):   # jax.set_mesh + our rules + TP implementation
        step(...)                                         # traced here: constraints and TP hooks see them

Outside a mesh (unit tests, `nnx.eval_shape`) every constraint is a no-op, so models stay mesh-agnostic.
The residual stream is pinned to (batch, None, embed): with the default rules that is batch over
(data, fsdp) and replicated over tensor (embed's fsdp axis is already taken by batch), the Megatron layout.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, PartitionSpec

from lax_pretrain.parallel.rules import DEFAULT_RULES, MeshAxes, logical_to_spec

TP_IMPLS = ("auto", "shard_map")
RESIDUAL = ("batch", None, "embed")  # (B, L, D) residual stream / (B, P, D) ViT tokens

_RULES: contextvars.ContextVar[dict[str, MeshAxes] | None] = contextvars.ContextVar("lax_rules", default=None)
_TP_IMPL: contextvars.ContextVar[str] = contextvars.ContextVar("lax_tp_impl", default="auto")


def check_tp_impl(tp_impl: str) -> str:
    if tp_impl not in TP_IMPLS:
        raise ValueError(f"parallel.tp_impl={tp_impl!r} is not one of {', '.join(TP_IMPLS)}")
    return tp_impl


@contextlib.contextmanager
def sharding_context(
    mesh: Mesh | None, rules: dict[str, MeshAxes] | None = None, tp_impl: str = "auto"
) -> Iterator[None]:
    """`jax.set_mesh(mesh)` (skipped for None) plus the rules and TP implementation read at trace time."""
    rules_token = _RULES.set(dict(rules) if rules is not None else None)
    tp_token = _TP_IMPL.set(check_tp_impl(tp_impl))
    try:
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            yield
    finally:
        _TP_IMPL.reset(tp_token)
        _RULES.reset(rules_token)


def current_rules() -> dict[str, MeshAxes]:
    rules = _RULES.get()
    return DEFAULT_RULES if rules is None else rules


def current_tp_impl() -> str:
    return _TP_IMPL.get()


def active_mesh() -> Any | None:
    """The abstract mesh being traced under, or None (no mesh, or a single device)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    return mesh


def auto_axes(mesh: Any) -> dict[str, int]:
    """Mesh axes that GSPMD partitions here (manual axes of an enclosing shard_map excluded)."""
    return {
        name: size
        for name, size, kind in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types)
        if kind != AxisType.Manual
    }


def spec_for(names: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec | None:
    """The PartitionSpec the current rules give an activation, or None when no mesh is active."""
    mesh = active_mesh()
    if mesh is None:
        return None
    return logical_to_spec(names, shape, auto_axes(mesh), current_rules())


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical axis names (one per dimension); a no-op without a mesh."""
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} axis names {tuple(names)} for an array of shape {x.shape}")
    spec = spec_for(names, x.shape)
    return x if spec is None else jax.lax.with_sharding_constraint(x, spec)
