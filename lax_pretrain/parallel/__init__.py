"""Meshes, the logical-axis rules table, and shardings of parameters and batches."""

from lax_pretrain.parallel.mesh import MESH_AXES, make_mesh, mesh_shape
from lax_pretrain.parallel.rules import DEFAULT_RULES, batch_sharding, batch_shardings, logical_to_spec, rules_from_config, state_shardings

__all__ = ["DEFAULT_RULES", "MESH_AXES", "batch_sharding", "batch_shardings", "logical_to_spec", "make_mesh", "mesh_shape",
           "rules_from_config", "state_shardings"]
