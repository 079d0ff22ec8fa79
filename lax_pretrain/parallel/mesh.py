"""The device mesh ('data', 'fsdp', 'tensor') from `config.mesh`; -1 fills with the remaining devices.

`mesh.num_devices` (optional, 0 or absent = all) builds the mesh on the first N devices of a single process:
benchmarks and the tests that compare a 1-device run with an 8-device one in the same process.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
    """Resolves the config's axis sizes against the device count, or raises naming the key."""
    sizes = [int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES]
    fill = [axis for axis, s in zip(MESH_AXES, sizes) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {', '.join('mesh.' + a for a in fill)}")
    for axis, s in zip(MESH_AXES, sizes):
        if s == 0 or s < -1:
            raise ValueError(f"mesh.{axis}={s} must be a positive size or -1 (fill)")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes ({known} devices) do not divide "
                f"the {num_devices} available devices (mesh.{fill[0]}=-1 cannot fill)"
            )
        sizes[MESH_AXES.index(fill[0])] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh.data x mesh.fsdp x mesh.tensor = {' x '.join(map(str, sizes))} = "
            f"{math.prod(sizes)} does not match the {num_devices} available devices"
        )
    return tuple(sizes)


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
    if n != len(devices) and jax.process_count() > 1:
        raise ValueError(
            f"mesh.num_devices={n}: a mesh on a subset of the devices is single-process only "
            f"({jax.process_count()} processes hold {len(devices)} devices)"
        )
    return devices[:n]


def make_mesh(mesh_cfg: Any, devices: list | None = None) -> Mesh:
    devices = devices if devices is not None else mesh_devices(mesh_cfg)
    shape = mesh_shape(mesh_cfg, len(devices))
    # make_mesh orders devices for the physical topology (ICI within a slice, DCN across slices on TPU).
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
