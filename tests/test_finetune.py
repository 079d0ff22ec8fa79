"""Fine-tuning through the one training loop: only adapter variables train and hold optimizer state, the base
stays bit-identical, the adapter file is written and loads; the CLI from a training workdir (EigenLoRAx) and,
in process, on bad input; bases from Hugging Face / imported directories.

Tiny LLaMA (d = 32, 2 blocks) on Shakespeare windows of 32 bytes, a few steps each (8 fake CPU devices: the
batch is 8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from lax_pretrain.adapters import (
    ADAPTER_PARAMS,
    AdapterSpec,
    adapters,
    fit_basis,
    load_adapter,
    load_loadings,
    projections,
    save_basis,
)
from lax_pretrain.config import llama_config
from lax_pretrain.data import make_eval_batches
from lax_pretrain.finetune import ADAPTER_FILE, LOADINGS_FILE, finetune, load_base
from lax_pretrain.models import build
from lax_pretrain.models.tasks import lm_eval, lm_summary

pytestmark = pytest.mark.slow  # fine-tuning runs through train(): `pytest -m 'not slow'` skips them

REPO = Path(__file__).resolve().parents[1]
D, FFN, HEADS = 32, 48, 4
TINY = dict(d_model=D, ffn_dim=FFN, num_heads=HEADS, num_kv_heads=HEADS, num_layers=2, proj={})
RUN_OVERRIDES = {
    "data.seq_len": 32,
    "data.eval_batches": 1,
    "train.steps": 3,
    "train.batch_size": 8,
    "train.log_every": 1,
    "train.eval_every": 3,
    "train.checkpoint_every": 3,
    "wandb.mode": "disabled",
    "optim.warmup_steps": 1,
}


def run_config(steps: int = 3):
    config = llama_config("nano")
    config.model.update(TINY)
    for key, value in {**RUN_OVERRIDES, "train.steps": steps}.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def flat(state) -> dict[tuple, np.ndarray]:
    return {tuple(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def checkpoint_leaves(workdir: Path, item: str) -> set[tuple[str, ...]]:
    """Paths of the arrays saved under checkpoints/<newest>/<item> (read from orbax metadata only)."""
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    tree = ocp.StandardCheckpointer().metadata(workdir / "checkpoints" / str(step) / item).item_metadata
    return {
        tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.mark.parametrize("kind", ["lora", "lax_lora"])
def test_only_adapter_parameters_train(tmp_path, kind):
    config = run_config()
    base = build(config.model, rngs=nnx.Rngs(123))  # not the run's seed: the base must come from `base`
    base_params = flat(nnx.state(base, nnx.Param))
    eval_batches = list(make_eval_batches(config.data, global_batch_size=8, process_index=0, process_count=1))
    base_eval_loss = lm_summary([lm_eval(base, b) for b in eval_batches])["eval_loss"]
    spec = AdapterSpec(kind=kind, rank=4, alpha=8, gate="kron")
    summary = finetune(config, (base, config.model), spec, tmp_path)
    assert summary["status"] == "done" and summary["step"] == 3
    model = summary["model"]

    # the base: bit-identical after training (paths inside a wrapper gain '.base')
    frozen = flat(nnx.state(model, nnx.All(nnx.Param, nnx.Not(ADAPTER_PARAMS))))
    assert {tuple(p for p in path if p != "base") for path in frozen} == set(base_params)
    for path, value in frozen.items():
        np.testing.assert_array_equal(value, base_params[tuple(p for p in path if p != "base")])
    # the adapters: trained (B left zero)
    found = adapters(model)
    assert len(found) == 2 * 2
    assert all(np.abs(np.asarray(m.lora_b[...])).max() > 0 for m in found.values())

    # optimizer state and checkpointed parameters: adapter variables only
    adapter_leaves = {"lora_a", "lora_b", "g0", "g1"}  # g0, g1: the kron gates of block 1
    opt = checkpoint_leaves(tmp_path, "opt_state")
    named = {path[path.index("value") - 1] for path in opt if "value" in path}
    assert named == (adapter_leaves if kind == "lax_lora" else {"lora_a", "lora_b"})
    assert not any(name in path for path in opt for name in ("kernel", "scale", "embed", "head"))
    assert {path[path.index("value") - 1] for path in checkpoint_leaves(tmp_path, "params")} == named

    # the adapter file reproduces the fine-tuned model on a fresh base
    x = jnp.asarray(np.random.default_rng(0).integers(0, 200, (2, 16)), jnp.int32)
    fresh = load_adapter(tmp_path / ADAPTER_FILE, build(config.model, rngs=nnx.Rngs(123)))
    np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(model(x)))
    assert json.loads((tmp_path / "config.json").read_text())["adapter"]["kind"] == kind
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "eval_loss" in r] == [0, 3]
    # train() ran on the base's values (B = 0: the adapted model starts as the base)
    assert metrics[0]["eval_loss"] == pytest.approx(base_eval_loss, rel=1e-5)


def test_cli_eigenlorax_from_a_training_workdir(tmp_path):
    from lax_pretrain.train import train

    base_dir, out = tmp_path / "base", tmp_path / "eigen"
    train(run_config(steps=1), base_dir)
    base, model_cfg = load_base(base_dir)
    assert model_cfg.d_model == D
    rng = np.random.default_rng(0)
    sig = {p: (m.d_in, m.d_out) for p, m in projections(base).items() if p.endswith((".q", ".v"))}
    recycled = [
        {
            p: (rng.normal(size=(i, 2)).astype(np.float32), rng.normal(size=(2, o)).astype(np.float32))
            for p, (i, o) in sig.items()
        }
        for _ in range(3)
    ]
    save_basis(tmp_path / "basis.safetensors", fit_basis(recycled, 4))

    overrides = [
        f"--config.{k}={v}"
        for k, v in {
            **RUN_OVERRIDES,
            "train.steps": 2,
            "train.eval_every": 2,
            "train.checkpoint_every": 2,
        }.items()
    ]
    cmd = [
        sys.executable,
        "-m",
        "lax_pretrain.finetune",
        "--config=configs/llama.py:nano",
        f"--base={base_dir}",
        "--adapter=eigenlorax",
        f"--basis={tmp_path / 'basis.safetensors'}",
        "--augment=2",
        f"--workdir={out}",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "done at step 2" in result.stdout and "96 trainable adapter parameters" in result.stdout
    )  # 4 x 2 (K+2) r

    opt = checkpoint_leaves(out, "opt_state")
    assert {path[path.index("value") - 1] for path in opt if "value" in path} == {"alpha_A", "alpha_B"}
    loadings, meta = load_loadings(out / LOADINGS_FILE)
    assert set(loadings.modules) == set(sig) and loadings.alpha_A["blocks.first.attn.q"].shape == (6, 2)
    assert meta["augment"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["adapter"]["kind"] == "eigenlorax" and config["model"]["d_model"] == D
    model = load_adapter(out / ADAPTER_FILE, load_base(base_dir)[0])
    np.testing.assert_array_equal(
        model.blocks.first.attn.q.delta.alpha_A[...], loadings.alpha_A["blocks.first.attn.q"]
    )

    with pytest.raises(ValueError, match="is a fine-tuning run"):
        load_base(out)
    bad = subprocess.run(
        [*cmd[:5], "--adapter=eigenlorax", f"--workdir={tmp_path / 'x'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "needs --basis" in bad.stderr


def test_main_in_process_reports_bad_input_in_one_line(tmp_path, capsys):
    from absl import flags

    import lax_pretrain.finetune as cli

    assert not any(
        name in flags.FLAGS for name in ("base", "adapter", "basis", "eigen_init")
    )  # nothing global
    # a --config.* override too: the config flag must read it from this argv, not from pytest's sys.argv
    argv = [
        "finetune",
        f"--config={REPO / 'configs/llama.py'}:nano",
        "--config.train.steps=2",
        f"--base={tmp_path}",
        f"--workdir={tmp_path / 'out'}",
        "--adapter=eigenlorax",
    ]
    for _ in range(2):  # a second call in the same process starts from the defaults again
        assert cli.main(argv) == 2
        out, err = capsys.readouterr()
        assert err == "error: --adapter=eigenlorax needs --basis=PATH.safetensors\n" and out == ""
    assert cli.main([*argv[:3], f"--base={tmp_path}", "--workdir=w", "--adapter=qlora"]) == 2
    assert capsys.readouterr().err == (
        "error: flag --adapter=qlora: value should be one of <lora|lax_lora|eigenlorax>\n"
    )
    assert (
        cli.main(
            [
                argv[0],
                f"--config={REPO / 'configs/llama.py'}:nano,nope=1",
                f"--base={tmp_path}",
                "--workdir=w",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ") and "config argument 'nope=1'" in err and err.count("\n") == 1
    )  # not a traceback
    with pytest.raises(ValueError, match="needs --basis"):
        cli.main([*argv, "--verbose"])
    assert not (tmp_path / "out").exists()


def test_bases_from_hugging_face_and_imported_directories(tmp_path):
    from lax_pretrain.convert import export_hf_llama, save_imported

    config = run_config()
    model = build(config.model, rngs=nnx.Rngs(3))
    want = flat(nnx.state(model, nnx.Param))
    export_hf_llama(model, config.model, tmp_path / "hf")
    save_imported(model, config.model, tmp_path / "imported_run")
    for where in ("hf", "imported_run"):
        got_model, got_cfg = load_base(tmp_path / where)
        got = flat(nnx.state(got_model, nnx.Param))
        assert set(got) == set(want) and got_cfg.d_model == D
        for path in want:
            np.testing.assert_allclose(got[path], want[path], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="neither a workdir"):
        load_base(tmp_path)
    scanned = config.model.copy_and_resolve_references()
    scanned.update(scan_layers=True, num_layers=3)
    with pytest.raises(ValueError, match="model.scan_layers=True"):
        finetune(config, (build(scanned, rngs=nnx.Rngs(0)), scanned), AdapterSpec(), tmp_path / "scan")
    assert not (tmp_path / "scan").exists()
