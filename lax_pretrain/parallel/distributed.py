"""Multi-host start-up: `jax.distributed.initialize()` from the config or the environment.

Three ways in, first match wins:
  explicit   `config.distributed.coordinator/num_processes/process_id` (or JAX_COORDINATOR_ADDRESS /
             JAX_NUM_PROCESSES / JAX_PROCESS_ID): anything, including several CPU processes on one machine.
  forced     LAX_DISTRIBUTED=1 in the environment: `jax.distributed.initialize()` with JAX's own cluster
             detection. scripts/launch_tpu_pod.sh sets it: a GCE TPU VM pod is recognised through the metadata
             server, which only JAX queries, and that must not happen on every laptop run.
  auto       (`config.distributed.auto`, default on) inside a multi-task SLURM step (srun: the variables JAX's
             SLURM detection reads) or on a GKE TPU pod (TPU_WORKER_HOSTNAMES lists several hosts).
A single process does nothing. CPU processes talk through gloo (JAX's default CPU collectives).
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
            raise ValueError(
                "distributed.coordinator is set: distributed.num_processes and distributed.process_id "
                "(or JAX_NUM_PROCESSES / JAX_PROCESS_ID) must be set too"
            )
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
        return True
    if os.environ.get("LAX_DISTRIBUTED", "") == "1":
        jax.distributed.initialize()  # JAX's cluster detection fills in the coordinator and ids
        return True
    if dist_cfg.get("auto", True) and (_in_slurm_step() or _on_gke_tpu_pod()):
        jax.distributed.initialize()
        return True
    return False


def _in_slurm_step() -> bool:
    """Inside `srun` with several tasks. A batch script's own shell (SLURM_JOB_ID, SLURM_NTASKS, but no step
    variables) is not: initialising there would wait forever for tasks that never start."""
    step_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    return (
        all(v in os.environ for v in step_vars)
        and (_env_int("SLURM_STEP_NUM_TASKS") or _env_int("SLURM_NTASKS") or 1) > 1
    )


def _on_gke_tpu_pod() -> bool:
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
