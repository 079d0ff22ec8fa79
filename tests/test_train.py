"""The training pipeline end to end: exact resume after SIGKILL (one history in metrics.jsonl and in the W&B
offline run, read back), SIGTERM, NaN stop, damaged checkpoints, W&B, metrics.jsonl, learning, ViT, gradient
accumulation, and the config errors that come before compiling.

Everything runs a tiny CoLA + LaX LLaMA (d_model 64, 2 layers, rank 16, 32-token windows, batch 8) on the
8 fake CPU devices of conftest.py. One uninterrupted 100-step run (`reference`) is the yardstick that the
interrupted-and-resumed runs must match bit for bit. Subprocess runs inherit XLA_FLAGS, so they see the same
devices and compile the same programs as the in-process runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache as cc

import lax_pretrain.train.program as program_lib
from lax_pretrain.config import from_compact, vit_config
from lax_pretrain.data import tfds_io
from lax_pretrain.data.config import FASHION_MNIST_DIR
from lax_pretrain.train import train
from lax_pretrain.train.checkpoint import load_trained_model
from lax_pretrain.train.metrics import DISCARDED_FILE, SUPERSEDED_WANDB_DIR, read_metrics

pytestmark = pytest.mark.slow  # end-to-end training runs: `pytest -m 'not slow'` skips them

REPO = Path(__file__).resolve().parent.parent
LLAMA_ARG = "nano,kind=cola,lax=kron"
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
STEPS = 100  # the reference run's length
SUBPROCESS_TIMEOUT_S = 180


# ----------------------------------------------------------------------------------------------- helpers


def tiny_overrides(data_dir: str, **extra) -> dict:
    """The tiny LLaMA as dotted-key overrides of `from_compact("llama", LLAMA_ARG)`: applied in-process by `llama` and
    on the command line by `cli`, so both kinds of run train exactly the same thing."""
    o = {
        "model.d_model": 64,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.num_kv_heads": 2,
        "model.ffn_dim": 128,
        **{f"model.proj.{p}.rank": 16 for p in PROJECTIONS},
        "data.seq_len": 32,
        "data.eval_batches": 2,
        "data.data_dir": data_dir,
        "train.steps": STEPS,
        "train.batch_size": 8,
        "train.log_every": 10,
        "train.eval_every": 50,
        "train.checkpoint_every": 20,
        "wandb.mode": "disabled",
    }
    o.update({k.replace("__", "."): v for k, v in extra.items()})
    return o


def apply(config, overrides: dict):
    config.update_from_flattened_dict(overrides)
    return config


def llama(data_dir: str, **extra):
    return apply(from_compact("llama", LLAMA_ARG), tiny_overrides(data_dir, **extra))


def cli(workdir: Path, overrides: dict) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lax_pretrain.train",
        f"--config=configs/llama.py:{LLAMA_ARG}",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]


def subprocess_env() -> dict:
    # The in-process platform (cpu here) and conftest's XLA_FLAGS (8 host devices): same mesh, same programs,
    # so the subprocess also finds them in this module's compilation cache.
    env = dict(os.environ, JAX_PLATFORMS=jax.default_backend(), XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
    if jax.config.jax_compilation_cache_dir:
        env.update(
            JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def start(workdir: Path, overrides: dict, log_path: Path) -> subprocess.Popen:
    with log_path.open("w") as log:
        return subprocess.Popen(
            cli(workdir, overrides), cwd=REPO, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT
        )


def wait_for(
    condition, proc: subprocess.Popen, log_path: Path, what: str, timeout_s: float = SUBPROCESS_TIMEOUT_S
):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        if proc.poll() is not None:
            output = log_path.read_text()[-4000:]
            pytest.fail(f"the run exited (rc {proc.returncode}) before {what}:\n{output}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}:\n{log_path.read_text()[-4000:]}")


def finalized_steps(workdir: Path) -> list[int]:
    """Step dirs that orbax has committed (it writes `<step>.orbax-checkpoint-tmp-*`, renames when done)."""
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(
        int(d.name)
        for d in ckpts.iterdir()
        if d.is_dir() and d.name.isdigit() and (d / "_CHECKPOINT_METADATA").exists()
    )


def train_records(workdir: Path) -> list[dict]:
    return [r for r in read_metrics(workdir) if "loss" in r]


def training_started(workdir: Path) -> bool:
    """Whether a running run has logged a train step (it may be writing a line while we read)."""
    try:
        return bool(train_records(workdir))
    except json.JSONDecodeError:
        return False


def last_loss_at(workdir: Path, step: int) -> float:
    losses = [r["loss"] for r in train_records(workdir) if r["step"] == step]
    assert losses, f"no train record for step {step} in {workdir}/metrics.jsonl"
    return losses[-1]


def host(params) -> dict:
    """Flat {path: numpy array} of a parameter state."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def assert_params_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def newest_checkpoint(workdir: Path) -> tuple[int, dict]:
    """(step, host params) of the newest checkpoint that restores, read the way sampling/export read it."""
    model, _, step = load_trained_model(workdir)
    return step, host(nnx.state(model, nnx.Param))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


