"""Devices of a target system, from its compiler's topology description: no chip needs to be present.

    devices = target_devices("v5e:16x16", slices=2)   # 512 TPU devices over two slices
    mesh = make_mesh(config.mesh, devices=devices)     # then build, lower and compile as for local devices

Needs the target's compiler in this interpreter (the plan venv, `make install-plan`) and JAX started on CPU
only (`plan_environment()` in targets/compilers.py): the devices are descriptions, arrays cannot be put on them,
programs only compiled for them.
"""

from __future__ import annotations

from importlib import resources

from lax_pretrain.targets.catalog import Target, parse_target


def gpu_description(target: Target) -> str:
    """The target GPU's `GpuTargetConfigProto` in text form (lax_pretrain/targets/gpu/*.txtpb)."""
    return resources.files("lax_pretrain.targets").joinpath("gpu", target.gpu_description).read_text()


def topology_devices(target: Target) -> list:
    """The devices of `target`, in jax's device-id order (slice-major)."""
    from jax.experimental import topologies  # imported here: only the plan venv's processes get this far

    if target.platform == "tpu":
        topology = topologies.get_topology_desc(
            platform="tpu",
            topology_name=target.topology,
            chip_config_name=target.chip_config,
            chips_per_host_bounds=target.chips_per_host,
            num_slices=target.slices,
            wrap=(False, False, False),
        )
    else:
        topology = topologies.get_topology_desc(
            "lax-plan", "cuda", topology=target.topology, target_config=gpu_description(target)
        )
    return list(topology.devices)


def target_devices(name: str, slices: int = 1) -> list:
    """The devices of the system `name` (`catalog.parse_target`) times `slices`."""
    return topology_devices(parse_target(name, slices))
