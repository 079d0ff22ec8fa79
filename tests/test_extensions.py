"""Extensions from outside the package, through the real command lines: a block-diagonal kind and the Lion
optimizer defined in tests/extension_example/block_kinds.py (not importable from the package), brought in with
`--import=`, train nano, resume exactly from the workdir's record alone, show in `lax-params` and are refused by
the exporter with one line. Each command is a subprocess, so nothing registered here leaks into other tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains, in subprocesses

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "tests" / "extension_example" / "block_kinds.py"
CONFIG = "--config=configs/llama.py:nano,kind=blockdiag"
TINY = {
    "model.d_model": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.num_kv_heads": 2,
    "model.ffn_dim": 64,
    "data.seq_len": 16,
    "data.eval_batches": 1,
    "train.batch_size": 8,
    "train.log_every": 1,
    "train.eval_every": 100,
    "train.checkpoint_every": 3,
    "optim.warmup_steps": 1,
    "optim.min_lr_ratio": 1.0,  # a constant rate after warm-up: stopping at 3 of 6 steps trains the same steps
    "optim.name": "lion",
    "optim.lr": 1e-3,
    "wandb.mode": "disabled",
}


def command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def train_args(workdir: Path, steps: int) -> list[str]:
    overrides = {**TINY, "train.steps": steps}
    return [CONFIG, f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def runs(tfds_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extensions")
    straight, resumed = root / "straight", root / "resumed"
    for workdir, steps in ((straight, 6), (resumed, 3)):
        done = command("lax_pretrain.train", f"--import={EXTENSION}", *train_args(workdir, steps))
        assert done.returncode == 0, done.stderr[-3000:]
    # The resume names no --import: the workdir's config.json records the extension.
    done = command("lax_pretrain.train", *train_args(resumed, 6))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"straight": straight, "resumed": resumed, "root": root}


def test_the_extension_is_recorded_in_the_run(runs):
    config = json.loads((runs["resumed"] / "config.json").read_text())
    assert config["extensions"] == [str(EXTENSION)]
    assert config["model"]["linear"]["kind"] == "blockdiag"
    assert config["model"]["proj"]["q"] == {"blocks": 2}
    assert config["optim"]["name"] == "lion" and config["optim"]["lion"] == {"b1": 0.9, "b2": 0.99}


def test_a_registered_kind_and_optimizer_train_and_resume_exactly(runs):
    straight, resumed = losses(runs["straight"]), losses(runs["resumed"])
    assert sorted(straight) == sorted(resumed) == [1, 2, 3, 4, 5, 6]  # one history across the resume
    for step in straight:
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-7), step
    assert straight[6] < straight[1]  # it learns


def test_lax_params_lists_the_kind():
    done = command("lax_pretrain.params", f"--import={EXTENSION}", CONFIG, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)["rows"]
    kinds = {r["name"]: r["kind"] for r in rows}
    assert kinds["q"] == "blockdiag" and kinds["down"] == "blockdiag", kinds


def test_the_exporter_refuses_the_kind_in_one_line(runs):
    out = runs["root"] / "export"
    done = command("lax_pretrain.convert.hf_llama", "export", f"--workdir={runs['resumed']}", f"--out={out}")
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines[-1].startswith("error: ") and "blockdiag" in lines[-1], lines
    assert not out.exists()


def test_without_the_import_the_kind_is_named_with_the_remedy(tmp_path):
    done = command("lax_pretrain.train", *train_args(tmp_path / "run", 2))
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    # The first unregistered name the checks meet (the optimizer or the kind), with the remedy.
    named = ("optim.name='lion' is not a registered optimizer", "kind='blockdiag' is not a registered")
    assert any(n in line for n in named) and "--import=MODULE" in line, line
    assert not (tmp_path / "run").exists()


def test_a_missing_module_is_one_line(tmp_path):
    done = command("lax_pretrain.params", "--import=no_such_extension_module", CONFIG)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --import=no_such_extension_module") and "PYTHONPATH" in line, line
