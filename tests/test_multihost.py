"""Multi-host: two local processes x 2 CPU devices (jax.distributed over localhost, gloo collectives) train the
same as one process x 4 devices, each loading only its slice of every batch; the checkpoint they write
together restores in one process; only process 0 writes metrics. A SIGTERM to one of them stops both after
the same step with one checkpoint, and the run resumed from it ends like an uninterrupted one.

The two processes run the real CLI (`python -m lax_pretrain.train`) on mesh data=2 x tensor=2 (the data axis
spans the hosts, tensor stays inside each), a tiny CoLA + LaX LLaMA (d_model 64, 4 heads, 2 layers, rank 16).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from lax_pretrain.config import from_compact
from lax_pretrain.data import tfds_io
from lax_pretrain.train import train
from lax_pretrain.train.checkpoint import load_trained_model
from lax_pretrain.train.metrics import read_metrics

pytestmark = pytest.mark.slow  # multi-process runs: `pytest -m 'not slow'` skips them

REPO = Path(__file__).resolve().parent.parent
ARG = "nano,kind=cola,lax=kron"
STEPS = 3
TIMEOUT_S = 300


def overrides(data_dir: str, **extra) -> dict:
    return {
        "model.d_model": 64,
        "model.num_layers": 2,
        "model.num_heads": 4,
        "model.num_kv_heads": 4,
        "model.ffn_dim": 128,
        **{f"model.proj.{p}.rank": 16 for p in ("q", "k", "v", "o", "gate", "up", "down")},
        "data.seq_len": 16,
        "data.eval_batches": 1,
        "data.data_dir": data_dir,
        "train.steps": STEPS,
        "train.batch_size": 8,
        "train.log_every": 1,
        "train.eval_every": STEPS,
        "train.checkpoint_every": STEPS,
        "optim.warmup_steps": 2,
        "wandb.mode": "disabled",
        "mesh.data": 2,
        "mesh.fsdp": 1,
        "mesh.tensor": 2,
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("multihost_tfds"))
    config = from_compact("llama", ARG)
    config.data.data_dir = root
    tfds_io.build_if_needed(config.data)
    return root


def start_process(
    process_id: int, port: int, workdir: Path, data_dir: str, log: Path, extra: dict
) -> subprocess.Popen:
    args = [f"--config.{k}={v}" for k, v in overrides(data_dir, **extra).items()]
    args += [
        f"--config.distributed.coordinator=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={process_id}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lax_pretrain.train",
            f"--config=configs/llama.py:{ARG}",
            f"--workdir={workdir}",
            *args,
        ],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def one_process_config(data_dir: str, **extra):
    """The two processes' config for one process on 4 of this process's 8 devices."""
    config = from_compact("llama", ARG)
    config.update_from_flattened_dict(overrides(data_dir, **extra))
    config.mesh.num_devices = 4
    return config


def start_pair(workdir: Path, data_dir: str, logs: list[Path], extra: dict) -> list[subprocess.Popen]:
    port = free_port()
    return [start_process(i, port, workdir, data_dir, logs[i], extra) for i in range(2)]


def wait_all(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    try:
        for proc, log in zip(procs, logs):
            assert proc.wait(timeout=TIMEOUT_S) == 0, log.read_text()[-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def test_two_processes_train_like_one(data_dir, tmp_path):
    workdir = tmp_path / "two_processes"
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    procs = start_pair(workdir, data_dir, logs, {})
    try:
        # Meanwhile, the reference in this process: the same config on 4 of the 8 devices.
        reference = train(one_process_config(data_dir), tmp_path / "one_process")
    finally:
        wait_all(procs, logs)
    for log in logs:
        assert f"done at step {STEPS}" in log.read_text()

    expected = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "one_process") if "loss" in r}
    records = read_metrics(workdir)
    got = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert [s for s, _ in got] == list(range(1, STEPS + 1))  # once each: only process 0 writes metrics
    assert records[0]["num_devices"] == 4
    for step, loss in got:
        assert loss == pytest.approx(expected[step], rel=1e-5), step

    # The checkpoint both processes wrote (each its own shards) restores whole in one process.
    model, _, step = load_trained_model(workdir)
    assert step == STEPS
    trained = {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(reference["final_params"])
    }
    restored = nnx.state(model, nnx.Param)
    for k, v in jax.tree_util.tree_leaves_with_path(restored):
        np.testing.assert_allclose(
            np.asarray(v),
            trained[jax.tree_util.keystr(k)],
            rtol=1e-4,
            atol=1e-5,
            err_msg=jax.tree_util.keystr(k),
        )


PREEMPT_STEPS = 40


def test_sigterm_on_one_process_stops_both_at_the_same_step(data_dir, tmp_path):
    """Only process 1 gets SIGTERM. JAX's preemption sync (through jax.distributed) stops both after the same
    step, where they write one complete checkpoint together and exit 0. Two processes resume from it to the
    end: metrics.jsonl then holds each step once, with the uninterrupted one-process run's losses (rel 1e-5,
    as in the test above: the same math on a different device split)."""
    extra = {
        "train.steps": PREEMPT_STEPS,
        "train.eval_every": PREEMPT_STEPS,
        "train.checkpoint_every": PREEMPT_STEPS,
    }
    workdir = tmp_path / "run"
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    procs = start_pair(workdir, data_dir, logs, extra)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(
            "loss" in r for r in read_metrics(workdir)
        ):  # process 0 logs after the step's collectives
            assert time.monotonic() < deadline and procs[0].poll() is None, logs[0].read_text()[-4000:]
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGTERM)
        reference = train(one_process_config(data_dir, **extra), tmp_path / "one_process")
    finally:
        wait_all(procs, logs)
    stopped = [re.findall(r"^preempted at step (\d+)$", log.read_text(), re.M) for log in logs]
    assert stopped[0] == stopped[1] and len(stopped[0]) == 1, [log.read_text()[-2000:] for log in logs]
    stop_step = int(stopped[0][0])
    assert 0 < stop_step < PREEMPT_STEPS
    assert max(r["step"] for r in read_metrics(workdir)) == stop_step
    _, _, restored_step = load_trained_model(workdir)  # complete: both processes' shards restore
    assert restored_step == stop_step

    logs = [tmp_path / f"resumed_{i}.log" for i in range(2)]
    wait_all(start_pair(workdir, data_dir, logs, extra), logs)
    for log in logs:
        assert f"done at step {PREEMPT_STEPS}" in log.read_text()
    expected = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "one_process") if "loss" in r]
    got = [(r["step"], r["loss"]) for r in read_metrics(workdir) if "loss" in r]
    assert [step for step, _ in got] == [step for step, _ in expected] == list(range(1, PREEMPT_STEPS + 1))
    for (step, loss), (_, want) in zip(got, expected):
        assert loss == pytest.approx(want, rel=1e-5), step
    assert reference["status"] == "done"