LEVELDB_BLOCK = 32 * 1024
LEVELDB_FULL, LEVELDB_FIRST, LEVELDB_MIDDLE, LEVELDB_LAST = 1, 2, 3, 4


def wandb_history(run_dir: Path) -> list[tuple[int, dict]]:
    """(step, {key: value}) of each history row in an offline W&B run's .wandb file, in file order.

    wandb 0.31 ships no Python reader of its transaction log (the Go core writes and reads it), so this decodes
    the framing, LevelDB's log format: after a 7-byte file header, 32 KiB blocks of chunks, each a 7-byte
    header (CRC-32 of type byte + payload, length, type) and a payload; a record is one FULL chunk or
    FIRST, MIDDLE..., LAST. Each record is then parsed with wandb's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    (log_file,) = run_dir.glob("run-*.wandb")
    data = log_file.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    rows, payload, pos = [], b"", 7
    while pos + 7 <= len(data):
        if LEVELDB_BLOCK - pos % LEVELDB_BLOCK < 7:  # a block's tail too short for a header is padding
            pos += LEVELDB_BLOCK - pos % LEVELDB_BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        assert kind in (LEVELDB_FULL, LEVELDB_FIRST, LEVELDB_MIDDLE, LEVELDB_LAST), (pos, kind)
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, pos
        pos += 7 + length
        payload = chunk if kind in (LEVELDB_FULL, LEVELDB_FIRST) else payload + chunk
        if kind in (LEVELDB_FULL, LEVELDB_LAST):
            record = wandb_internal_pb2.Record.FromString(payload)
            if record.WhichOneof("record_type") == "history":
                row = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
                rows.append((record.history.step.num, row))
    return rows


def isolate_wandb(monkeypatch, tmp_path: Path) -> None:
    """W&B's own directories in tmp_path (for this process and the runs it starts), and no WANDB_MODE override."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Most runs here compile the same programs (same model, shapes, mesh and schedule): a persistent
    compilation cache of this module's own, shared with the subprocess runs, compiles each of them once.
    Compiled code is the same either way; the previous settings come back after the module."""
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


@pytest.fixture(scope="session")
def data_dir(tfds_dir):
    """The session's TFDS data dir, Shakespeare built into it up front: every run here, in-process or
    subprocess, reads it and none of them builds."""
    config = from_compact("llama", LLAMA_ARG)
    config.data.data_dir = tfds_dir
    tfds_io.build_if_needed(config.data)
    return tfds_dir


@pytest.fixture(scope="session")
def fashion_mnist_dir(data_dir):
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip(
            f"{FASHION_MNIST_DIR} is missing (Debian's dataset-fashion-mnist; "
            "scripts/install_system_data.sh installs it)"
        )
    config = vit_config("tiny")
    config.data.data_dir = data_dir
    tfds_io.build_if_needed(config.data)  # once per session, a few seconds
    return data_dir


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The uninterrupted STEPS-step run, in-process: (workdir, summary, host final params)."""
    workdir = tmp_path_factory.mktemp("reference")
    summary = train(llama(data_dir), workdir)
    assert summary["status"] == "done" and summary["step"] == STEPS
    return workdir, summary, host(summary["final_params"])


# --------------------------------------------------------------------------------- metrics and learning


