"""Training: the one loop (`train`), optimizer, checkpoints, metrics and MFU accounting."""

from lax_pretrain.train.loop import train

__all__ = ["train"]
