"""One table maps logical axis names (on every parameter and activation) to mesh axes.

    batch -> (data, fsdp)   embed -> fsdp   mlp, heads, vocab, classes -> tensor   rank, latent, layers, TT -> replicated

`rank` is the latent side of a low-rank factor (down (embed, rank), up (rank, out)); `latent` names the LaX
gate's and the latent norm's parameters (a few hundred to r^2 elements), kept apart so that a rule for the
factors (`("rank", "fsdp")`: FSDP then shards both factors of each pair) does not scatter the gates too.

`config.parallel.rules` overrides entries as (name, mesh axis or axes or None) pairs, on the command line
`--config.parallel.rules='(("rank", "fsdp"), ("embed", None))'`. A dimension that a mesh axis
does not divide stays replicated (e.g. a byte vocabulary of 259 over tensor=4), and a mesh axis is used at most
once per array.

Across TPU slices the mesh axes `data` and `fsdp` have the slices as their outer part (`mesh.dcn_data`,
`mesh.dcn_fsdp`; parallel/mesh.py), so the same table shards the batch and FSDP's parameters over DCN as
MaxText does, and `tensor` (never across slices) keeps its traffic on ICI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lax_pretrain.nnx_compat import logical_axes
from lax_pretrain.parallel.mesh import num_slices, process_indices

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
    "latent": None,
    "layers": None,
    "tt_rank": None,
    "tt_mode": None,
}


def rules_from_config(parallel_cfg: Any) -> dict[str, MeshAxes]:
    rules = dict(DEFAULT_RULES)
    for entry in parallel_cfg.get("rules", ()) or ():
        if isinstance(entry, str) or len(entry) != 2:
            raise ValueError(
                f"parallel.rules entry {entry!r} must be a (logical_name, mesh_axis_or_None) pair, e.g. "
                """--config.parallel.rules='(("rank", "fsdp"),)'"""
            )
        name, axes = entry
        rules[name] = tuple(axes) if isinstance(axes, list) else axes
    return rules


def logical_to_spec(
    names: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh | Mapping[str, int],
    rules: dict[str, MeshAxes],
) -> PartitionSpec:
    """mesh: a (possibly abstract) Mesh, or {axis: size} of the axes that may be used."""
    sizes = dict(mesh.shape) if hasattr(mesh, "shape") else dict(mesh)
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for name, size in zip(names, shape):
        axes = rules.get(name) if name is not None else None
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes_t = tuple(a for a in axes_t if a not in used and sizes.get(a, 1) > 1)
        total = 1
        for a in axes_t:
            total *= sizes[a]
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


def sharded_init(
    model_factory: Callable[[nnx.Rngs], nnx.Module],
    mesh: Mesh,
    rules: dict[str, MeshAxes],
    *,
    seed: int = 0,
    trainable: Any = nnx.Param,
):
    """(graphdef, init, (train_sh, frozen_sh)): `init()` builds (trainable, frozen) state directly into its
    shardings. The shapes come from an abstract model and every random draw runs inside one jit whose
    out_shardings are the rule shardings, so with partitionable threefry (JAX's default) no device ever holds
    an unsharded parameter. Call this outside `jax.set_mesh` (NNX would read our logical names as mesh axes
    there) and `init` under it."""
    rngs = lambda: nnx.Rngs(params=seed, dropout=seed)  # noqa: E731
    graphdef, abstract_train, abstract_frozen = nnx.split(
        nnx.eval_shape(lambda: model_factory(rngs())), trainable, ...
    )
    shardings = (state_shardings(abstract_train, mesh, rules), state_shardings(abstract_frozen, mesh, rules))

    def init_state():
        _, train_state, frozen_state = nnx.split(model_factory(rngs()), trainable, ...)
        return train_state, frozen_state

    # Init runs once: on CPU, XLA's backend optimisation of the many random draws triples its compile time
    # (4 s -> 12 s for a tiny 2-layer mixed-kind model) and buys nothing. The draws then differ from an
    # optimised build's by float rounding (~1e-5 relative at most), as they already do across backends.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return graphdef, jax.jit(init_state, out_shardings=shardings, compiler_options=options), shardings


def place_values(state: nnx.State, shardings: nnx.State, values: Mapping[tuple, Any]) -> nnx.State:
    """`state` with its leaves at the paths of `values` replaced (paths it does not hold are ignored).

    `values` maps flat state paths to host arrays (a pretrained base). Each array is created directly in its
    leaf's sharding, every process copying only its own shards, so a multi-GB base is never traced into a jit
    (as a constant) nor held whole on one device. Shapes must match; dtypes follow the state."""
    shardings_by_path = dict(nnx.to_flat_state(shardings))
    leaves = []
    for path, variable in nnx.to_flat_state(state):
        if path in values:
            value = np.asarray(values[path])
            if value.shape != tuple(variable.shape):
                raise ValueError(
                    f"initial value for {'/'.join(map(str, path))} has shape {value.shape}; the model "
                    f"expects {tuple(variable.shape)}"
                )
            value = value.astype(variable.dtype, copy=False)
            array = jax.make_array_from_callback(
                value.shape, shardings_by_path[path], lambda idx, v=value: v[idx]
            )
            variable = variable.replace(array)
        leaves.append((path, variable))
    return nnx.from_flat_state(leaves)


def batch_sharding(mesh: Mesh, ndim: int, rules: dict[str, MeshAxes]) -> NamedSharding:
    """Leading (batch) dimension over the data axes, the rest replicated."""
    axes = rules["batch"]
    axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes_t = tuple(a for a in axes_t if mesh.shape[a] > 1)
    lead = None if not axes_t else (axes_t[0] if len(axes_t) == 1 else axes_t)
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def check_process_rows(sharding: NamedSharding, global_rows: int) -> None:
    """Each process loads `global_rows / processes` rows of every global batch (lax_pretrain.data) and
    `jax.make_array_from_process_local_data` places them, in order, at the rows its own devices hold. That is
    right when each process's devices hold exactly that many rows, none of them held by another process. A mesh
    that replicates the batch across hosts (e.g. hosts along `tensor`) would give two hosts' different rows the
    same place and silently train on garbage: an error here, before anything compiles.

    The rows a process holds need not be one block: a TPU slice's mesh follows the chips' torus, not the hosts,
    so hosts interleave along `data`/`fsdp`. A global batch is then the same rows as on one process, in another
    order (the loss, a token-weighted mean, is unchanged). The processes are those of the mesh's devices, every
    one checked: a multi-host topology compiled on one machine is refused exactly as its run would be."""
    devices = list(sharding.mesh.devices.flat)
    processes = process_indices(devices)
    count = len(processes)
    if count == 1:
        return
    local = global_rows // count
    held: dict[int, set[int]] = {p: set() for p in processes}
    shape = (global_rows,) + (1,) * (len(sharding.spec) - 1)
    for device, index in sharding.devices_indices_map(shape).items():
        held[device.process_index].update(range(*index[0].indices(global_rows)))
    across = " Across slices, mesh.dcn_data splits the batch between them." if num_slices(devices) > 1 else ""
    for rank, process in enumerate(processes):
        rows = held[process]
        if len(rows) != local:
            raise ValueError(
                f"mesh {dict(sharding.mesh.shape)} with batch -> {sharding.spec[0]}: process {rank} of {count} "
                f"loads {local} rows of each global batch but its devices would hold {len(rows)} "
                f"({min(rows, default=0)}..{max(rows, default=-1)}): the batch would be replicated across hosts. "
                "Give the hosts distinct parts of the batch axes (mesh.data x mesh.fsdp a multiple of the "
                "process count)." + across
            )
