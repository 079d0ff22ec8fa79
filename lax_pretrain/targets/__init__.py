"""Accelerator systems to compile for without the hardware (`lax-plan --target`): names, devices, compilers."""

from lax_pretrain.targets.catalog import Target, known_targets, parse_target
from lax_pretrain.targets.devices import target_devices, topology_devices

__all__ = ["Target", "known_targets", "parse_target", "target_devices", "topology_devices"]