def test_metrics_jsonl_and_config_json(reference):
    workdir, _, _ = reference
    records = read_metrics(workdir)
    first = records[0]
    assert first["step"] == 0
    for key in ("eval_loss", "eval_ppl", "params", "non_embedding_params", "lax_params", "flops_per_token"):
        assert key in first, key
    assert first["params"] > 0 and first["lax_params"] > 0
    assert first["eval_ppl"] == pytest.approx(math.exp(first["eval_loss"]), rel=1e-5)

    train_recs = train_records(workdir)
    assert [r["step"] for r in train_recs] == list(range(10, STEPS + 1, 10))
    for r in train_recs:
        for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_s"):
            assert key in r, (key, r)
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["lr"] > 0
        assert r["tokens_per_s"] > 0 and r["tflops_per_s"] > 0
        assert "mfu" not in r  # no peak FLOP/s is known for CPUs: omitted, never guessed
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 50, 100]
    for r in evals:
        assert r["eval_ppl"] == pytest.approx(math.exp(r["eval_loss"]), rel=1e-5)
        # GaLore's (batches + 1) divisor: always lower than the true perplexity.
        assert r["eval_ppl_galore_quirk"] < r["eval_ppl"]

    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["d_model"] == 64 and config["train"]["steps"] == STEPS
    assert config["model"]["proj"]["q"]["rank"] == 16


def test_validation_loss_falls(reference):
    workdir, _, _ = reference
    evals = [r for r in read_metrics(workdir) if "eval_loss" in r]
    initial, final = evals[0]["eval_loss"], evals[-1]["eval_loss"]
    assert evals[-1]["step"] == STEPS
    assert final < 0.8 * initial, (initial, final)


# --------------------------------------------------------------------------------------------- resume


