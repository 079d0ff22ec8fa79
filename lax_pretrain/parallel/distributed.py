"""Multi-host start-up (`jax.distributed.initialize()` from the config or the environment) and the stop step
every process agrees on when one of them is preempted (`Preemption`).

Start-up, three ways in, first match wins:
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

import json
import os
import signal
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def gather_json(value: Any) -> list:
    """`value` (JSON-serializable) of every process, in process order, on every process. A collective: every
    process calls it at the same point."""
    if jax.process_count() == 1:
        return [value]
    raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([raw.size], np.int64)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: raw.size] = raw
    everyone = multihost_utils.process_allgather(padded).reshape(len(sizes), -1)
    return [json.loads(bytes(everyone[i, : sizes[i]])) for i in range(len(sizes))]


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


class Preemption:
    """Agrees on when to stop: every process of a run stops after the same step when any of them is told to.

    With `jax.distributed` initialised (any multi-process run), JAX's preemption sync manager decides: its
    notifier (SIGTERM, JAX's default preemption notice) tells the coordination service, which takes the step
    after the furthest one any process has reached as the stop step, and `reached_preemption_sync_point(step)`
    turns True at that step on every process. Until a notice comes it is a local check (~0.1 us): no
    collective, no host sync per step. The notifier owns the process's C-level SIGTERM handler, so no Python
    handler is installed in that case (one would replace it, and only the process that got the signal would
    stop: the others would wait in the next collective for ever). orbax's `reached_preemption` asks the same.

    A single process without `jax.distributed` has no one to agree with: SIGTERM sets a flag.

    Every process must call `should_stop` with the same steps, in order (the sync manager compares each
    process's latest step). A notice that comes while a resumed run is still starting up (before the loop's
    first call) can name a step that has already passed: that run then ends at the scheduler's kill, its last
    checkpoint intact.
    """

    def __init__(self):
        self._coordinated = jax.distributed.is_initialized()
        self._requested = False
        self._previous = None

    def __enter__(self) -> Preemption:
        if self._coordinated:
            self.should_stop(0)  # a disabled preemption service is an error now, before anything compiles
        else:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self._requested = True

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step` (the number of steps done)."""
        if not self._coordinated:
            return self._requested
        try:
            stop = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as e:  # jax_enable_preemption_service=False: nothing could agree on a stop step
            raise ValueError(
                "multi-process runs agree on preemption through JAX's preemption service, which is disabled "
                "(jax_enable_preemption_service=False); enable it"
            ) from e
        self._requested |= stop
        return stop

    @property
    def requested(self) -> bool:
        return self._requested

    def __exit__(self, *exc):
        if not self._coordinated:
            signal.signal(signal.SIGTERM, self._previous)
