"""Compiling a lowered train step with a target's compiler: its verdict on memory, and what it chose.

    compiled, oom = compile_for_target(lowered, target)   # oom: the TPU compiler's RESOURCE_EXHAUSTED, parsed
    with target_tracing(target): lowered = program.lower_train_step()

On a TPU, a step that does not fit is a compile error, the one the chip would give
("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm ... exceeds available HBM (15.75G)"): it is the
verdict, with the compiler's numbers. On a GPU it is not an error: the compiler logs "Can't reduce memory use
below ..." and returns; the planner compares the totals with the device memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

from lax_pretrain.targets.catalog import Target

_SIZE = r"([0-9.]+)\s*([KMGT]?)i?B?"
_REQUIRED = re.compile(
    r"required for ([^(]*?)\s*\(" + _SIZE + r"\)\s*exceeds available HBM \(" + _SIZE + r"\)"
)
_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
    """The TPU compiler's refusal: its message and, where it states them, its numbers."""

    message: str  # the compiler's lines that say why (the first few of its error)
    what: str  # e.g. "HLO temporaries"
    required_bytes: float | None
    available_bytes: float | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_out_of_memory(text: str) -> OutOfMemory | None:
    """The RESOURCE_EXHAUSTED of an XLA compile, or None when `text` is some other error."""
    if "RESOURCE_EXHAUSTED" not in text or "memory" not in text.lower():
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "RESOURCE_EXHAUSTED" in line), 0)
    message = " ".join(lines[start : start + 3])
    m = _REQUIRED.search(text)
    if not m:
        return OutOfMemory(message, "", None, None)
    what, req, req_unit, avail, avail_unit = m.groups()
    return OutOfMemory(message, what, float(req) * _UNIT[req_unit], float(avail) * _UNIT[avail_unit])


# Without a device XLA:GPU does not autotune, and its default Triton GEMM tiling fails for some shapes (ViT's
# 1024 x 197 tokens: "Couldn't find output tile sizes that satisfy hlo"); a real GPU would autotune past it.
# The plan then compiles the GEMMs with cuBLAS, and records that it did.
TRITON_TILING_FAILED = "Couldn't find output tile sizes"
CUBLAS_GEMMS = {"xla_gpu_enable_triton_gemm": False}


def compile_for_target(
    lowered: Any, options: dict[str, Any] | None = None
) -> tuple[Any, OutOfMemory | None, dict[str, Any]]:
    """(compiled, None, the options used), or (None, the compiler's out-of-memory verdict, options). Other
    compile errors propagate."""
    options = dict(options or {})
    try:
        return lowered.compile(compiler_options=options or None), None, options
    except Exception as e:  # noqa: BLE001 - jaxlib's JaxRuntimeError; anything else is re-raised below
        if TRITON_TILING_FAILED in str(e) and options.get("xla_gpu_enable_triton_gemm", True) is not False:
            return compile_for_target(lowered, {**options, **CUBLAS_GEMMS})
        oom = parse_out_of_memory(str(e))
        if oom is None:
            raise
        return None, oom, options


def gpu_versions(description: str) -> tuple[int, tuple[int, int]]:
    """(cuDNN version as jax encodes it, e.g. 90800; compute capability) of a GPU target description."""

    def field(block: str, name: str) -> int:
        m = re.search(block + r"\s*\{[^}]*?\b" + name + r":\s*(\d+)", description)
        return int(m.group(1)) if m else 0

    cudnn = field("dnn_version_info", "major") * 10000 + field("dnn_version_info", "minor") * 100
    cudnn += field("dnn_version_info", "patch")
    capability = (field("cuda_compute_capability", "major"), field("cuda_compute_capability", "minor"))
    return cudnn, capability


@contextlib.contextmanager
def target_tracing(target: Target | None) -> Iterator[None]:
    """Around lowering: for a GPU target, jax's cuDNN attention asks the target (not this host) for the cuDNN
    version and compute capability."""
    if target is None or target.platform != "gpu":
        yield
        return
    from lax_pretrain.models.attention import cudnn_answered_for
    from lax_pretrain.targets.devices import gpu_description

    cudnn, capability = gpu_versions(gpu_description(target))
    with cudnn_answered_for(cudnn, capability):
        yield