def test_resume_after_sigkill_is_exact(reference, data_dir, tmp_path, monkeypatch):
    """kill -9 between checkpoints (once a step after the newest checkpoint is logged), then resume: the same
    parameters as never stopping, and one history. metrics.jsonl holds each step once with the uninterrupted
    run's losses (the first records of the steps trained again are in metrics.discarded.jsonl), and so does the
    W&B offline run in <workdir>/wandb, read back from its .wandb file (the killed run's is superseded)."""
    isolate_wandb(monkeypatch, tmp_path)
    ref_dir, _, ref_params = reference
    workdir, log_path = tmp_path / "run", tmp_path / "run.log"
    proc = start(workdir, tiny_overrides(data_dir, wandb__mode="offline"), log_path)

    def logged_past_a_checkpoint() -> bool:
        saved = finalized_steps(workdir)
        return bool(saved) and training_started(workdir) and train_records(workdir)[-1]["step"] > saved[-1]

    try:
        wait_for(logged_past_a_checkpoint, proc, log_path, "a logged step after a checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(r["step"] for r in read_metrics(workdir))
    assert killed_at < STEPS, "the run finished before it was killed: nothing was tested"
    # The command line built the very config the in-process reference ran.
    config_json = lambda d: json.loads((d / "config.json").read_text())  # noqa: E731
    assert config_json(workdir) == {**config_json(ref_dir), "wandb": config_json(workdir)["wandb"]}

    summary = train(llama(data_dir, wandb__mode="offline"), workdir)
    resumed_from = summary["start_step"]
    assert summary["status"] == "done" and summary["step"] == STEPS
    assert 0 < resumed_from < killed_at and resumed_from % 20 == 0
    assert_params_identical(host(summary["final_params"]), ref_params)

    def losses(d: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in train_records(d)]

    assert losses(workdir) == losses(ref_dir)  # each step once, bit for bit the uninterrupted run's
    evals = [(r["step"], r["eval_loss"]) for r in read_metrics(workdir) if "eval_loss" in r]
    assert evals == [(r["step"], r["eval_loss"]) for r in read_metrics(ref_dir) if "eval_loss" in r]
    discarded = [json.loads(line) for line in (workdir / DISCARDED_FILE).read_text().splitlines()]
    assert discarded and all(d["resumed_from_step"] == resumed_from for d in discarded)
    assert {d["record"]["step"] for d in discarded if "record" in d} == {
        r["step"] for r in train_records(ref_dir) if resumed_from < r["step"] <= killed_at
    }

    (run_dir,) = (workdir / "wandb").glob("offline-run-*")
    assert len(list((workdir / SUPERSEDED_WANDB_DIR).glob("offline-run-*"))) == 1  # the killed run's
    rows = wandb_history(run_dir)
    assert [step for step, _ in rows] == sorted({r["step"] for r in read_metrics(workdir)})
    assert [(step, row["loss"]) for step, row in rows if "loss" in row] == losses(workdir)
    assert [(step, row["eval_loss"]) for step, row in rows if "eval_loss" in row] == evals


@pytest.fixture(scope="module")
def sigterm_run(data_dir, tmp_path_factory):
    """A subprocess run (a log record every step, no checkpoint before the end) sent SIGTERM once it is
    training; its newest checkpoint is read back, then the run is resumed in-process to the end."""
    tmp = tmp_path_factory.mktemp("sigterm")
    workdir, log_path = tmp / "run", tmp / "run.log"
    overrides = tiny_overrides(data_dir, train__log_every=1, train__checkpoint_every=STEPS)
    proc = start(workdir, overrides, log_path)
    try:
        wait_for(lambda: training_started(workdir), proc, log_path, "the first logged step")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = read_metrics(workdir)
    checkpoints = finalized_steps(workdir)
    restored = newest_checkpoint(workdir) if checkpoints else None
    summary = train(llama(data_dir), workdir)
    return dict(
        workdir=workdir,
        rc=proc.returncode,
        output=log_path.read_text(),
        records=records,
        checkpoints=checkpoints,
        restored=restored,
        summary=summary,
    )


def test_sigterm_saves_a_checkpoint_and_exits_0(sigterm_run):
    r = sigterm_run
    assert r["rc"] == 0, r["output"][-4000:]
    last_logged = max(x["step"] for x in r["records"])
    assert last_logged < STEPS, "the run finished before SIGTERM arrived: nothing was tested"
    assert f"preempted at step {last_logged}" in r["output"], r["output"][-4000:]
    assert r["checkpoints"], "SIGTERM left no checkpoint"
    newest = r["checkpoints"][-1]
    assert newest >= last_logged
    # Complete: it restores, and the resumed run starts from it and finishes.
    assert r["restored"] is not None and r["restored"][0] == newest
    assert all(np.isfinite(v).all() for v in r["restored"][1].values())
    summary = r["summary"]
    assert summary["start_step"] == newest
    assert summary["status"] == "done" and summary["step"] == STEPS


def test_resume_after_sigterm_is_exact(sigterm_run, reference):
    """Preempted between checkpoints, then resumed: the same parameters as never stopping. (The preemption
    checkpoint must hold the data position of the last step trained, not of a batch fetched after it.)"""
    ref_dir, _, ref_params = reference
    assert_params_identical(host(sigterm_run["summary"]["final_params"]), ref_params)
    assert last_loss_at(sigterm_run["workdir"], STEPS) == last_loss_at(ref_dir, STEPS)


# ------------------------------------------------------------------------------------------------ NaN


NAN_STEP = 15  # the first step whose loss (and parameters) are NaN


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    """A step that diverges (loss and parameters NaN from step NAN_STEP on; the step function is wrapped,
    inside the jit, because the loss function never sees the step index) stops the run with FloatingPointError;
    the checkpoint due at that very step is not written, the newest one left is from before the NaN, and a
    fresh run resumes there."""
    make_train_step = program_lib.make_train_step

    def diverging(*args, **kwargs):
        step_fn = make_train_step(*args, **kwargs)

        def step(trainable, opt_state, frozen, batch, step_index):
            trainable, opt_state, metrics = step_fn(trainable, opt_state, frozen, batch, step_index)
            nan_from_here = jnp.where(step_index + 1 >= NAN_STEP, jnp.nan, 1.0)
            trainable = jax.tree.map(lambda x: x * nan_from_here.astype(x.dtype), trainable)
            metrics = {**metrics, "loss": metrics["loss"] * nan_from_here}
            return trainable, opt_state, metrics

        return step

    monkeypatch.setattr(program_lib, "make_train_step", diverging)
    # log every 4, checkpoint every 5: no log at step 15, so it is the pre-save check that catches the NaN.
    workdir = tmp_path / "run"
    message = rf"loss became nan at step {NAN_STEP}\b.*last good checkpoint \(step 10\)"
    with pytest.raises(FloatingPointError, match=message) as e:
        train(llama(data_dir, train__log_every=4, train__checkpoint_every=5), workdir)
    assert str(workdir / "checkpoints") in str(e.value)
    assert finalized_steps(workdir) == [5, 10]
    assert all(math.isfinite(r["loss"]) for r in train_records(workdir))
    step, params = newest_checkpoint(workdir)
    assert step == 10 and all(np.isfinite(v).all() for v in params.values())

    monkeypatch.setattr(program_lib, "make_train_step", make_train_step)
    summary = train(llama(data_dir), workdir)
    assert summary["start_step"] == 10 and summary["status"] == "done" and summary["step"] == STEPS
    assert all(np.isfinite(v).all() for v in host(summary["final_params"]).values())
    assert math.isfinite(last_loss_at(workdir, STEPS))


# ---------------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def fallback_run(reference, data_dir, tmp_path_factory):
    """A copy of the reference run whose newest checkpoint (step 100) has every file under params/ truncated,
    resumed in-process with the same config; warnings from the checkpoint module are captured."""
    ref_dir, _, _ = reference
    workdir = tmp_path_factory.mktemp("fallback") / "run"
    shutil.copytree(ref_dir, workdir)
    damaged = [f for f in (workdir / "checkpoints" / str(STEPS) / "params").rglob("*") if f.is_file()]
    assert damaged
    for f in damaged:
        f.write_bytes(b"")
    config = llama(data_dir)
    handler = _Records()
    logger = logging.getLogger("lax_pretrain.train.checkpoint")
    logger.addHandler(handler)
    try:
        summary = train(config, workdir)
    finally:
        logger.removeHandler(handler)
    return dict(workdir=workdir, summary=summary, warnings=[r.getMessage() for r in handler.records])


def test_damaged_latest_checkpoint_falls_back_with_a_warning(fallback_run, reference):
    ref_dir, _, ref_params = reference
    warnings = fallback_run["warnings"]
    assert any(f"step {STEPS}" in w and "falling back" in w for w in warnings), warnings
    assert (fallback_run["workdir"] / "checkpoints.damaged" / str(STEPS) / "params").is_dir()  # kept, aside
    summary = fallback_run["summary"]
    assert summary["start_step"] == STEPS - 20  # the previous checkpoint
    assert summary["status"] == "done" and summary["step"] == STEPS
    assert_params_identical(host(summary["final_params"]), ref_params)
    assert last_loss_at(fallback_run["workdir"], STEPS) == last_loss_at(ref_dir, STEPS)


def test_run_resumed_past_a_damaged_checkpoint_leaves_a_good_one(fallback_run, reference):
    """After falling back from the damaged step-100 checkpoint and training to step 100 again, the newest
    checkpoint must be the new, good step 100 (not the damaged one, which would fall back again)."""
    _, _, ref_params = reference
    handler = _Records()
    logger = logging.getLogger("lax_pretrain.train.checkpoint")
    logger.addHandler(handler)
    try:
        step, params = newest_checkpoint(fallback_run["workdir"])
    finally:
        logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]
    assert step == STEPS
    assert_params_identical(params, ref_params)


