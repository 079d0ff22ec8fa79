"""Will the compiled train step fit in a device's memory? Per-device terms from the compiled step, and the check
`train()` runs before step 1.

    memory = step_memory(compiled)                     # StepMemory: bytes per device, by term
    memory.fits(80e9), memory.message(80e9, "H100")    # verdict and what to change
    check_fits(compiled, device)                       # ValueError if it cannot fit (CPU: host memory)

`compiled` is the jitted train step (`Program.lower_train_step().compile()`), whose arguments are (trainable
parameters, optimizer state, frozen variables, batch, step). From XLA's buffer assignment
(`compiled.memory_analysis()`) and the arguments' shapes and shardings, per device:
  parameters, optimizer state, frozen variables, batch   the arguments, each from its shards' bytes
  temporaries     activations saved for the backward pass, gradients, workspace (`temp`): what model.remat,
                  train.batch_size and train.grad_accum change
  gradients       an estimate inside temporaries, not an extra term: the gradient tree has the trainable
                  parameters' shapes, dtypes and shardings, so = the parameters' bytes (XLA may hold fewer at
                  once, or more with grad_accum's accumulator)
  outputs         updated parameters and optimizer state (+ metrics); `aliased` of them reuse the donated
                  argument buffers
  generated code  the executable itself
  peak = arguments + outputs - aliased + temporaries + generated code

Compiled for CPU (lax-plan on fake devices) these numbers estimate an accelerator's: the CPU compiler fuses and
schedules differently, and it strips remat unless told not to (`compiler_options`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

GIB = 2**30

# XLA:CPU's `cse_barrier_expander` strips the optimization barriers `jax.checkpoint` puts around the
# recomputation, after which CSE merges it back into the forward pass: remat is a no-op on CPU (8 rematted
# layers compile to the same 71 dots as without remat). GPU and TPU compilers keep the barriers.
CPU_KEEP_REMAT = {"xla_disable_hlo_passes": "cse_barrier_expander"}


def compiler_options(keep_remat_on_cpu: bool = True, backend: str | None = None) -> dict[str, str]:
    """Options that make a CPU compile honour model.remat as accelerators do ({} elsewhere)."""
    backend = backend or jax.default_backend()
    return dict(CPU_KEEP_REMAT) if keep_remat_on_cpu and backend == "cpu" else {}


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes per device of one compiled train step."""

    parameters: int
    optimizer_state: int
    frozen: int
    batch: int
    temporaries: int
    gradients: int  # estimate, part of `temporaries`
    outputs: int
    aliased: int
    generated_code: int

    @property
    def arguments(self) -> int:
        return self.parameters + self.optimizer_state + self.frozen + self.batch

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code

    def fits(self, limit_bytes: float) -> bool:
        return self.peak <= limit_bytes

    def largest_terms(self, n: int = 3) -> list[tuple[str, int]]:
        """The biggest additive terms of `peak`, largest first."""
        terms = {
            "temporaries (activations, gradients, workspace)": self.temporaries,
            "optimizer state": self.optimizer_state,
            "parameters": self.parameters,
            "frozen variables": self.frozen,
            "batch": self.batch,
            "outputs not aliased to inputs": self.outputs - self.aliased,
            "generated code": self.generated_code,
        }
        return sorted(((k, v) for k, v in terms.items() if v > 0), key=lambda kv: -kv[1])[:n]

    def advice(self) -> str:
        """The config keys that shrink the largest term first."""
        activations = "model.remat=full (or cola_m for CoLA: recompute activations in the backward pass)"
        smaller = "a smaller train.batch_size or train.grad_accum=N (N micro-batches per step)"
        sharded = "a larger mesh.fsdp (shards parameters and optimizer state)"
        first = self.largest_terms(1)[0][0] if self.peak else ""
        keys = (
            [activations, smaller, sharded]
            if first.startswith("temporaries")
            else [sharded, activations, smaller]
        )
        return "; ".join(keys)

    def message(self, limit_bytes: float, where: str) -> str:
        terms = ", ".join(f"{name} {_size(b)}" for name, b in self.largest_terms())
        verdict = "fits in" if self.fits(limit_bytes) else "does not fit in"
        text = (
            f"the train step needs {_size(self.peak)} per device and {verdict} the {_size(limit_bytes)} of "
            f"{where} (largest: {terms})"
        )
        return text if self.fits(limit_bytes) else f"{text}. To fit: {self.advice()}"

    def to_json(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "arguments": self.arguments, "peak": self.peak}


