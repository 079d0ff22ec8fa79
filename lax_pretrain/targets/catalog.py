"""The accelerator systems `lax-plan --target=NAME` compiles for, by name: pure data, no compiler needed.

    target = parse_target("v5p:4x4x4")          # a TPU slice: 64 chips
    target = parse_target("v5e:16x16", slices=2) # two slices joined by the data-centre network (DCN)
    target = parse_target("h100x64")            # 8 hosts of 8 H100 SXM GPUs

TPU names are `FAMILY:TOPOLOGY` as Cloud TPU spells them (v4:2x2x4, v5e:16x16, v5p:4x4x4, v6e:8x8); libtpu
names v5p `v5`. Every TPU host holds a 2x2 block of chips (v4, v5p, and the 4-chip hosts of v5e/v6e), so a
topology smaller than a host is one host. GPU names are `GPUxN`: N GPUs, one NVLink node of up to 8, then
hosts of 8. `slices` (default 1) repeats the whole system: TPU multi-slice (MegaScale over DCN), GPU the
outermost dimension of jax's `slices x hosts x GPUs` topology.
"""

from __future__ import annotations

import dataclasses
import math
import re

# family -> (libtpu's name, chip config, the accelerator table's entry in train/accelerators.py)
TPU_FAMILIES = {
    "v4": ("v4", "megacore", "v4"),  # v4's two TensorCores act as one device (megacore)
    "v5e": ("v5e", "default", "v5e"),
    "v5p": ("v5", "default", "v5p"),
    "v6e": ("v6e", "default", "v6e"),
}
TPU_CHIPS_PER_HOST = (2, 2, 1)

# GPU name -> (description file in targets/gpu/, the accelerator table's entry, jax's platform name)
GPU_SYSTEMS = {
    "h100": ("h100-sxm.txtpb", "h100"),
    "h200": ("h200-sxm.txtpb", "h200"),
    "a100-80gb": ("a100-sxm4-80gb.txtpb", "a100"),
}
GPUS_PER_HOST = 8


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # as the user wrote it, e.g. "v5p:4x4x4"
    platform: str  # "tpu" or "gpu": which compiler
    accelerator: str  # the entry of train/accelerators.py (peak FLOP/s, HBM, links) for the roofline
    slices: int
    # TPU: libtpu's topology name, chip config and chip-per-host bounds. GPU: jax's "SxHxG" topology string.
    topology: str
    chip_config: str = ""
    chips_per_host: tuple[int, int, int] = TPU_CHIPS_PER_HOST
    gpu_description: str = ""  # file name in lax_pretrain/targets/gpu/
    devices_per_slice: int = 0

    @property
    def num_devices(self) -> int:
        return self.devices_per_slice * self.slices

    @property
    def compiler(self) -> str:
        """What `make install-plan` installs for this target: the package whose absence is reported."""
        return (
            "libtpu (the TPU compiler)" if self.platform == "tpu" else "jax-cuda12-plugin (the GPU compiler)"
        )


def known_targets() -> str:
    tpus = ", ".join(f"{f}:AxB[xC]" for f in TPU_FAMILIES)
    gpus = ", ".join(f"{g}xN" for g in GPU_SYSTEMS)
    return f"{tpus}, {gpus}"


def parse_target(name: str, slices: int = 1) -> Target:
    """The target `name` names, or ValueError naming --target / --slices."""
    text = name.strip().lower()
    if slices < 1:
        raise ValueError(f"--slices={slices} must be >= 1")
    if ":" in text:
        return _tpu(name, text, slices)
    m = re.fullmatch(r"([a-z0-9\-]+)x(\d+)", text)
    if m and m.group(1) in GPU_SYSTEMS:
        return _gpu(name, m.group(1), int(m.group(2)), slices)
    raise ValueError(f"--target={name!r} is not a known system: {known_targets()}")


def _tpu(name: str, text: str, slices: int) -> Target:
    family, _, shape = text.partition(":")
    if family not in TPU_FAMILIES:
        raise ValueError(f"--target={name!r}: TPU family {family!r} is not one of {', '.join(TPU_FAMILIES)}")
    try:
        dims = tuple(int(d) for d in shape.split("x"))
    except ValueError:
        dims = ()
    want = 3 if family in ("v4", "v5p") else 2  # v4/v5p: 3-D tori; v5e/v6e: 2-D
    if len(dims) != want or min(dims) < 1:
        example = "2x2x4" if want == 3 else "16x16"
        raise ValueError(f"--target={name!r}: {family} topologies are {want} sizes, e.g. {family}:{example}")
    libtpu_name, chip_config, acc = TPU_FAMILIES[family]
    bounds = tuple(min(b, d) for b, d in zip(TPU_CHIPS_PER_HOST, dims + (1,) * (3 - len(dims))))
    return Target(
        name=name,
        platform="tpu",
        accelerator=acc,
        slices=slices,
        topology=f"{libtpu_name}:{'x'.join(map(str, dims))}",
        chip_config=chip_config,
        chips_per_host=bounds,
        devices_per_slice=math.prod(dims),
    )


def _gpu(name: str, gpu: str, n: int, slices: int) -> Target:
    if n < 1 or (n > GPUS_PER_HOST and n % GPUS_PER_HOST):
        raise ValueError(
            f"--target={name!r}: {n} GPUs must be 1..{GPUS_PER_HOST} (one host) or a multiple of "
            f"{GPUS_PER_HOST} (hosts of {GPUS_PER_HOST})"
        )
    hosts, per_host = (1, n) if n <= GPUS_PER_HOST else (n // GPUS_PER_HOST, GPUS_PER_HOST)
    description, acc = GPU_SYSTEMS[gpu]
    return Target(
        name=name,
        platform="gpu",
        accelerator=acc,
        slices=slices,
        topology=f"{slices}x{hosts}x{per_host}",
        gpu_description=description,
        devices_per_slice=n,
    )
