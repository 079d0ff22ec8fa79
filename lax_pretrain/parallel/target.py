"""The device a program is built for: the host's first device, unless a planner compiles for another system.

Choices that depend on the device kind (the attention implementation, the kron gate's implementation) ask
`compile_device()`, never `jax.devices()` directly, so that a program compiled ahead of time for a TPU slice
or a GPU node on a CPU host (`lax-plan --target`) is the program that system would train:

    with compiling_for(mesh.devices.flat[0]):    # train/program.py: around the model build
        model = build(config.model, rngs=...)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax

_DEVICE: contextvars.ContextVar[Any] = contextvars.ContextVar("compile_device", default=None)


def compile_device() -> Any:
    """The device programs are being built for: the one `compiling_for` set, else this host's first."""
    device = _DEVICE.get()
    return device if device is not None else jax.devices()[0]


def compile_platform() -> str:
    """'cpu', 'gpu' or 'tpu' of `compile_device()` (a topology's CUDA devices report 'gpu')."""
    platform = compile_device().platform
    return "gpu" if platform in ("cuda", "rocm") else platform


@contextlib.contextmanager
def compiling_for(device: Any) -> Iterator[None]:
    token = _DEVICE.set(device)
    try:
        yield
    finally:
        _DEVICE.reset(token)
