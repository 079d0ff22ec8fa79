"""The one place that spells version-sensitive Flax NNX APIs.

Flax renamed the sharding metadata key twice (`sharding` -> `sharding_names` -> `out_sharding`) and made
variables shard themselves eagerly when a mesh is active. We keep logical axis names as metadata and apply
shardings ourselves (lax_pretrain.parallel), so eager sharding is switched off per variable.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

AXES_KEY = "out_sharding"


def param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
    """A trainable parameter carrying logical axis names (one per dimension)."""
    if len(axes) != value.ndim:
        raise ValueError(f"axes {tuple(axes)} do not match a parameter of shape {value.shape}")
    return nnx.Param(value, **{AXES_KEY: tuple(axes)}, eager_sharding=False)


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """Logical axis names of a variable (None if it was created without them)."""
    return variable.get_metadata().get(AXES_KEY)


def set_train_mode(module: nnx.Module, train: bool) -> None:
    """Dropout on (train) or off everywhere below `module`, as a module attribute: scan and remat then see no
    Python bool to trace."""
    module.set_attributes(nnx.Dropout, deterministic=not train, raise_if_not_found=False)