# ------------------------------------------------------------------------------------------------ W&B


def test_wandb_disabled_writes_nothing(reference):
    workdir, _, _ = reference
    assert not (workdir / "wandb").exists()


TWO_STEPS = dict(train__steps=2, train__log_every=1, train__eval_every=2, train__checkpoint_every=2)


def test_wandb_offline_run_holds_one_row_per_step(data_dir, tmp_path, monkeypatch):
    """An offline run's .wandb file, read back: one row per step, a step's train and eval records merged. (Resumed
    runs: test_resume_after_sigkill_is_exact.)"""
    isolate_wandb(monkeypatch, tmp_path)
    workdir = tmp_path / "run"
    assert train(llama(data_dir, **TWO_STEPS, wandb__mode="offline"), workdir)["status"] == "done"
    (run_dir,) = (workdir / "wandb").glob("offline-run-*")
    rows = wandb_history(run_dir)
    assert [step for step, _ in rows] == [0, 1, 2]
    for key in ("eval_loss", "eval_ppl", "params", "flops_per_token"):
        assert key in rows[0][1], key
    for key in ("loss", "grad_norm", "tokens_per_s", "eval_loss", "eval_ppl"):
        assert key in rows[2][1], key
    records = read_metrics(workdir)
    assert [(step, row["loss"]) for step, row in rows if "loss" in row] == [
        (r["step"], r["loss"]) for r in records if "loss" in r
    ]


def test_eval_at_start_off_skips_the_initial_evaluation(data_dir, tmp_path):
    train(llama(data_dir, **TWO_STEPS, train__eval_at_start=False), tmp_path / "run")
    first, *rest = read_metrics(tmp_path / "run")
    assert first["step"] == 0 and "params" in first and "eval_loss" not in first
    assert [r["step"] for r in rest if "eval_loss" in r] == [2]


