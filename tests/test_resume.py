"""A workdir is one run (train/resume.py, train/checkpoint.py): a launch whose run differs from the workdir's
checkpoints is refused in one line before anything is written, the workdir byte for byte as it was; allowed
changes resume and are recorded; a damaged checkpoint is moved aside, never deleted; a read that fails on an
intact checkpoint stops and changes nothing.

One tiny CoLA + LaX LLaMA run (4 steps, checkpoints at 2 and 4) is trained once; every case works on a copy.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

from lax_pretrain.config import from_compact
from lax_pretrain.train import train
from lax_pretrain.train.checkpoint import CheckpointReadError
from lax_pretrain.train.metrics import read_metrics
from lax_pretrain.train.resume import LAUNCHES_DIR

pytestmark = pytest.mark.slow  # trains

ARG = "nano,kind=cola,lax=kron"
STEPS = 4
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def tiny_overrides(arg: str = ARG, **extra) -> dict:
    """The tiny model and run as dotted-key overrides of `from_compact("llama", arg)` (`a__b=v` extras)."""
    config = from_compact("llama", arg)
    return {
        "model.d_model": 32,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.num_kv_heads": 2,
        "model.ffn_dim": 64,
        **{f"model.proj.{p}.rank": 8 for p in PROJECTIONS if config.model.linear.kind != "dense"},
        "data.seq_len": 16,
        "data.eval_batches": 1,
        "train.steps": STEPS,
        "train.batch_size": 8,
        "train.log_every": 2,
        "train.eval_every": STEPS,
        "train.checkpoint_every": 2,
        "optim.warmup_steps": 1,
        "wandb.mode": "disabled",
        **{k.replace("__", "."): v for k, v in extra.items()},
    }


def tiny(arg: str = ARG, **extra):
    config = from_compact("llama", arg)
    config.update_from_flattened_dict(tiny_overrides(arg, **extra))
    return config


def snapshot(workdir: Path) -> dict[str, bytes]:
    return {str(f.relative_to(workdir)): f.read_bytes() for f in sorted(workdir.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def trained(tfds_dir, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("resume") / "run"
    assert train(tiny(), workdir)["step"] == STEPS
    return workdir


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    return workdir


# (compact argument, overrides, text the one line must hold)
FORBIDDEN = {
    "kind_dense": ("nano,kind=dense", {}, "params leaves"),
    "kind_svd_same_tree": ("nano,kind=svd,lax=kron", {}, "model.proj.down.kind 'cola' -> 'svd'"),
    "rank": (ARG, {"model.proj.q.rank": 4}, "model.proj.q.rank 8 -> 4"),
    "crossing": ("nano,kind=cola", {}, "model.proj.down.crossing 'kron' -> 'none'"),
    "param_precision": (ARG, {"model.param_dtype": "bfloat16"}, "model.param_dtype 'float32' -> 'bfloat16'"),
    "compute_precision": (ARG, {"model.dtype": "bfloat16"}, "model.dtype 'float32' -> 'bfloat16'"),
    "optimizer_state_clipping": (ARG, {"optim.clip_norm": 0.0}, "opt_state leaves"),
    "optimizer_state_mask": (ARG, {"optim.weight_decay_mask": "no_1d"}, "opt_state leaves"),
    "data_seq_len": (ARG, {"data.seq_len": 8}, "data.seq_len 16 -> 8"),
    "data_order_seed": (ARG, {"train.seed": 1}, "train.seed 0 -> 1"),
}


@pytest.mark.parametrize("case", list(FORBIDDEN))
def test_a_different_run_is_refused_and_the_workdir_is_untouched(case, run_copy):
    arg, overrides, text = FORBIDDEN[case]
    before = snapshot(run_copy)
    with pytest.raises(ValueError) as e:
        train(tiny(arg, **{k.replace(".", "__"): v for k, v in overrides.items()}), run_copy)
    line = str(e.value)
    assert "\n" not in line and f"--workdir={run_copy} holds a different run" in line, line
    assert text in line, line
    assert "new --workdir" in line
    assert snapshot(run_copy) == before


def test_the_refusal_is_one_line_and_status_2_on_the_command_line(run_copy, capsys, monkeypatch):
    from lax_pretrain.train import __main__ as train_cli

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    before = snapshot(run_copy)
    argv = [f"--config=configs/llama.py:{ARG}", f"--workdir={run_copy}"]
    argv += [f"--config.{k}={v}" for k, v in tiny_overrides(model__dtype="bfloat16").items()]
    assert train_cli.main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.dtype" in lines[0], lines
    assert snapshot(run_copy) == before


def test_allowed_changes_resume_and_are_recorded(run_copy, caplog):
    """More steps, other intervals, another learning rate: the run resumes from its newest checkpoint, the
    changes are named in a warning (with the cosine horizon's), and each launch's config is kept."""
    config = tiny(train__steps=STEPS + 2, train__log_every=1, optim__lr=2e-3, wandb__mode="offline")
    with caplog.at_level(logging.WARNING, logger="lax_pretrain"):
        summary = train(config, run_copy)
    assert summary["start_step"] == STEPS and summary["step"] == STEPS + 2
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert f"train.steps {STEPS} -> {STEPS + 2}" in warnings and "optim.lr" in warnings
    assert "cosine decay" in warnings
    launches = sorted((run_copy / LAUNCHES_DIR).glob("*.json"))
    assert len(launches) == 2  # the first launch's and this one's
    assert launches[-1].read_text() == (run_copy / "config.json").read_text()
    assert '"steps": 6' in (run_copy / "config.json").read_text()
    steps = [r["step"] for r in read_metrics(run_copy) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS + 2  # one history


def test_a_damaged_config_json_is_named(run_copy):
    (run_copy / "config.json").write_text('{\n  "model": ')
    before = snapshot(run_copy)
    with pytest.raises(ValueError, match=rf"{run_copy / 'config.json'} cannot be read as a run config"):
        train(tiny(), run_copy)
    assert snapshot(run_copy) == before


def test_a_damaged_step_is_moved_aside_not_deleted(run_copy):
    """The newest step's parameter data cut in half (orbax's metadata intact: only the storage layer can tell):
    the run falls back to step 2, the damaged step 4 is kept under checkpoints.damaged/4 byte for byte."""
    step_dir = run_copy / "checkpoints" / str(STEPS)
    data = max((f for f in (step_dir / "params").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    damaged = snapshot(step_dir)
    summary = train(tiny(), run_copy)
    assert summary["start_step"] == 2 and summary["step"] == STEPS
    aside = run_copy / "checkpoints.damaged" / str(STEPS)
    assert snapshot(aside) == damaged
    assert (run_copy / "checkpoints" / str(STEPS)).is_dir()  # saved again by the resumed run


def test_a_read_error_on_an_intact_checkpoint_stops_and_changes_nothing(run_copy, monkeypatch):
    """An I/O error during restore (a bucket's transient failure) is not damage: one line, nothing moved or
    deleted, every file as it was."""

    def failing_restore(self, step, args=None):
        raise OSError(5, "Input/output error", str(self.directory))

    before = snapshot(run_copy)
    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing_restore)
    with pytest.raises(CheckpointReadError, match=rf"step {STEPS} .*intact on disk.*Input/output error"):
        train(tiny(), run_copy)
    after = snapshot(run_copy)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed or removed
    assert not (run_copy / "checkpoints.damaged").exists()
    assert set(after) - set(before) <= {p for p in after if p.startswith(f"{LAUNCHES_DIR}/")}


def test_init_from_starts_a_new_run_from_the_parameters(trained, tmp_path):
    """The refusal of a changed optimizer names train.init_from; a new workdir with it starts at step 0 from the
    run's parameters: its step-0 evaluation equals the run's final one (the same eval batches, same weights)."""
    refused = _copy(trained, tmp_path / "refused")
    with pytest.raises(ValueError, match=rf"--config\.train\.init_from={refused} starts it"):
        train(tiny(optim__clip_norm=0.0), refused)
    workdir = tmp_path / "new"
    summary = train(tiny(optim__clip_norm=0.0, train__steps=1, train__init_from=str(trained)), workdir)
    assert summary["start_step"] == 0 and summary["step"] == 1
    final_eval = [r["eval_loss"] for r in read_metrics(trained) if r["step"] == STEPS and "eval_loss" in r]
    start_eval = [r["eval_loss"] for r in read_metrics(workdir) if r["step"] == 0 and "eval_loss" in r]
    assert start_eval == pytest.approx(final_eval, rel=1e-6)


def test_init_from_other_parameters_is_refused(trained, tmp_path):
    with pytest.raises(
        ValueError, match=rf"train\.init_from='{trained}' \(checkpoint step {STEPS}\) holds other"
    ):
        train(tiny(model__proj__q__rank=4, train__init_from=str(trained)), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
