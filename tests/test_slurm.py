"""The SLURM launcher on a real SLURM: scripts/launch_slurm.sh submits a two-process run to a one-node SLURM on
this machine, started by scripts/local_slurm.sh (slurmctld, slurmd and munged on localhost, 2 CPUs and a gpu:2
generic resource with stand-in devices, so the launcher's `#SBATCH --gpus-per-node=2` is accepted unchanged).

Each run is the launcher's usual `--per=gpu` job: `srun` starts two `python -m lax_pretrain.train` tasks, which
start jax.distributed from SLURM's environment (JAX's SLURM detection) and train a tiny CoLA + LaX LLaMA on one
CPU device each (JAX_PLATFORMS=cpu and no XLA_FLAGS in the environment sbatch passes on), 40 steps on mesh
data=2 spanning the two processes, logging every 5 and checkpointing every 10 steps.

  uninterrupted   the job ends at step 40 with one history: each logged step once, the step-0 record counting
                  both processes' devices.
  preempted       `scancel --signal=TERM` after the first checkpoint (what `#SBATCH --signal=TERM@120` does before
                  the time limit) stops both processes after the same step; the batch script requeues the job,
                  which resumes from the checkpoint and ends with the uninterrupted run's loss at every step.
  cancelled       `scancel` (a cancel, which also sends SIGTERM first) is not undone by that requeue.

Needs root and Debian's slurm-wlm and munge (`scripts/local_slurm.sh install`; `make install-test` runs it as
root). Without them these tests fail and say so; not as root they are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lax_pretrain.config import from_compact
from lax_pretrain.data import tfds_io
from lax_pretrain.train.metrics import read_metrics

pytestmark = pytest.mark.slow  # real SLURM jobs: `pytest -m 'not slow'` skips them

REPO = Path(__file__).resolve().parent.parent
LOCAL_SLURM = str(REPO / "scripts" / "local_slurm.sh")
ARG = "nano,kind=cola,lax=kron"
STEPS = 40
OVERRIDES = {
    "model.d_model": 64,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.num_kv_heads": 2,
    "model.ffn_dim": 128,
    **{f"model.proj.{p}.rank": 16 for p in ("q", "k", "v", "o", "gate", "up", "down")},
    "data.seq_len": 32,
    "data.eval_batches": 1,
    "train.steps": STEPS,
    "train.batch_size": 8,
    "train.log_every": 5,
    "train.eval_every": STEPS,
    "train.checkpoint_every": 10,
    "optim.warmup_steps": 2,
    "wandb.mode": "disabled",
}
JOB_TIMEOUT_S = 240
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}


def sh(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm():
    """A running local SLURM (started here, and stopped at the end unless it was running before)."""
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root: scripts/local_slurm.sh starts its daemons as root")
    if not all(shutil.which(c) for c in ("slurmctld", "slurmd", "munged", "sbatch")):
        pytest.fail(
            "SLURM is not installed: run `scripts/local_slurm.sh install` (as root; make install-test does)"
        )
    was_running = sh(LOCAL_SLURM, "status").returncode == 0
    started = sh(LOCAL_SLURM, "start")
    assert started.returncode == 0, started.stdout + started.stderr
    yield
    if not was_running:
        stopped = sh(LOCAL_SLURM, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture(scope="module")
def data():
    """The dataset, built once here, before two processes would wait on each other's build."""
    tfds_io.build_if_needed(from_compact("llama", ARG).data)  # into $TFDS_DATA_DIR (conftest.py)


