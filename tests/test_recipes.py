"""The paper recipes as the authors' released code has them (docs/recipes.md): the weight-decay mask by role,
TT + LaX intra-layer defaults, the ViT initialisers, the pure-bf16 mode and the `--recipe` audit.

Every model here is an eval_shape (nothing allocated) unless its values are looked at; the initialiser
statistics use a one-block ViT-B/16 so the embedding shapes are the paper's.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lax_pretrain.config import from_compact, llama_config, vit_config
from lax_pretrain.models import build
from lax_pretrain.models.stats import model_stats
from lax_pretrain.optim import decay_mask, make_optimizer, path_names
from lax_pretrain.recipe import recipe_rows

REPO = Path(__file__).resolve().parent.parent
KINDS = ("dense", "svd", "cola", "tt")
VIT_PROJ = ("q", "k", "v", "o", "fc1", "fc2")


def decisions(config_arg: str) -> dict[tuple[str, ...], bool]:
    """{attribute path (list indices dropped): decayed?} of a ViT under the 'no_1d' recipe, from eval_shape."""
    cfg = from_compact("vit", config_arg)
    model = nnx.eval_shape(lambda: build(cfg.model, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    mask = decay_mask(cfg.optim.weight_decay_mask)(params)
    out: dict[tuple[str, ...], bool] = {}
    flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]:
        names = path_names(path)
        assert out.setdefault(names, decayed) == decayed, f"{names}: blocks disagree"
        # One layer's shape: a scanned stack adds the leading layers axis.
        shape = (
            flat_params[path].shape[1:]
            if "rest" in names and "scan=1" in config_arg
            else flat_params[path].shape
        )
        if len(shape) <= 1 and names[-1] not in ("cls", "pos"):
            assert not decayed, f"{names} is 1-D per layer and decayed"
    return out


# ViT-L/16 (24 blocks) takes seconds per case: part of `make test`, not of the quick loop.
MASK_CASES = [
    pytest.param(p, k, c, marks=[pytest.mark.slow] if p == "l16" else [])
    for p in ("b16", "l16")
    for k in KINDS
    for c in ("none", "kron")
    if k != "dense" or c == "none"
]


@pytest.mark.parametrize("preset,kind,lax", MASK_CASES)
def test_weight_decay_mask_by_role(preset, kind, lax):
    arg = f"{preset},kind={kind},lax={lax}"
    unrolled, scanned = decisions(f"{arg},scan=0"), decisions(f"{arg},scan=1")
    assert unrolled == scanned  # the same paths and decisions, the layers axis aside
    for names, decayed in unrolled.items():
        leaf, owner = names[-1], names[-2] if len(names) > 1 else ""
        if leaf.endswith("bias") or owner.endswith("norm") or names in (("cls",), ("pos",)):
            assert not decayed, names
        if leaf in ("cores", "g0", "g1", "down", "up", "kernel", "patch_kernel", "head_kernel"):  # cores/<k>
            assert decayed, names
    if kind == "tt":
        assert any(n[-1] == "cores" for n in unrolled)
    if lax == "kron":
        assert any(n[-1] in ("g0", "g1") and d for n, d in unrolled.items())
        assert any(len(n) > 1 and n[-2] == "latent_norm" and not d for n, d in unrolled.items())


def test_weight_decay_all_decays_everything():
    assert decay_mask("all") is None  # optax decays every leaf


@pytest.mark.slow
def test_mask_reaches_the_optimizer():
    """One AdamW step on zero gradients moves exactly the decayed parameters (by -lr * wd * p)."""
    cfg = vit_config("tiny", kind="tt", lax="kron")
    cfg.optim.update(warmup_steps=0, clip_norm=0.0)
    model = build(cfg.model, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    tx, schedule = make_optimizer(cfg.optim, total_steps=10)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    mask = decay_mask("no_1d")(params)
    lr = float(schedule(0))
    for (path, u), (_, p), (_, m) in zip(
        *(jax.tree_util.tree_flatten_with_path(t)[0] for t in (updates, params, mask))
    ):
        expected = -lr * cfg.optim.weight_decay * np.asarray(p) if m else np.zeros_like(p)
        np.testing.assert_allclose(
            np.asarray(u), expected, rtol=1e-6, atol=1e-12, err_msg=str(path_names(path))
        )


@pytest.mark.parametrize("preset,total", [("b16", 41_447_903), ("l16", 102_100_742)])
def test_tt_lax_vit_has_intra_on_attention(preset, total):
    cfg = from_compact("vit", f"{preset},kind=tt,lax=kron").model
    assert {p: bool(cfg.proj[p].intra) for p in VIT_PROJ} == {
        **dict.fromkeys(("q", "k", "v", "o"), True),
        "fc1": False,
        "fc2": False,
    }
    assert model_stats(cfg).total_params == total
    off = from_compact("vit", f"{preset},kind=tt,lax=kron,intra=0").model
    assert not any(off.proj[p].intra for p in VIT_PROJ)
    assert model_stats(off).total_params == total  # the ungated skip has no parameters
    gated = from_compact("vit", f"{preset},kind=tt,lax=kron,intra=gate").model
    assert all(gated.proj[p].intra_gate for p in ("q", "k", "v", "o"))
    n2, r1 = (24, 32) if preset == "b16" else (32, 32)
    assert model_stats(gated).total_params == total + cfg.num_layers * 4 * (n2 * n2 + r1 * r1)
    for kind in ("svd", "cola"):  # intra is TT's; other kinds never get it
        assert not any(
            from_compact("vit", f"{preset},kind={kind},lax=kron").model.proj[p].get("intra") for p in VIT_PROJ
        )


def one_block_b16(kind: str, **changes):
    cfg = from_compact("vit", f"b16,kind={kind}").model
    cfg.num_layers = 1
    cfg.update(changes)
    return build(cfg, rngs=nnx.Rngs(0))


def assert_std(values, expected: float, what: str) -> None:
    """Sample std within 6 standard errors (se of a std ~ sigma / sqrt(2n) for near-normal draws)."""
    values = np.asarray(values, np.float64).ravel()
    se = expected / math.sqrt(2 * values.size)
    assert abs(values.std() - expected) < 6 * se + 1e-12, f"{what}: std {values.std():.4g} vs {expected:.4g}"


def test_vit_initialisers_follow_the_lax_code():
    model = one_block_b16("cola")
    fan_in = 3 * 16 * 16
    bound = 1 / math.sqrt(fan_in)
    for name, p in (("patch kernel", model.patch_kernel), ("patch bias", model.patch_bias)):
        v = np.asarray(p[...])
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.99 * bound, name
        assert_std(v, bound / math.sqrt(3), name)  # U(-b, b): std b / sqrt(3) = 0.0208 at 768 inputs
    assert_std(model.cls[...], 1e-6, "cls token")
    assert_std(
        model.pos[...], 0.02, "position embedding"
    )  # timm trunc_normal_(0.02) cuts at +-2 absolute: 100 sigma
    block = model.blocks.first
    biases = np.concatenate([np.asarray(getattr(block, p).bias[...]) for p in VIT_PROJ])
    assert_std(biases, 1.0, "factorized-layer biases")  # torch.randn(out_dim)
    assert abs(biases.mean()) < 6 / math.sqrt(biases.size)


def test_vit_dense_baseline_and_old_init_stay_reachable():
    dense = one_block_b16("dense")
    assert all(float(jnp.abs(getattr(dense.blocks.first, p).bias[...]).max()) == 0 for p in VIT_PROJ)
    assert_std(dense.cls[...], 1e-6, "dense cls token")  # stock timm
    old = one_block_b16(
        "cola",
        embed_init="trunc_normal",
        linear={**vit_config("b16", kind="cola").model.linear, "bias_init": "zeros"},
    )
    assert float(jnp.abs(old.patch_bias[...]).max()) == 0
    assert_std(old.cls[...], 0.02, "trunc-normal cls")
    assert float(jnp.abs(old.blocks.first.q.bias[...]).max()) == 0
    with pytest.raises(ValueError, match="model.embed_init='xavier'"):
        one_block_b16("cola", embed_init="xavier")


def test_init_key_selects_the_embedding_init():
    assert vit_config("b16", kind="cola").model.embed_init == "timm"
    assert vit_config("b16", kind="cola").model.linear.bias_init == "normal"
    c = vit_config("b16", kind="cola", init="tt_variance").model
    assert (c.embed_init, c.linear.bias_init) == ("trunc_normal", "zeros")


def test_bf16_precision_mode():
    cfg = llama_config("nano", kind="cola", lax="kron", precision="bf16")
    assert (cfg.model.dtype, cfg.model.param_dtype) == ("bfloat16", "bfloat16")
    model = nnx.eval_shape(lambda: build(cfg.model, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    tx, _ = make_optimizer(cfg.optim, cfg.train.steps)
    opt_state = jax.eval_shape(tx.init, params)
    float_leaves = [leaf for leaf in jax.tree.leaves(opt_state) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    moments = [leaf for leaf in float_leaves if leaf.ndim > 0]
    assert moments and {leaf.dtype for leaf in moments} == {jnp.dtype(jnp.bfloat16)}
    with pytest.raises(ValueError, match="dtype='float32' contradicts precision=bf16"):
        llama_config("nano", precision="bf16", dtype="float32")
    with pytest.raises(ValueError, match="precision='fp16'"):
        llama_config("nano", precision="fp16")


def test_latent_act_compact_keys():
    c = vit_config("b16", kind="svd", latent_act=True, act="relu").model
    assert (c.linear.latent_act, c.linear.activation) == (True, "relu")
    model = nnx.eval_shape(lambda: build(c, rngs=nnx.Rngs(0)))
    assert model.blocks.first.q.spec.latent_act
    assert vit_config("b16", kind="svd").model.linear.latent_act is None  # the spec resolves it per kind


def test_recipe_rows_name_sources():
    rows = {r.key: r for r in recipe_rows(vit_config("l16", kind="tt", lax="kron"), overridden={"optim.lr"})}
    assert rows["optim.weight_decay"].value == 0.3 and "LaX ViT code" in rows["optim.weight_decay"].source
    assert rows["optim.lr"].source.startswith("command line")
    assert rows["model.proj.q.intra"].value is True
    llama = {r.key: r for r in recipe_rows(llama_config("60m", kind="cola"))}
    assert llama["optim.lr"].source == "CoLA code: the LLaMA-60M script"
    assert llama["data.document_format"].value == "cola"
    nano = {r.key: r for r in recipe_rows(llama_config("nano"))}
    assert nano["train.steps"].source.startswith("ours")


@pytest.mark.slow
def test_params_cli_prints_the_recipe():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lax_pretrain.params",
            "--config=configs/vit.py:b16,kind=cola,lax=kron",
            "--recipe",
            "--json",
            "--config.optim.weight_decay=0.1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    rows = {r["key"]: r for r in json.loads(out)}
    assert rows["optim.weight_decay"]["value"] == 0.1
    assert rows["optim.weight_decay"]["source"].startswith("command line (recipe: LaX ViT code")
    assert rows["model.embed_init"]["value"] == "timm"
