"""Hugging Face LLaMA import/export and dense -> low-rank initialisation, on tiny local transformers models.

The HF models are random (no hub access) with weights rescaled so activations and logits are O(1): at HF's own
init (std 0.02) every logit is near zero and a 1e-4 tolerance would prove nothing.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx, traverse_util
from transformers import LlamaConfig, LlamaForCausalLM

from lax_pretrain.config import from_compact
from lax_pretrain.convert import export_hf_llama, load_hf_llama, load_imported, save_imported, to_low_rank
from lax_pretrain.convert.low_rank import tt_full
from lax_pretrain.convert.weights import blocks_of, projection
from lax_pretrain.layers import cap_tt_ranks
from lax_pretrain.models import build
from lax_pretrain.models.llama import PROJECTIONS

SMALL = dict(
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
    rope_theta=50000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=128,
)
TOKENS = np.random.default_rng(0).integers(0, SMALL["vocab_size"], (2, 24))


def _random_hf(seed: int, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**SMALL, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms near 1, matrices at 1/sqrt(fan_in): O(1) activations and logits
            is_norm = p.ndim == 1
            p.copy_(1 + 0.1 * torch.randn_like(p) if is_norm else torch.randn_like(p) / math.sqrt(p.shape[1]))
    return model


def _save_hf(path: Path, seed: int, max_shard_size: str | None = None, **overrides) -> Path:
    model = _random_hf(seed, **overrides)
    if max_shard_size:
        model.save_pretrained(path, max_shard_size=max_shard_size)
    else:
        model.save_pretrained(path)
    return path


def hf_logits(path: Path) -> np.ndarray:
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy()


def logits(model) -> np.ndarray:
    return np.asarray(model(jnp.asarray(TOKENS)))


def params(model) -> dict:
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {k: np.asarray(v) for k, v in flat.items()}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return _save_hf(tmp_path_factory.mktemp("hf") / "untied", seed=0)


@pytest.fixture(scope="module")
def imported(hf_dir):
    return load_hf_llama(hf_dir)


# ---------------------------------------------------------------- import


def test_import_matches_hf_logits(hf_dir, imported):
    model, cfg = imported
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.norm_eps) == (2, 16, 50000.0, 1e-5)
    assert cfg.linear.kind == "dense" and not cfg.tie_embeddings
    ref = hf_logits(hf_dir)
    assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero logits
    np.testing.assert_allclose(logits(model), ref, atol=1e-4, rtol=0)


def test_import_tied_embeddings(tmp_path):
    path = _save_hf(tmp_path / "tied", seed=1, tie_word_embeddings=True)
    model, cfg = load_hf_llama(path)
    assert cfg.tie_embeddings and "head" not in params(model)
    np.testing.assert_allclose(logits(model), hf_logits(path), atol=1e-4, rtol=0)


def test_import_sharded_checkpoint(tmp_path, imported):
    path = _save_hf(tmp_path / "sharded", seed=0, max_shard_size="100KB")
    assert (path / "model.safetensors.index.json").exists() and not (path / "model.safetensors").exists()
    model, _ = load_hf_llama(path)
    # Same seed as the single-file fixture: the shards hold the very same weights.
    for key, value in params(imported[0]).items():
        np.testing.assert_array_equal(params(model)[key], value)


def test_import_scan_layers_matches_unrolled(hf_dir, imported):
    scanned, cfg = load_hf_llama(hf_dir, scan_layers=True)
    assert cfg.scan_layers and params(scanned)[("blocks", "rest", "attn", "q", "kernel")].shape == (2, 64, 64)
    np.testing.assert_allclose(logits(scanned), logits(imported[0]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- export


def test_export_reimports_bit_identical_and_hf_agrees(tmp_path, imported):
    model, cfg = imported
    out = export_hf_llama(model, cfg, tmp_path / "export")
    again, cfg_again = load_hf_llama(out)
    assert cfg_again.to_dict() == cfg.to_dict()
    before, after = params(model), params(again)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    np.testing.assert_allclose(hf_logits(out), logits(model), atol=1e-4, rtol=0)


def test_export_materializes_low_rank_and_refuses_cola(tmp_path, imported):
    svd, svd_cfg, _ = to_low_rank(*imported, kind="svd", rank=8)
    out = export_hf_llama(svd, svd_cfg, tmp_path / "svd")
    np.testing.assert_allclose(hf_logits(out), logits(svd), atol=1e-4, rtol=0)
    for arg, error in (
        ("kind=cola", "model.linear.kind='cola' is not a linear map"),
        ("kind=svd,lax=kron", "model.linear.crossing='kron': LaX crossing feeds"),
    ):
        cfg = from_compact("llama", f"nano,{arg},rank=8").model
        # Refused from the config alone, before any weight is read: an abstract model is enough.
        abstract = nnx.eval_shape(lambda cfg=cfg: build(cfg, rngs=nnx.Rngs(0)))
        with pytest.raises(ValueError, match=error):
            export_hf_llama(abstract, cfg, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_workdir_round_trip(tmp_path, imported):
    model, cfg = to_low_rank(*imported, kind="tt", rank=8)[:2]
    save_imported(model, cfg, tmp_path)
    again, cfg_again = load_imported(tmp_path)
    assert cfg_again.to_dict() == cfg.to_dict()
    for key, value in params(model).items():
        np.testing.assert_array_equal(params(again)[key], value)


def test_cli_import_svd_then_export(tmp_path, hf_dir):
    """`python -m lax_pretrain.convert.hf_llama import`, then the `lax-convert` console script exports."""

    def run(*argv):
        return subprocess.run(
            argv, capture_output=True, text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}
        )

    shown = run(
        sys.executable,
        "-m",
        "lax_pretrain.convert.hf_llama",
        "import",
        f"--hf_dir={hf_dir}",
        f"--out={tmp_path}",
        "--to_kind=svd",
        "--rank=1000",
    )
    assert "mean rel. error" in shown.stdout and (tmp_path / "checkpoints" / "0").is_dir()
    # runpy warns when the package has imported the module it is about to run as __main__.
    assert "RuntimeWarning" not in shown.stderr, shown.stderr
    lax_convert = Path(sys.executable).parent / "lax-convert"
    run(lax_convert, "export", f"--workdir={tmp_path}", f"--out={tmp_path / 'hf'}")
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert exported["max_position_embeddings"] == 128  # kept from the source config.json
    np.testing.assert_allclose(hf_logits(tmp_path / "hf"), hf_logits(hf_dir), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- dense -> low rank


def test_svd_full_rank_reproduces_logits(imported):
    model, cfg = imported
    svd, svd_cfg, report = to_low_rank(model, cfg, kind="svd", rank=10_000)
    assert svd_cfg.linear.kind == "svd" and svd_cfg.proj.k.rank == 32  # capped at min(d_in, d_out)
    assert max(report.values()) < 1e-6
    np.testing.assert_allclose(logits(svd), logits(model), atol=1e-4, rtol=0)


def test_svd_errors_decrease_with_rank(imported):
    reports = [to_low_rank(*imported, kind="svd", rank=r)[2] for r in (4, 8, 16)]
    assert set(reports[0]) == {(b, n) for b in range(3) for n in PROJECTIONS}
    for key in reports[0]:
        errors = [r[key] for r in reports]
        assert 0 < errors[2] < errors[1] < errors[0] < 1, (key, errors)


def test_svd_init_of_scanned_model(hf_dir, imported):
    scanned = load_hf_llama(hf_dir, scan_layers=True)
    svd, svd_cfg, _ = to_low_rank(*scanned, kind="svd", rank=10_000)
    assert svd_cfg.scan_layers
    np.testing.assert_allclose(logits(svd), logits(imported[0]), atol=1e-4, rtol=0)


def _maximal_tt(d_in: int, d_out: int) -> tuple:
    """Three input and three output modes with every bond as wide as its unfoldings allow (exact TT)."""
    factor = {64: (4, 4, 4), 32: (2, 4, 4), 172: (2, 2, 43)}
    in_modes, out_modes = factor[d_in], factor[d_out]
    return in_modes, out_modes, cap_tt_ranks(in_modes, out_modes, (1,) + (10**6,) * 5 + (1,))


def test_tt_svd_at_maximal_ranks_reproduces_weights(imported):
    model, cfg = imported
    dense = {
        (i, n): np.asarray(projection(b, n).kernel[...])
        for i, b in enumerate(blocks_of(model))
        for n in PROJECTIONS
    }
    shapes = {n: _maximal_tt(*dense[0, n].shape) for n in PROJECTIONS}
    tt, tt_cfg, report = to_low_rank(model, cfg, kind="tt", rank=1, tt_shapes=shapes)
    assert tt_cfg.proj.gate.tt_ranks == [1, 4, 16, 64, 86, 43, 1]
    for i, block in enumerate(blocks_of(tt)):
        for name in PROJECTIONS:
            np.testing.assert_allclose(
                np.asarray(projection(block, name).materialize()), dense[i, name], rtol=1e-4, atol=1e-5
            )
    assert max(report.values()) < 1e-5


def test_tt_report_matches_independent_error(imported):
    model, cfg = imported
    dense = {
        (i, n): np.asarray(projection(b, n).kernel[...], np.float64)
        for i, b in enumerate(blocks_of(model))
        for n in PROJECTIONS
    }
    tt, tt_cfg, report = to_low_rank(model, cfg, kind="tt", rank=6)
    assert tt_cfg.proj.q.tt_ranks == [1, 8, 6, 8, 1]
    for i, block in enumerate(blocks_of(tt)):
        for name in PROJECTIONS:
            w_hat = np.asarray(projection(block, name).materialize(), np.float64)
            expected = np.linalg.norm(dense[i, name] - w_hat) / np.linalg.norm(dense[i, name])
            assert 0 < report[i, name] < 1
            np.testing.assert_allclose(report[i, name], expected, rtol=1e-4)


def test_tt_padded_bond_is_exact_and_trainable():
    # 172 = 4 x 43 output modes behind a latent bond of 2: bond 3 asks for 43 but only 2 * 4 = 8 exist.
    from lax_pretrain.convert.low_rank import tt_decompose

    w = np.random.default_rng(0).standard_normal((64, 172))
    cores = tt_decompose(w, (8, 8), (4, 43), (1, 8, 2, 43, 1))
    assert [c.shape for c in cores] == [(1, 8, 8), (8, 8, 2), (2, 4, 43), (43, 43, 1)]
    low = tt_decompose(w, (8, 8), (4, 43), (1, 8, 2, 8, 1))  # the same map with the bond at its real rank
    np.testing.assert_allclose(tt_full(cores, 64), tt_full(low, 64), atol=1e-10)
    # The padded bond's rows of the last core are nonzero, so the zero columns of core 3 receive gradient.
    assert np.abs(cores[3][8:]).min() > 0 and np.abs(cores[2][..., 8:]).max() == 0


# ---------------------------------------------------------------- bad inputs


def test_missing_files_are_clear_errors(tmp_path, hf_dir):
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        load_hf_llama(tmp_path)
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_hf_llama(tmp_path)


def test_unsupported_features_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="config.json: attention_bias=True is not supported"):
        load_hf_llama(_save_hf(tmp_path / "bias", seed=0, attention_bias=True))
    scaled = _save_hf(tmp_path / "scaled", seed=0)
    config = json.loads((scaled / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (scaled / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rope_parameters.rope_type='linear' is not supported"):
        load_hf_llama(scaled)
    config["rope_parameters"]["rope_type"] = "default"
    config["sliding_window"] = 64  # a key that would change the maths if it meant anything
    (scaled / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="config.json: 'sliding_window' is not a key this converter implements"
    ):
        load_hf_llama(scaled)


def test_low_rank_rejects_cola(imported):
    with pytest.raises(ValueError, match="nonlinear"):
        to_low_rank(*imported, kind="cola", rank=8)


def test_old_style_rope_theta_is_read():
    from lax_pretrain.convert import model_config_from_hf

    config = {k: v for k, v in LlamaConfig(**SMALL).to_dict().items() if k != "rope_parameters"}
    config.update(rope_theta=500000, rope_scaling=None)  # transformers 4.x layout
    assert model_config_from_hf(config).rope_theta == 500000.0


def test_modules_import_one_way():
    """No import cycle inside the package, and `lax_pretrain.convert` does not load its command line."""
    package = Path(__file__).resolve().parents[1] / "lax_pretrain" / "convert"
    imports = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        imports[path.stem] = {
            node.module.rsplit(".", 1)[-1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("lax_pretrain.convert.")
        }
    assert "hf_llama" not in imports["__init__"]
    done: list[str] = []
    while len(done) < len(imports):  # peel off modules whose imports are all done; a cycle never peels
        ready = sorted(m for m in imports if m not in done and imports[m] <= set(done))
        assert ready, f"import cycle among {sorted(set(imports) - set(done))}"
        done += ready


# ---------------------------------------------------------------- one loader for imports and training runs


@pytest.mark.slow
def test_training_in_an_import_starts_from_it_and_the_run_exports(tmp_path):
    """An import is a normal workdir: `train()` there starts from the imported parameters (the parameters-only
    checkpoint is initial values, never mistaken for a damaged one), and `lax-convert export` takes the
    resulting training workdir and gives transformers' logits equal to ours (max abs diff < 1e-4)."""
    from lax_pretrain.bench.models import shrink_model
    from lax_pretrain.config import llama_config
    from lax_pretrain.train import train
    from lax_pretrain.train.checkpoint import load_trained_model

    config = shrink_model(llama_config("nano"), d_model=32, num_layers=2, num_heads=2, ffn_dim=64, rank=8)
    config.data.update(seq_len=16, eval_batches=1, data_dir=str(tmp_path / "data"))
    config.train.update(steps=2, batch_size=4, log_every=1, eval_every=2, checkpoint_every=2)
    config.optim.update(lr=1e-9, warmup_steps=0)  # the parameters stay where the import put them
    config.mesh.num_devices = 1
    config.wandb.mode = "disabled"
    imported = build(config.model, rngs=nnx.Rngs(7))
    workdir = save_imported(imported, config.model, tmp_path / "run")
    assert load_trained_model(workdir)[2] == 0  # the one loader reads the import

    assert train(config, workdir)["status"] == "done"
    trained, _, step = load_trained_model(workdir)
    assert step == 2
    want, got, fresh = params(imported), params(trained), params(build(config.model, rngs=nnx.Rngs(0)))
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-6, err_msg=str(key))
    assert max(np.abs(fresh[k] - want[k]).max() for k in want) > 0.01  # not a fresh init

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lax_pretrain.convert.hf_llama",
            "export",
            f"--workdir={workdir}",
            f"--out={tmp_path / 'hf'}",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    tokens = np.random.default_rng(1).integers(0, config.model.vocab_size, (2, 16))
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        hf_out = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(trained(jnp.asarray(tokens))), hf_out, atol=1e-4, rtol=0)