# ------------------------------------------------------------------------------------------------ ViT


def test_vit_trains_on_fashion_mnist(fashion_mnist_dir, tmp_path):
    config = apply(
        vit_config("tiny", kind="cola", lax="kron"),
        {
            "model.d_model": 32,
            "model.num_layers": 2,
            "model.num_heads": 2,
            "model.mlp_dim": 64,
            **{f"model.proj.{p}.rank": 8 for p in ("q", "k", "v", "o", "fc1", "fc2")},
            "data.data_dir": fashion_mnist_dir,
            "data.eval_batches": 2,
            "train.steps": 4,
            "train.batch_size": 16,
            "train.log_every": 2,
            "train.eval_every": 4,
            "train.checkpoint_every": 4,
            "wandb.mode": "disabled",
        },
    )
    workdir = tmp_path / "run"
    summary = train(config, workdir)
    assert summary["status"] == "done" and summary["step"] == 4
    records = read_metrics(workdir)
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 4]
    for r in evals:
        assert 0.0 <= r["eval_top1"] <= 1.0 and math.isfinite(r["eval_loss"])
        assert "eval_ppl" not in r
    trains = train_records(workdir)
    assert [r["step"] for r in trains] == [2, 4]
    for r in trains:
        assert r["images_per_s"] > 0 and "tokens_per_s" not in r and math.isfinite(r["loss"])
    assert finalized_steps(workdir) == [4]


# ------------------------------------------------------------------------------------ gradient accumulation


def test_grad_accum_matches_one_big_batch(data_dir, tmp_path):
    """Global batch 16 as one batch or as 2 micro-batches of 8, end to end through the loop: the same logged
    losses and, after 2 steps (warmup 1, so the second step updates at the peak lr), the same parameters up to
    float32 summation order. (Padded rows of different lengths: tests/test_step.py.)"""
    common = dict(
        train__steps=2,
        train__batch_size=16,
        train__log_every=1,
        train__eval_every=2,
        train__checkpoint_every=2,
        optim__warmup_steps=1,
    )
    one = train(llama(data_dir, **common), tmp_path / "one")
    two = train(llama(data_dir, train__grad_accum=2, **common), tmp_path / "two")
    rec_one, rec_two = train_records(tmp_path / "one"), train_records(tmp_path / "two")
    assert [r["step"] for r in rec_one] == [r["step"] for r in rec_two] == [1, 2]
    assert rec_one[1]["lr"] > 0
    for a, b in zip(rec_one, rec_two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    p_one, p_two = host(one["final_params"]), host(two["final_params"])
    assert p_one.keys() == p_two.keys()
    for k in p_one:
        # Measured: max |diff| 3.3e-7 on CPU, against an update of ~lr = 3e-3 per element in step 2.
        np.testing.assert_allclose(p_two[k], p_one[k], rtol=1e-5, atol=2e-6, err_msg=k)


# ---------------------------------------------------------------------------------------- pure-bf16 mode


def test_bf16_precision_trains_close_to_fp32(data_dir, tmp_path):
    """precision=bf16 (the CoLA code's model.to(bfloat16)): bf16 parameters throughout training, a finite loss
    that falls like the fp32 run's. Measured on CPU at 40 steps: final losses within ~1% of each other."""
    common = dict(train__steps=40, train__eval_every=40, train__checkpoint_every=40, optim__warmup_steps=5)
    train(llama(data_dir, **common), tmp_path / "fp32")
    bf16 = train(
        llama(data_dir, model__dtype="bfloat16", model__param_dtype="bfloat16", **common), tmp_path / "bf16"
    )
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16["final_params"])} == {jnp.dtype(jnp.bfloat16)}
    losses = {name: [r["loss"] for r in train_records(tmp_path / name)] for name in ("fp32", "bf16")}
    assert all(math.isfinite(v) for v in losses["bf16"])
    assert losses["bf16"][-1] < 0.8 * losses["bf16"][0]
    assert losses["bf16"][-1] == pytest.approx(losses["fp32"][-1], rel=0.05)


# ------------------------------------------------------------------------------------------- config errors


class CompileStarted(Exception):
    """Raised when train() lowers its step: it got past its config checks without reporting the error."""


@pytest.fixture
def no_compile(monkeypatch):
    def refuse(self):
        raise CompileStarted("train() went on to compile the step instead of reporting the bad config")

    monkeypatch.setattr(program_lib.Program, "lower_train_step", refuse)


