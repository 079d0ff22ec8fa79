"""Multi-host start-up: `jax.distributed.initialize()` from the config or the environment.

TPU pods and SLURM allocations are detected by JAX itself (cluster auto-detection); an explicit coordinator,
process count and id in `config.distributed` (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)
covers anything else, including several processes on one machine in tests.
"""

from __future__ import annotations

import os
from typing import Any

import jax


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def maybe_initialize_distributed(dist_cfg: Any) -> bool:
    """Initialises the multi-controller runtime when there is more than one process. Returns whether it did."""
    coordinator = dist_cfg.get("coordinator") or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = dist_cfg.get("num_processes") or _env_int("JAX_NUM_PROCESSES") or 0
    process_id = dist_cfg.get("process_id", -1)
    if process_id < 0:
        process_id = _env_int("JAX_PROCESS_ID")
        process_id = -1 if process_id is None else process_id
    if coordinator:
        if num_processes < 1 or process_id < 0:
            raise ValueError("distributed.coordinator is set: distributed.num_processes and distributed.process_id "
                             "(or JAX_NUM_PROCESSES / JAX_PROCESS_ID) must be set too")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return True
    on_cluster = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    on_tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if dist_cfg.get("auto", True) and (on_cluster or on_tpu_pod):
        jax.distributed.initialize()  # JAX's cluster detection fills in the coordinator and ids
        return True
    return False
