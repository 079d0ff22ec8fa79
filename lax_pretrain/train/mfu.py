"""Model FLOPs utilisation: analytic training FLOPs per second over the devices' peak.

Peaks are dense bf16 tensor-core/MXU numbers per device from the vendors' data sheets. A device not in the
table gets no MFU (and a note), never a guess.
"""

from __future__ import annotations

import jax

PEAK_BF16_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def device_peak_flops(device: jax.Device | None = None) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s of one device or None, the device kind)."""
    device = device or jax.devices()[0]
    kind = device.device_kind
    return PEAK_BF16_FLOPS.get(kind), kind
