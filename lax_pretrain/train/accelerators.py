"""The accelerators we plan for and measure MFU against: one table of per-chip specs.

    accelerator("h100").peak_bf16_flops        # by the name `lax-plan --accelerator=` takes
    for_device(jax.devices()[0])                # by the device's `device_kind`; None if unknown (CPU)

Per chip: dense bf16 peak FLOP/s (no sparsity), HBM capacity and bandwidth, and the interconnect bandwidth a
collective gets, one direction: `ici_bytes_per_s` within `ici_domain` chips (an NVLink node of 8 GPUs, a TPU
slice of up to a pod), `dcn_bytes_per_s` between domains (None: not modelled).

Sources (vendors' data sheets; "bidirectional" figures halved to one direction):
  H100 SXM, H100 PCIe: NVIDIA H100 Tensor Core GPU data sheet: 989 / 756 TFLOPS bf16 dense, 80 GB HBM3 at
      3.35 TB/s / HBM2e at 2.0 TB/s; NVLink 900 GB/s (SXM) / NVLink bridge 600 GB/s (PCIe), bidirectional.
  H200 SXM: NVIDIA H200 data sheet: 989 TFLOPS bf16 dense, 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s.
  A100 SXM4 80GB / 40GB, A100 80GB PCIe: NVIDIA A100 data sheet: 312 TFLOPS bf16 dense, 80 GB at 2,039 GB/s,
      40 GB at 1,555 GB/s, 80 GB PCIe at 1,935 GB/s; NVLink 600 GB/s bidirectional.
  L4: NVIDIA L4 data sheet: 121 TFLOPS bf16 dense, 24 GB GDDR6 at 300 GB/s, PCIe Gen4 x16 (64 GB/s both ways).
  GPU domains: an NVLink node of 8 SXM GPUs, a bridged pair of PCIe GPUs (no scale-out modelled), 8 L4s on
      PCIe. Scale-out: one 400 Gb/s NIC per H100/H200 (DGX H100: 8x ConnectX-7) = 50 GB/s, one 200 Gb/s per
      A100 (DGX A100: 8x ConnectX-6) = 25 GB/s; other clusters differ.
  TPU v4: cloud.google.com/tpu/docs/v4: 275 TFLOPS, 32 GiB HBM2 at 1,200 GB/s, 4096-chip pod; per-chip
      collective bandwidth = the pod's all-reduce bandwidth 1.1 PB/s / 4096 chips.
  TPU v5e: cloud.google.com/tpu/docs/v5e: 197 TFLOPS, 16 GB HBM2 at 819 GB/s, ICI 400 GB/s bidirectional,
      256-chip pod, 6.4 Tb/s of data-centre network per pod (/ 256 chips).
  TPU v5p: cloud.google.com/tpu/docs/v5p: 459 TFLOPS, 95 GiB HBM2e at 2,765 GB/s, ICI 1,200 GB/s
      bidirectional, 8960-chip pod, DCN 50 Gb/s per chip.
  TPU v6e: cloud.google.com/tpu/docs/v6e: 918 TFLOPS, 32 GB HBM at 1,638 GB/s, ICI 800 GB/s bidirectional,
      256-chip pod.
"""

from __future__ import annotations

import dataclasses

import jax

GB, GIB = 1e9, 2**30


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    device_kinds: tuple[str, ...]  # jax `Device.device_kind` strings of this chip
    peak_bf16_flops: float
    hbm_bytes: float
    hbm_bytes_per_s: float
    ici_bytes_per_s: float  # one direction, per chip, within a domain
    ici_domain: int  # chips joined by that interconnect
    dcn_bytes_per_s: float | None  # one direction, per chip, between domains; None: not modelled


ACCELERATORS = {
    a.name: a
    for a in (
        Accelerator("h100", ("NVIDIA H100 80GB HBM3",), 989e12, 80 * GB, 3.35e12, 450 * GB, 8, 50 * GB),
        Accelerator("h100-pcie", ("NVIDIA H100 PCIe",), 756e12, 80 * GB, 2.0e12, 300 * GB, 2, None),
        Accelerator("h200", ("NVIDIA H200",), 989e12, 141 * GB, 4.8e12, 450 * GB, 8, 50 * GB),
        Accelerator("a100", ("NVIDIA A100-SXM4-80GB",), 312e12, 80 * GB, 2.039e12, 300 * GB, 8, 25 * GB),
        Accelerator("a100-40gb", ("NVIDIA A100-SXM4-40GB",), 312e12, 40 * GB, 1.555e12, 300 * GB, 8, 25 * GB),
        Accelerator("a100-pcie", ("NVIDIA A100 80GB PCIe",), 312e12, 80 * GB, 1.935e12, 300 * GB, 2, None),
        Accelerator("l4", ("NVIDIA L4",), 121e12, 24 * GB, 300 * GB, 32 * GB, 8, None),
        Accelerator("v4", ("TPU v4",), 275e12, 32 * GIB, 1.2e12, 1.1e15 / 4096, 4096, None),
        Accelerator(
            "v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 16 * GB, 819 * GB, 200 * GB, 256, 6.4e12 / 8 / 256
        ),
        Accelerator("v5p", ("TPU v5", "TPU v5p"), 459e12, 95 * GIB, 2.765e12, 600 * GB, 8960, 50e9 / 8),
        Accelerator("v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 32 * GB, 1.638e12, 400 * GB, 256, None),
    )
}


def accelerator(name: str) -> Accelerator:
    """The table's entry `name` (case-insensitive), or ValueError listing the known ones."""
    a = ACCELERATORS.get(name.strip().lower())
    if a is None:
        raise ValueError(f"--accelerator={name!r} is not one of {', '.join(ACCELERATORS)}")
    return a


def for_device(device: jax.Device) -> Accelerator | None:
    """The entry whose device kinds include `device.device_kind`; None for anything else (CPUs)."""
    return next((a for a in ACCELERATORS.values() if device.device_kind in a.device_kinds), None)
