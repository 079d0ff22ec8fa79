"""Model FLOPs utilisation: analytic training FLOPs per second over the devices' peak.

Peaks are the dense bf16 tensor-core/MXU numbers of the accelerator table (`train/accelerators.py`, with its
sources). A device not in the table gets no MFU (and a note), never a guess.
"""

from __future__ import annotations

import jax

from lax_pretrain.train.accelerators import ACCELERATORS

PEAK_BF16_FLOPS = {kind: a.peak_bf16_flops for a in ACCELERATORS.values() for kind in a.device_kinds}


def device_peak_flops(device: jax.Device | None = None) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s of one device or None, the device kind)."""
    device = device or jax.devices()[0]
    kind = device.device_kind
    return PEAK_BF16_FLOPS.get(kind), kind
