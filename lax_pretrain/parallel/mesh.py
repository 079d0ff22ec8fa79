"""The device mesh ('data', 'fsdp', 'tensor') from `config.mesh`; -1 fills with the remaining devices.

Within one slice (one TPU slice, one GPU node, the host's CPU devices) `mesh.data`, `mesh.fsdp` and
`mesh.tensor` are the axis sizes. Across TPU slices (devices whose `slice_index` differs, joined by the
data-centre network, DCN), `mesh.dcn_data` and `mesh.dcn_fsdp` say how many slices each axis spans: the mesh
axis `data` is then dcn_data x data devices long, the slice being its outer (slowest) part, as MaxText builds
it. The logical rules keep naming `data` and `fsdp`, so batch and FSDP sharding cross slices unchanged; tensor
parallelism never leaves a slice. One slice is dcn 1 x 1, built exactly as before.

`mesh.num_devices` (optional, 0 or absent = all) builds the mesh on the first N devices of a single process:
benchmarks and the tests that compare a 1-device run with an 8-device one in the same process.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
DCN_KEYS = ("dcn_data", "dcn_fsdp")  # how many slices `data` and `fsdp` span; `tensor` stays in a slice
# jax.make_mesh lets a v5e's physical axes split between logical axes (its 2D torus needs it); the same per slice.
_SPLIT_PHYSICAL_AXES_KINDS = ("TPU v5 lite", "TPU v5e")


class MeshSizes(NamedTuple):
    ici: tuple[int, int, int]  # (data, fsdp, tensor) within a slice
    dcn: tuple[int, int, int]  # slices along each axis (tensor always 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(d * i for d, i in zip(self.dcn, self.ici))


def num_slices(devices: Sequence[Any]) -> int:
    """How many slices `devices` span: distinct `slice_index` values (devices without one are one slice)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def process_indices(devices: Sequence[Any]) -> list[int]:
    """The processes that hold `devices`, in order. Read from the devices, not from this host, so a multi-host
    topology compiled on one machine is checked as the run on those hosts would be."""
    return sorted({d.process_index for d in devices})


def _fill(keys: Sequence[str], sizes: list[int], total: int, what: str) -> list[int]:
    """`sizes` with its one -1 replaced so that they multiply out to `total`; raises naming the keys."""
    fill = [k for k, s in zip(keys, sizes) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {', '.join('mesh.' + k for k in fill)}")
    for key, s in zip(keys, sizes):
        if s == 0 or s < -1:
            raise ValueError(f"mesh.{key}={s} must be a positive size or -1 (fill)")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if total % known:
            raise ValueError(
                f"mesh {dict(zip(keys, sizes))}: the fixed axes ({known} {what.split()[0]}) do not divide "
                f"the {total} available {what} (mesh.{fill[0]}=-1 cannot fill)"
            )
        sizes[keys.index(fill[0])] = total // known
    return sizes


def mesh_sizes(mesh_cfg: Any, num_devices: int, slices: int = 1) -> MeshSizes:
    """Resolves the config's axis sizes against `num_devices` in `slices` slices, or raises naming the key.
    Cheap: reads the config and two counts, so every error comes before a mesh or a program is built."""
    dcn = _fill(DCN_KEYS, [int(mesh_cfg.get(k, 1)) for k in DCN_KEYS], slices, "slices")
    if math.prod(dcn) != slices:
        named = " x ".join(f"mesh.{k}" for k in DCN_KEYS)
        hint = (
            f" (mesh.dcn_data={slices}: data parallel across slices, the usual choice)" if slices > 1 else ""
        )
        raise ValueError(
            f"{named} = {' x '.join(map(str, dcn))} = {math.prod(dcn)} slices, but the {num_devices} devices "
            f"form {slices} slice{'s' if slices > 1 else ''}{hint}"
        )
    if num_devices % slices:
        raise ValueError(f"the {num_devices} devices do not split evenly into their {slices} slices")
    per_slice = num_devices // slices
    what = "devices" if slices == 1 else "devices of each slice"
    ici = _fill(MESH_AXES, [int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES], per_slice, what)
    if math.prod(ici) != per_slice:
        raise ValueError(
            f"mesh.data x mesh.fsdp x mesh.tensor = {' x '.join(map(str, ici))} = "
            f"{math.prod(ici)} does not match the {per_slice} available {what}"
        )
    return MeshSizes(tuple(ici), (*dcn, 1))


def mesh_shape(mesh_cfg: Any, num_devices: int, slices: int = 1) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) mesh shape: each axis's slices x its size within a slice."""
    return mesh_sizes(mesh_cfg, num_devices, slices).shape


def mesh_devices(mesh_cfg: Any) -> list:
    """All devices, or the first `mesh.num_devices` of them (single process only)."""
    devices = jax.devices()
    n = int(mesh_cfg.get("num_devices", 0) or 0)
    if n == 0:
        return devices
    if n < 0 or n > len(devices):
        raise ValueError(
            f"mesh.num_devices={n} must be between 1 and the {len(devices)} available devices (0: all)"
        )
    processes = len(process_indices(devices))
    if n != len(devices) and processes > 1:
        raise ValueError(
            f"mesh.num_devices={n}: a mesh on a subset of the devices is single-process only "
            f"({processes} processes hold {len(devices)} devices)"
        )
    return devices[:n]


def make_mesh(mesh_cfg: Any, devices: list | None = None) -> Mesh:
    devices = devices if devices is not None else mesh_devices(mesh_cfg)
    sizes = mesh_sizes(mesh_cfg, len(devices), num_slices(devices))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if sizes.dcn == (1, 1, 1):
        # make_mesh orders devices for the physical topology (the ICI torus of a TPU slice).
        return jax.make_mesh(sizes.ici, MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(hybrid_device_array(sizes, devices), MESH_AXES, axis_types=axis_types)


def hybrid_device_array(sizes: MeshSizes, devices: Sequence[Any]):
    """Devices laid out (data, fsdp, tensor) for several slices: within each slice in the ICI order
    `jax.make_mesh` would give it, slices tiled as the outer part of each axis (slice s of `dcn_data` holds
    data indices [s * data, (s + 1) * data)), so only collectives over a DCN axis cross slices."""
    per_slice = collections.Counter(getattr(d, "slice_index", 0) for d in devices)
    if len(set(per_slice.values())) > 1:
        raise ValueError(f"the slices hold different numbers of devices ({dict(sorted(per_slice.items()))})")
    return mesh_utils.create_hybrid_device_mesh(
        sizes.ici,
        sizes.dcn,
        devices,
        allow_split_physical_axes=devices[0].device_kind in _SPLIT_PHYSICAL_AXES_KINDS,
    )