def _size(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB / 10 else f"{b / 2**20:.1f} MiB"


def _shard_bytes(arg_info: Any, sharding: Any) -> int:
    leaves = jax.tree.leaves(arg_info)
    shardings = jax.tree.leaves(sharding)
    return sum(
        math.prod(s.shard_shape(a._aval.shape)) * a._aval.dtype.itemsize for a, s in zip(leaves, shardings)
    )


def step_memory(compiled: Any) -> StepMemory:
    """The per-device terms of a compiled train step (arguments: params, opt_state, frozen, batch, step)."""
    ma = compiled.memory_analysis()
    if ma is None:
        raise RuntimeError(f"{jax.default_backend()} gives no memory_analysis() for compiled programs")
    (params, opt_state, frozen, batch, _), _ = compiled.args_info
    (params_sh, opt_sh, frozen_sh, batch_sh, _), _ = compiled.input_shardings
    param_bytes = _shard_bytes(params, params_sh)
    return StepMemory(
        parameters=param_bytes,
        optimizer_state=_shard_bytes(opt_state, opt_sh),
        frozen=_shard_bytes(frozen, frozen_sh),
        batch=_shard_bytes(batch, batch_sh),
        temporaries=int(ma.temp_size_in_bytes),
        gradients=param_bytes,
        outputs=int(ma.output_size_in_bytes),
        aliased=int(ma.alias_size_in_bytes),
        generated_code=int(ma.generated_code_size_in_bytes),
    )


class DoesNotFit(ValueError):
    """The compiled step needs more memory than the device has (a config error: train() reports it in one line)."""


def host_memory_available() -> int | None:
    """Bytes a new allocation can get on this host without swapping: the kernel's MemAvailable, capped by this
    process's cgroup (v2) limit when there is one (a container, a SLURM job). None where neither is readable."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            limits += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f_max, open("/sys/fs/cgroup/memory.current") as f_cur:
            cap = f_max.read().strip()
            if cap != "max":
                limits.append(int(cap) - int(f_cur.read().strip()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def device_memory_limit(device: Any) -> tuple[int, str] | None:
    """(bytes a train step may use on `device`, where that number comes from), or None where nothing says.
    An accelerator reports its own limit; the CPU devices of a host share its available memory."""
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"], f"{device.device_kind} (memory_stats bytes_limit)"
    if getattr(device, "platform", None) == "cpu":
        available = host_memory_available()
        if available is None:
            return None
        n = sum(1 for d in jax.local_devices() if d.platform == "cpu")
        return available // n, f"host memory per CPU device ({_size(available)} available, shared by {n})"
    return None


def check_fits(compiled: Any, device: Any) -> StepMemory | None:
    """Raises DoesNotFit, naming the largest terms and the keys that help, when the compiled train step's peak
    exceeds what `device` may use (`device_memory_limit`: an accelerator's bytes_limit, a CPU device's share of
    the host's available memory). Returns the terms; None (no check) where no limit is known. The peak counts
    the argument buffers once, so it holds before or after the state is allocated; before, a step whose state
    alone cannot fit is reported instead of failing to allocate."""
    limit = device_memory_limit(device)
    if limit is None:
        return None
    memory = step_memory(compiled)
    if not memory.fits(limit[0]):
        raise DoesNotFit(memory.message(*limit))
    return memory
