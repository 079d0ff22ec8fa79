"""Meshes, the logical-axis rules table, shardings of parameters, batches and activations, tensor parallelism
of the factorized layers (GSPMD or shard_map), multi-host start-up and collective accounting."""

from lax_pretrain.parallel.constraints import RESIDUAL, TP_IMPLS, constrain, sharding_context
from lax_pretrain.parallel.mesh import (
    DCN_KEYS,
    MESH_AXES,
    MeshSizes,
    make_mesh,
    mesh_devices,
    mesh_shape,
    mesh_sizes,
    num_slices,
    process_indices,
)
from lax_pretrain.parallel.rules import (
    DEFAULT_RULES,
    batch_sharding,
    check_process_rows,
    logical_to_spec,
    place_values,
    rules_from_config,
    sharded_init,
    state_shardings,
)

__all__ = [
    "DCN_KEYS",
    "DEFAULT_RULES",
    "MESH_AXES",
    "MeshSizes",
    "RESIDUAL",
    "TP_IMPLS",
    "batch_sharding",
    "check_process_rows",
    "constrain",
    "logical_to_spec",
    "make_mesh",
    "mesh_devices",
    "mesh_shape",
    "mesh_sizes",
    "num_slices",
    "place_values",
    "process_indices",
    "rules_from_config",
    "sharded_init",
    "sharding_context",
    "state_shardings",
]
