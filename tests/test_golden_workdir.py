"""Workdirs written by older code still work: a training workdir made at commit 276b8d3
(tests/fixtures/golden_workdir_276b8d3, README.txt there gives the command) resumes, samples and exports with
today's code, and its checkpoint still loads into the same function.

The fixture is a tiny CoLA + LaX (kron) LLaMA trained 4 steps on the embedded Shakespeare corpus, one
checkpoint at step 4. Every test works on a copy in tmp_path: nothing writes into the repository.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lax_pretrain import sample
from lax_pretrain.convert import load_imported
from lax_pretrain.convert.hf_llama import main as lax_convert
from lax_pretrain.train import __main__ as train_cli
from lax_pretrain.train import train
from lax_pretrain.train.checkpoint import load_config, load_trained_model
from lax_pretrain.train.metrics import read_metrics

pytestmark = pytest.mark.slow  # trains

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "fixtures" / "golden_workdir_276b8d3"
STEP = 4  # the fixture's one checkpoint

# The command that made the fixture (README.txt there), less --workdir: re-running it resumes.
COMMAND = [
    "--config=configs/llama.py:nano,kind=cola,lax=kron,rank=4",
    "--config.model.d_model=16",
    "--config.model.num_layers=2",
    "--config.model.num_heads=2",
    "--config.model.num_kv_heads=2",
    "--config.model.ffn_dim=32",
    "--config.data.seq_len=16",
    "--config.data.eval_batches=1",
    "--config.train.steps=4",
    "--config.train.batch_size=4",
    "--config.train.log_every=1",
    "--config.train.eval_every=4",
    "--config.train.checkpoint_every=2",
    "--config.train.keep_checkpoints=1",
    "--config.optim.warmup_steps=1",
    "--config.mesh.num_devices=1",
    "--config.wandb.mode=disabled",
]

# What the code at 276b8d3 computed from the fixture's checkpoint: logits of BOS + "ROMEO:" (byte ids), the
# last position's first six and token 0's at every position. The logits are O(0.1) (std 0.08), so 1e-5 tells
# a changed parameter layout or function from float32 reordering.
PROMPT_IDS = [1, 85, 82, 80, 72, 82, 61]
LAST_POSITION_FIRST_SIX = [
    0.0911458432674408,
    0.09002766758203506,
    0.08048401027917862,
    -0.008014929480850697,
    0.016531385481357574,
    -0.1268848478794098,
]
TOKEN_0_AT_EACH_POSITION = [
    0.0657256469130516,
    0.0848318412899971,
    0.060182247310876846,
    0.05948972702026367,
    0.07706329226493835,
    0.05831166356801987,
    0.0911458432674408,
]


@pytest.fixture
def workdir(tmp_path) -> Path:
    copy = tmp_path / "golden"
    shutil.copytree(GOLDEN, copy)
    return copy


def loss_steps(workdir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(workdir) if "loss" in r]


def test_the_checkpoint_loads_into_the_function_it_was_trained_as(workdir):
    model, config, step = load_trained_model(workdir)
    assert step == STEP and config.model.linear.kind == "cola" and config.model.linear.crossing == "kron"
    logits_1xLxV = np.asarray(model(jnp.asarray([PROMPT_IDS])))
    assert logits_1xLxV.shape == (1, len(PROMPT_IDS), config.model.vocab_size)
    np.testing.assert_allclose(logits_1xLxV[0, -1, :6], LAST_POSITION_FIRST_SIX, atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits_1xLxV[0, :, 0], TOKEN_0_AT_EACH_POSITION, atol=1e-5, rtol=0)


def test_resumes_with_its_own_config_json(tfds_dir, workdir):
    """The workdir's config.json, as written then, is a config today's trainer takes: two more steps from the
    step-4 checkpoint, one history (the old records kept as they were, then steps 5 and 6)."""
    old_lines = (workdir / "metrics.jsonl").read_text().splitlines()
    config = load_config(workdir)
    config.train.steps = STEP + 2
    summary = train(config, workdir)
    assert summary["start_step"] == STEP and summary["step"] == STEP + 2
    assert loss_steps(workdir) == list(range(1, STEP + 3))
    assert (workdir / "metrics.jsonl").read_text().splitlines()[: len(old_lines)] == old_lines


def test_resumes_from_the_command_that_made_it(tfds_dir, workdir, capsys, monkeypatch):
    """Today's config for the same command line (new keys and all) is the same run, not a refused one."""
    monkeypatch.chdir(REPO)
    argv = [*COMMAND, f"--workdir={workdir}", f"--config.train.steps={STEP + 2}"]
    assert train_cli.main(argv) == 0, capsys.readouterr().err
    assert f"done at step {STEP + 2}" in capsys.readouterr().out
    assert loss_steps(workdir) == list(range(1, STEP + 3))


def test_samples(workdir, capsys):
    argv = [f"--workdir={workdir}", "--prompt=ROMEO:", "--max_new_tokens=8", "--temperature=0"]
    assert sample.main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) > len("ROMEO:")


def test_exports_to_the_lax_format_and_imports_back_bit_identical(workdir, tmp_path, capsys):
    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    assert lax_convert(["export", f"--workdir={workdir}", f"--out={hf_dir}"]) == 0, capsys.readouterr().err
    assert "(lax)" in capsys.readouterr().out
    assert (hf_dir / "config.json").exists() and list(hf_dir.glob("*.safetensors"))
    assert lax_convert(["import", f"--hf_dir={hf_dir}", f"--out={back}"]) == 0, capsys.readouterr().err
    trained, _, _ = load_trained_model(workdir)
    imported, _ = load_imported(back)
    ours, theirs = nnx.state(trained, nnx.Param), nnx.state(imported, nnx.Param)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