def job_env() -> dict[str, str]:
    """What sbatch passes on to the job (its default --export=ALL): this session's TFDS_DATA_DIR and HOME,
    JAX on the CPU with one device per process; nothing from a SLURM job this test may itself run in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.pop("XLA_FLAGS", None)  # conftest.py's 8 fake devices
    env["JAX_PLATFORMS"] = "cpu"
    return env


def launch(workdir: Path) -> int:
    out = subprocess.run(
        [
            "bash",
            "scripts/launch_slurm.sh",
            "--nodes=1",
            "--gpus_per_node=2",
            "--per=gpu",
            f"--workdir={workdir}",
            "--cpus_per_task=1",
            "--time=0:10:00",
            "--",
            f"--config=configs/llama.py:{ARG}",
            *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
        ],
        cwd=REPO,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return int(re.fullmatch(r"Submitted batch job (\d+)", out.stdout.strip())[1])


def job_info(job: int) -> dict[str, str]:
    out = sh("scontrol", "show", "job", "--oneliner", str(job))
    assert out.returncode == 0, out.stderr
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def job_output(workdir: Path, job: int) -> str:
    path = workdir / "slurm" / f"{job}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_job(workdir: Path, job: int) -> dict[str, str]:
    """Waits for the job to end (a requeued job is pending again, not ended); its final scontrol record."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (info := job_info(job))["JobState"] not in DONE_STATES:
        if time.monotonic() > deadline:
            sh("scancel", str(job))
            pytest.fail(
                f"job {job} still {info['JobState']} after {JOB_TIMEOUT_S} s:\n{job_output(workdir, job)[-4000:]}"
            )
        time.sleep(1)
    return info


def losses(workdir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(workdir) if "loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(slurm, data, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("slurm") / "uninterrupted"
    job = launch(workdir)
    info = wait_job(workdir, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "0", job_output(workdir, job)[-4000:]
    return workdir


def test_uninterrupted_two_process_run(uninterrupted):
    records = read_metrics(uninterrupted)
    assert [s for s, _ in losses(uninterrupted)] == list(range(5, STEPS + 1, 5))  # once each: one history
    assert records[0]["step"] == 0 and records[0]["num_devices"] == 2  # one CPU device from each process
    (output,) = [p.read_text(errors="replace") for p in (uninterrupted / "slurm").glob("*.out")]
    assert output.count(f"done at step {STEPS}") == 2, output[-4000:]  # both tasks ran to the end


def wait_first_checkpoint(workdir: Path, job: int) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (workdir / "checkpoints" / "10").is_dir():  # complete: orbax renames it into place
        info = job_info(job)
        assert info["JobState"] in ("PENDING", "RUNNING") and time.monotonic() < deadline, (
            info["JobState"],
            job_output(workdir, job)[-4000:],
        )
        time.sleep(0.1)


def test_preempted_run_is_requeued_and_resumes_exactly(uninterrupted, tmp_path):
    workdir = tmp_path / "preempted"
    job = launch(workdir)
    wait_first_checkpoint(workdir, job)
    signalled = sh("scancel", "--signal=TERM", str(job))  # the training tasks, as --signal=TERM@120 does
    assert signalled.returncode == 0, signalled.stderr

    info = wait_job(workdir, job)
    output = job_output(workdir, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", output[-4000:]
    stops = re.findall(r"preempted at step (\d+)", output)
    assert len(stops) == 2 and stops[0] == stops[1], output[-4000:]  # both processes, the same step
    assert 10 <= int(stops[0]) < STEPS
    assert f"resumed from step {stops[0]}" in output and output.count(f"done at step {STEPS}") == 2, output[
        -4000:
    ]
    assert "requeueing job" in output  # by the batch script (SLURM requeues nothing on its own here)

    expected = losses(uninterrupted)
    got = losses(workdir)
    assert [s for s, _ in got] == [s for s, _ in expected]  # each step once, across the requeue
    for (step, loss), (_, want) in zip(got, expected):
        assert loss == pytest.approx(want, rel=1e-6, abs=1e-6), step
    assert json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])["num_devices"] == 2


def test_cancelled_run_stays_cancelled(slurm, data, tmp_path):
    """`scancel JOBID` sends SIGTERM too (SIGKILL follows after KillWait): the run may checkpoint and say
    "preempted at step k", but the batch script requeues only a job that is still RUNNING, not a cancelled one."""
    workdir = tmp_path / "cancelled"
    job = launch(workdir)
    wait_first_checkpoint(workdir, job)
    cancelled = sh("scancel", str(job))
    assert cancelled.returncode == 0, cancelled.stderr
    info = wait_job(workdir, job)
    output = job_output(workdir, job)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", output[-4000:]
    assert "requeueing job" not in output