EMPTY_DIR = "<empty dir>"
CONFIG_ERRORS = {
    "unknown_dataset": ({"data.name": "mnist"}, ValueError, r"data\.name='mnist'"),
    "image_data_for_llama": ({"data.name": "fashion_mnist"}, ValueError, r"data\.name='fashion_mnist'"),
    "batch_vs_grad_accum": (
        {"train.grad_accum": 3},
        ValueError,
        r"train\.batch_size=8 .*train\.grad_accum=3",
    ),
    "batch_vs_mesh": ({"train.batch_size": 12}, ValueError, r"train\.batch_size=12 .*data axes"),
    "bad_spec": ({"model.proj.q.rank": 0}, ValueError, r"model\.proj\.q\.rank"),
    "rank_above_full_rank": ({"model.proj.q.rank": 65}, ValueError, r"model\.proj\.q\.rank=65 exceeds"),
    "nan_lr": ({"optim.lr": float("nan")}, ValueError, r"optim\.lr=nan must be finite"),
    "negative_weight_decay": ({"optim.weight_decay": -0.1}, ValueError, r"optim\.weight_decay=-0\.1"),
    "unknown_wandb_mode": ({"wandb.mode": "offlne"}, ValueError, r"wandb\.mode='offlne'"),
    "vocab_too_small": ({"model.vocab_size": 100}, ValueError, r"model\.vocab_size=100"),
    "zero_steps": ({"train.steps": 0}, ValueError, r"train\.steps=0"),
    "negative_eval_batches": ({"data.eval_batches": -1}, ValueError, r"data\.eval_batches=-1"),
    "missing_prepared_c4": (
        {"data.name": "c4", "data.data_dir": EMPTY_DIR},
        FileNotFoundError,
        r"data\.name='c4'.*data\.data_dir",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_come_before_compiling(case, data_dir, tmp_path, no_compile):
    """Each bad input raises its error naming the key; lowering the step raises CompileStarted, so an error
    that only comes once the step compiles fails the test."""
    overrides, error, match = CONFIG_ERRORS[case]
    (tmp_path / "empty").mkdir()
    overrides = {k: str(tmp_path / "empty") if v == EMPTY_DIR else v for k, v in overrides.items()}
    config = apply(llama(data_dir), overrides)
    with pytest.raises(error, match=match):
        train(config, tmp_path / "run")


def test_workdir_that_is_a_file(data_dir, tmp_path, no_compile):
    workdir = tmp_path / "not_a_dir"
    workdir.write_text("")
    with pytest.raises(ValueError, match=r"--workdir=.*not_a_dir exists and is not a directory"):
        train(llama(data_dir), workdir)


class _SmallAccelerator:
    """A device with 1 MiB of memory: what `check_fits` reads from an accelerator's memory_stats()."""

    device_kind = "small accelerator"

    def memory_stats(self):
        return {"bytes_limit": 1 << 20, "bytes_in_use": 0}


def test_a_step_that_does_not_fit_stops_before_the_workdir_is_written(data_dir, tmp_path, monkeypatch):
    """The pre-flight: train() compiles the step for abstract state and compares it with the device's memory
    limit before anything is allocated or written; the error names the largest terms and the keys that help."""
    import lax_pretrain.train.loop as loop_lib
    from lax_pretrain.train.preflight import DoesNotFit, check_fits

    monkeypatch.setattr(
        loop_lib, "check_fits", lambda compiled, device: check_fits(compiled, _SmallAccelerator())
    )
    workdir = tmp_path / "run"
    with pytest.raises(DoesNotFit, match=r"small accelerator.*model\.remat.*train\.batch_size") as e:
        train(llama(data_dir), workdir)
    assert "temporaries" in str(e.value) or "parameters" in str(e.value)
    assert not workdir.exists()


def test_a_step_that_does_not_fit_in_host_memory_stops_before_the_workdir_is_written(
    data_dir, tmp_path, monkeypatch
):
    """On CPU the pre-flight compares the compiled step with the host's available memory (here 1 MiB)."""
    import lax_pretrain.train.preflight as preflight

    monkeypatch.setattr(preflight, "host_memory_available", lambda: 1 << 20)
    workdir = tmp_path / "run"
    with pytest.raises(preflight.DoesNotFit, match=r"host memory per CPU device.*model\.remat"):
        train(llama(data_dir), workdir)
    assert not workdir.exists()
