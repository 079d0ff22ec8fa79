"""Tests of the models (lax_pretrain.models), their presets and compact config grammar, and model_stats.

Big presets (60M .. 7B LLaMA, ViT-B/L) are only ever built abstractly (`nnx.eval_shape`, no memory) and their
parameter totals are checked three ways: against docs/methods.md section 4 (within 0.5%; LaX extras
within 0.005M of the stated 0.01M-rounded figures), against an analytic count written here from the
methods.md definitions (exact), and against the leaves of the abstract parameter tree (exact).

Numerics use small models derived from `llama_config('nano')` / `vit_config('tiny')` with reduced widths
(d=32, 4 heads, ffn 48 / mlp 64, latent rank 8, 2-3 blocks). On CPU these are compile-bound, so models are
built abstractly and given random parameters from fixed seeds (`random_params`, unrolled layout; stacked into
`blocks.rest` for a scanned stack), every call is jitted, and XLA's backend optimisations are off (the
initialisers themselves are tested in test_layers.py). Inputs are random from fixed seeds, never zeros.

Tolerances (float32): scanned vs unrolled and remat vs no remat compare the same arithmetic under different
XLA schedules: rtol = atol = 1e-5 on logits and on every gradient (values O(0.01..1)). Against float64 numpy
references: rtol 1e-5, atol 1e-5 x max|ref|. Causality is checked exactly: a masked future position
contributes an exact 0 through the softmax and its gradient, and logits at <= t are bit-identical when
tokens > t change.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lax_pretrain.config import LLAMA_PRESETS, VIT_PRESETS, from_compact, llama_config, vit_config
from lax_pretrain.layers import tt_shape
from lax_pretrain.models import build
from lax_pretrain.models.llama import PROJECTIONS as LLAMA_PROJ
from lax_pretrain.models.llama import head_dim, rope_tables
from lax_pretrain.models.stats import model_stats
from lax_pretrain.models.vit import PROJECTIONS as VIT_PROJ

TOL = 1e-5
M = 1e6
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# ============================================================================ parameter counts (abstract)

# docs/methods.md section 4, in millions.
LLAMA_TARGETS = {  # preset: (dense, svd/cola)
    "60m": (58.07, 42.77),
    "130m": (134.11, 94.00),
    "350m": (367.97, 185.22),
    "1b": (1339.08, 609.31),
    "7b": (6738.4, 2820.9),
}
VIT_TARGETS = {  # preset: {kind: total}
    "b16": {"dense": 86.57, "svd": 44.17, "cola": 44.17, "tt": 41.28},
    "l16": {"dense": 304.33, "svd": 115.78, "cola": 115.78, "tt": 101.97},
}
VIT_LAX_EXTRA = {
    ("b16", "svd"): 0.07,
    ("b16", "cola"): 0.07,
    ("b16", "tt"): 0.17,
    ("l16", "svd"): 0.14,
    ("l16", "cola"): 0.14,
    ("l16", "tt"): 0.13,
}
# The stated LaX extras are printed to 0.01M: we accept half the last digit, |ours - stated| <= 0.005M.
LAX_EXTRA_TOL = 0.005
# The official LaX TT shapes (methods.md 1.1), written out here independently of lax_pretrain.config.
OFFICIAL_TT = {
    "b16": {
        "attn": ((32, 24), (24, 32), (1, 32, 336, 32, 1)),
        "fc1": ((32, 24), (48, 64), (1, 32, 158, 64, 1)),
        "fc2": ((48, 64), (32, 24), (1, 48, 159, 24, 1)),
    },
    "l16": {
        "attn": ((32, 32), (32, 32), (1, 32, 256, 32, 1)),
        "fc1": ((32, 32), (64, 64), (1, 32, 198, 64, 1)),
        "fc2": ((64, 64), (32, 32), (1, 64, 198, 32, 1)),
    },
}
PAPER_RANKS = {"60m": 128, "130m": 256, "350m": 256, "1b": 512, "7b": 1024}
LLAMA_ARCH = {  # methods.md section 4: d, ffn, layers, heads
    "60m": (512, 1376, 8, 8),
    "130m": (768, 2048, 12, 12),
    "350m": (1024, 2736, 24, 16),
    "1b": (2048, 5461, 24, 32),
    "7b": (4096, 11008, 32, 32),
}


def kron_factors(r: int) -> tuple[int, int]:
    f0 = max(f for f in range(1, math.isqrt(r) + 1) if r % f == 0)
    return f0, r // f0


def kron_lax_params(latent: int) -> int:
    """One crossed projection: kron gate (f0^2 + f1^2) + affine LayerNorm over the latent (2 r)."""
    f0, f1 = kron_factors(latent)
    return f0 * f0 + f1 * f1 + 2 * latent


def llama_expected(preset: str, kind: str, lax: bool = False) -> int:
    """Analytic count: untied embedding + head, two RMSNorms per block, final RMSNorm, no biases."""
    d, f, layers, _ = LLAMA_ARCH[preset]
    v, r = 32000, PAPER_RANKS[preset]
    shapes = [(d, d)] * 4 + [(d, f), (d, f), (f, d)]
    proj = sum(i * o if kind == "dense" else r * (i + o) for i, o in shapes)
    extra = (layers - 1) * 7 * kron_lax_params(r) if lax else 0
    return 2 * v * d + d + layers * (proj + 2 * d) + extra


def vit_expected(preset: str, kind: str, lax: bool = False) -> int:
    """Analytic count: patch conv + bias, cls, positions, pre-LN blocks (+ MLP-hidden LN if low-rank),
    final LN, head."""
    p = VIT_PRESETS[preset]
    d, f, layers, k = p.d_model, p.mlp_dim, p.num_layers, p.num_classes
    n = (p.image_size // p.patch_size) ** 2
    outside = p.patch_size**2 * p.channels * d + d + d + (n + 1) * d + 2 * d + d * k + k
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc1": (d, f), "fc2": (f, d)}
    proj, lax_extra = 0, 0
    for name, (i, o) in shapes.items():
        if kind == "dense":
            proj += i * o + o
            continue
        if kind == "tt":
            in_modes, out_modes, ranks = OFFICIAL_TT[preset]["attn" if name in ("q", "k", "v", "o") else name]
            modes = in_modes + out_modes
            proj += sum(ranks[j] * modes[j] * ranks[j + 1] for j in range(4)) + o
            latent = ranks[2]
        else:
            proj += p.rank * (i + o) + o
            latent = p.rank
        lax_extra += kron_lax_params(latent)
    norms = 2 * 2 * d + (2 * f if kind != "dense" else 0)
    return outside + layers * (proj + norms) + ((layers - 1) * lax_extra if lax else 0)


def tree_param_count(model_cfg) -> int:
    """Independent count: the leaves of the abstract parameter tree (a scanned stack's leaves are stacked)."""
    abstract = nnx.eval_shape(lambda: build(model_cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def close_to(actual: int, target_m: float, rel: float = 0.005) -> bool:
    return abs(actual / M - target_m) <= rel * target_m


# `scan=1` keeps eval_shape fast for the unrolled presets (test_scan_does_not_change_counts: it is neutral).
@pytest.mark.parametrize("preset", list(LLAMA_TARGETS))
@pytest.mark.parametrize("kind", ["dense", "svd", "cola"])
def test_llama_param_totals(preset, kind):
    cfg = from_compact("llama", f"{preset},kind={kind},scan=1").model
    stats = model_stats(cfg)
    target = LLAMA_TARGETS[preset][0 if kind == "dense" else 1]
    assert close_to(stats.total_params, target), (stats.total_params / M, target)
    assert stats.total_params == llama_expected(preset, kind) == tree_param_count(cfg)
    assert stats.non_embedding_params == stats.total_params - 2 * 32000 * cfg.d_model
    assert stats.lax_params == 0


@pytest.mark.parametrize("preset", ["b16", "l16"])
@pytest.mark.parametrize("kind", ["dense", "svd", "cola", "tt"])
def test_vit_param_totals(preset, kind):
    cfg = from_compact("vit", f"{preset},kind={kind},scan=1").model
    stats = model_stats(cfg)
    target = VIT_TARGETS[preset][kind]
    assert close_to(stats.total_params, target), (stats.total_params / M, target)
    assert stats.total_params == vit_expected(preset, kind) == tree_param_count(cfg)
    assert stats.lax_params == 0


@pytest.mark.parametrize("preset", ["b16", "l16"])
@pytest.mark.parametrize("kind", ["svd", "cola", "tt"])
def test_vit_lax_overhead(preset, kind):
    plain = model_stats(from_compact("vit", f"{preset},kind={kind},scan=1").model)
    cfg = from_compact("vit", f"{preset},kind={kind},lax=kron,scan=1").model
    crossed = model_stats(cfg)
    extra = crossed.total_params - plain.total_params
    assert extra == crossed.lax_params == vit_expected(preset, kind, lax=True) - vit_expected(preset, kind)
    assert abs(extra / M - VIT_LAX_EXTRA[preset, kind]) <= LAX_EXTRA_TOL, extra / M
    assert crossed.total_params == tree_param_count(cfg)
    assert crossed.non_embedding_params - plain.non_embedding_params == extra


@pytest.mark.parametrize("preset", ["60m", "1b"])
def test_llama_lax_overhead(preset):
    """No published figure for LLaMA: exactly (L - 1) blocks x 7 projections x (kron + LayerNorm)."""
    plain = model_stats(from_compact("llama", f"{preset},kind=cola,scan=1").model)
    crossed = model_stats(from_compact("llama", f"{preset},kind=cola,lax=kron,scan=1").model)
    assert crossed.total_params - plain.total_params == crossed.lax_params
    assert crossed.total_params == llama_expected(preset, "cola", lax=True)
    assert {r.name: r.lax_params for r in crossed.rows} == dict.fromkeys(
        LLAMA_PROJ, (LLAMA_ARCH[preset][2] - 1) * kron_lax_params(PAPER_RANKS[preset])
    )


@pytest.mark.parametrize(
    "family,arg", [("llama", "60m,kind=cola,lax=kron"), ("vit", "tiny,kind=tt,lax=kron")]
)
def test_scan_does_not_change_counts(family, arg):
    unrolled = model_stats(from_compact(family, f"{arg},scan=0").model)
    scanned = model_stats(from_compact(family, f"{arg},scan=1").model)
    assert scanned.rows == unrolled.rows
    assert (
        scanned.total_params,
        scanned.non_embedding_params,
        scanned.lax_params,
        scanned.flops_per_token,
    ) == (unrolled.total_params, unrolled.non_embedding_params, unrolled.lax_params, unrolled.flops_per_token)


@pytest.mark.parametrize("arg", ["60m", "60m,kind=cola,lax=kron", "130m,kind=tt,lax=kron,scan=1"])
def test_llama_rows_add_up(arg):
    """Projection rows + RMSNorms = non-embedding parameters; every projection appears once per block."""
    cfg = from_compact("llama", arg).model
    stats = model_stats(cfg)
    assert [r.name for r in stats.rows] == list(LLAMA_PROJ)
    assert all(r.count == cfg.num_layers for r in stats.rows)
    norms = 2 * cfg.num_layers * cfg.d_model + cfg.d_model
    assert sum(r.params for r in stats.rows) + norms == stats.non_embedding_params
    assert sum(r.lax_params for r in stats.rows) == stats.lax_params


# ============================================================================ config grammar


def test_compact_strings_parse():
    c = llama_config("60m", kind="cola", lax="kron", rank=128).model
    assert (c.linear.kind, c.linear.crossing, c.preset) == ("cola", "kron", "60m")
    assert {n: c.proj[n].rank for n in LLAMA_PROJ} == dict.fromkeys(LLAMA_PROJ, 128)

    v = vit_config("b16", kind="tt", lax="kron").model
    assert (v.linear.kind, v.linear.crossing) == ("tt", "kron")
    for name in VIT_PROJ:
        in_modes, out_modes, ranks = OFFICIAL_TT["b16"]["attn" if name in ("q", "k", "v", "o") else name]
        spec = v.proj[name]
        got = (tuple(spec.tt_in_modes), tuple(spec.tt_out_modes), tuple(spec.tt_ranks))
        assert got == (in_modes, out_modes, ranks), name
        # The authors' TT + LaX configs: intra-layer LaX on the attention projections only.
        assert spec.intra == (name in ("q", "k", "v", "o")), name
    assert not any(
        vit_config("b16", kind="tt", lax="kron", intra=False).model.proj[n].intra for n in VIT_PROJ
    )
    assert not any(vit_config("b16", kind="tt").model.proj[n].intra for n in VIT_PROJ)

    n = llama_config("nano", kind="tt", intra=True).model
    assert {p: n.proj[p].intra for p in LLAMA_PROJ} == {
        "q": True,
        "k": True,
        "v": True,
        "o": True,
        "gate": False,
        "up": False,
        "down": False,
    }
    assert n.linear.crossing == "none"
    nnx.eval_shape(lambda: build(n, rngs=nnx.Rngs(0)))  # the derived TT shapes satisfy intra's constraints

    s = from_compact(
        "llama", "nano,scan=1,remat=cola_m,dtype=bfloat16,only_lr_act=1,norm=rmsnorm,init=tt_variance"
    ).model
    assert (s.scan_layers, s.remat, s.dtype, s.only_lr_act, s.linear.latent_norm, s.linear.init) == (
        True,
        "cola_m",
        "bfloat16",
        True,
        "rmsnorm",
        "tt_variance",
    )


@pytest.mark.parametrize("preset", list(PAPER_RANKS))
def test_llama_preset_defaults(preset):
    c = from_compact("llama", f"{preset},kind=cola").model
    assert (c.d_model, c.ffn_dim, c.num_layers, c.num_heads) == LLAMA_ARCH[preset]
    assert (c.vocab_size, c.num_kv_heads, c.tie_embeddings, c.norm_eps, c.rope_theta) == (
        32000,
        c.num_heads,
        False,
        1e-6,
        1e4,
    )
    assert {n: c.proj[n].rank for n in LLAMA_PROJ} == dict.fromkeys(LLAMA_PROJ, PAPER_RANKS[preset])
    # CoLA's released configs: 60M/130M keep the outer SiLU of the SwiGLU, 350M/1B/7B drop it.
    assert c.only_lr_act == (preset in ("350m", "1b", "7b"))
    assert not from_compact("llama", f"{preset},kind=svd").model.only_lr_act
    assert LLAMA_PRESETS[preset].rank == PAPER_RANKS[preset]


@pytest.mark.parametrize("preset", ["b16", "l16"])
def test_vit_preset_defaults(preset):
    for kind in ("svd", "cola"):
        c = from_compact("vit", f"{preset},kind={kind}").model
        assert {n: c.proj[n].rank for n in VIT_PROJ} == dict.fromkeys(VIT_PROJ, 256)
    c = from_compact("vit", f"{preset},kind=tt").model
    for name in VIT_PROJ:
        expected = OFFICIAL_TT[preset]["attn" if name in ("q", "k", "v", "o") else name]
        assert tuple(tuple(c.proj[name][k]) for k in ("tt_in_modes", "tt_out_modes", "tt_ranks")) == expected
    assert (c.image_size, c.patch_size, c.channels, c.num_classes) == (224, 16, 3, 1000)
    assert c.mlp_hidden_norm == "auto"


@pytest.mark.parametrize(
    "family,arg,key",
    [
        ("llama", "61m,kind=cola", "'61m'"),  # unknown preset
        ("llama", "kind=cola", "preset"),  # no preset
        ("llama", "60m,knd=cola", "'knd=cola'"),  # unknown key
        ("llama", "60m,kind", "'kind'"),  # missing '='
        ("llama", "60m,intra=2", "intra='2'"),  # bad flag values
        ("llama", "60m,scan=yes", "scan='yes'"),
        ("llama", "60m,only_lr_act=maybe", "only_lr_act='maybe'"),
        ("vit", "b16,only_lr_act=1", "'only_lr_act=1'"),  # a LLaMA-only key
        ("vit", "b32", "'b32'"),
        ("llama", "60m,kind=cola,rank=abc", "rank"),  # non-integer rank
        ("vit", "b16,kind=cola,rank=1.5", "rank"),
    ],
)
def test_bad_compact_args_name_the_key(family, arg, key):
    """The message quotes the offending key (and value), not merely the list of known keys."""
    with pytest.raises(ValueError, match=re.escape(key)):
        from_compact(family, arg)


@pytest.mark.parametrize(
    "arg,edit,key",
    [
        ("60m,kind=cola", lambda m: setattr(m.proj.q, "rank", 0), "model.proj.q.rank"),
        ("60m,kind=cola,rank=0", None, "model.proj.q.rank"),
        ("60m,kind=svd", lambda m: setattr(m.proj.down, "rank", -3), "model.proj.down.rank"),
        ("60m,kind=tt", lambda m: setattr(m.proj.k, "rank", 0), "model.proj.k.rank"),
        ("b16,kind=tt", lambda m: setattr(m.proj.q, "tt_ranks", [1, 8, 8, 1]), "model.proj.q.tt_ranks"),
        ("b16,kind=tt", lambda m: setattr(m.proj.fc1, "tt_in_modes", [32, 25]), "model.proj.fc1.tt_in_modes"),
        ("60m,kind=dense,lax=kron", None, "model.proj.q.crossing"),
        ("60m,remat=everything", None, "model.remat"),
        ("60m,dtype=float64", None, "model.dtype"),
    ],
)
def test_bad_spec_values_raise_at_build(arg, edit, key):
    cfg = from_compact("llama" if arg[0].isdigit() else "vit", arg)  # parsing itself succeeds
    if edit is not None:
        edit(cfg.model)
    with pytest.raises(ValueError, match=re.escape(key)):
        nnx.eval_shape(lambda: build(cfg.model, rngs=nnx.Rngs(0)))


def test_tt_configs_follow_width_overrides():
    """kind=tt stores the latent bond, not a shape: a width override on the command line just works."""
    cfg = llama_config("60m", kind="tt", lax="kron", rank=64)
    cfg.model.update(d_model=384, ffn_dim=1024, num_heads=6, num_kv_heads=6)
    model = nnx.eval_shape(lambda: build(cfg.model, rngs=nnx.Rngs(0)))
    attn, mlp = model.blocks.first.attn, model.blocks.first.mlp
    assert (attn.q.spec.tt_in_modes, attn.q.spec.tt_out_modes) == ((24, 16), (16, 24))
    assert (mlp.up.spec.tt_out_modes, mlp.down.spec.tt_in_modes) == ((32, 32), (32, 32))
    assert all(m.spec.latent_dim == 64 for m in (attn.q, attn.k, attn.v, attn.o, mlp.gate, mlp.up, mlp.down))


# ============================================================================ small models

D, FFN, MLP, HEADS, VOCAB, RANK = 32, 48, 64, 4, 61, 8  # distinct widths, so shapes identify tensors
BATCH, SEQ = 2, 8
COLA_KRON = "kind=cola,lax=kron"
TT_KRON = "kind=tt,lax=kron"
TT_KRON_INTRA = "kind=tt,lax=kron,intra=1"


def _small_proj(kind: str, shapes: dict[str, tuple[int, int]], intra: bool) -> dict:
    if kind in ("svd", "cola"):
        return {n: {"rank": RANK} for n in shapes}
    if kind == "tt":  # the config's own 4-core layout at the small widths (32 -> 48: [8, 4 | 6, 8], latent 8)
        out = {}
        for n, (i, o) in shapes.items():
            in_modes, out_modes, ranks = tt_shape(i, o, RANK)
            out[n] = {
                "tt_in_modes": list(in_modes),
                "tt_out_modes": list(out_modes),
                "tt_ranks": list(ranks),
                "intra": intra and n in ("q", "k", "v", "o"),
            }
        return out
    return {}


def small_llama(arg: str = "", *, layers: int = 2, kv_heads: int = HEADS):
    """llama_config('nano,' + arg) shrunk to d=32, 4 heads, ffn 48, vocab 61, latent rank 8."""
    c = from_compact("llama", f"nano,{arg}" if arg else "nano").model
    intra = bool(c.proj.get("q", {}).get("intra", False))
    c.d_model, c.ffn_dim, c.num_heads, c.num_kv_heads = D, FFN, HEADS, kv_heads
    c.vocab_size, c.num_layers = VOCAB, layers
    e = D // HEADS
    shapes = {
        "q": (D, HEADS * e),
        "k": (D, kv_heads * e),
        "v": (D, kv_heads * e),
        "o": (HEADS * e, D),
        "gate": (D, FFN),
        "up": (D, FFN),
        "down": (FFN, D),
    }
    c.proj = _small_proj(c.linear.kind, shapes, intra)
    return c


def small_vit(
    arg: str = "", *, layers: int = 2, image: int = 28, patch: int = 4, channels: int = 1, classes: int = 10
):
    """vit_config('tiny,' + arg) shrunk to d=32, 4 heads, mlp 64, latent rank 8."""
    c = from_compact("vit", f"tiny,{arg}" if arg else "tiny").model
    c.d_model, c.mlp_dim, c.num_heads, c.num_layers = D, MLP, HEADS, layers
    c.image_size, c.patch_size, c.channels, c.num_classes = image, patch, channels, classes
    shapes = {"q": (D, D), "k": (D, D), "v": (D, D), "o": (D, D), "fc1": (D, MLP), "fc2": (MLP, D)}
    c.proj = _small_proj(c.linear.kind, shapes, False)
    return c


def rand(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def tokens(seed: int = 0, shape=(BATCH, SEQ)) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


def images(cfg, seed: int = 0) -> jax.Array:
    return jnp.asarray(rand((BATCH, cfg.image_size, cfg.image_size, cfg.channels), seed))


def flat(state) -> dict[tuple, np.ndarray]:
    """{path: array} of a State (Variables or raw arrays as leaves)."""
    return {
        path: np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v)
        for path, v in nnx.to_flat_state(state)
    }


def is_stacked(path: tuple) -> bool:
    """A scanned stack holds blocks 1..L-1 as ('blocks', 'rest', <attr>, ...) with a leading layer axis; an
    unrolled one as ('blocks', 'rest', <index>, ...)."""
    return path[:2] == ("blocks", "rest") and isinstance(path[2], str)


def to_unrolled(values: dict[tuple, np.ndarray]) -> dict[tuple, np.ndarray]:
    out = {}
    for path, v in values.items():
        if is_stacked(path):
            out.update({("blocks", "rest", i) + path[2:]: v[i] for i in range(v.shape[0])})
        else:
            out[path] = v
    return out


def with_values(state, values: dict[tuple, np.ndarray], num_layers: int):
    """`state` (a Param State of either layout) with every leaf taken from unrolled-layout `values`."""
    new, used = [], set()
    for path, var in nnx.to_flat_state(state):
        if is_stacked(path):
            keys = [("blocks", "rest", i) + path[2:] for i in range(num_layers - 1)]
            value = np.stack([values[k] for k in keys])
        else:
            keys, value = [path], values[path]
        assert value.shape == var.shape, path
        used.update(keys)
        new.append((path, var.replace(jnp.asarray(value))))
    assert used == set(values), set(values) ^ used  # a bijection between the two layouts
    return nnx.from_flat_state(new)


def random_params(cfg, seed: int) -> dict[tuple, np.ndarray]:
    """Random parameters for `cfg` in the unrolled layout, O(1) activations: norm scales 1 + 0.1 N, vectors
    0.1 N, matrices and TT cores N / sqrt(prod(shape[:-1])) (unit-variance products). No init code runs."""
    unrolled = cfg.copy_and_resolve_references()
    unrolled.scan_layers = False
    abstract = nnx.state(nnx.eval_shape(lambda: build(unrolled, rngs=nnx.Rngs(0))), nnx.Param)
    rng = np.random.default_rng(seed)
    out = {}
    for path, var in nnx.to_flat_state(abstract):  # a fixed (sorted) order of paths
        z = rng.standard_normal(var.shape).astype(np.float32)
        if path[-1] == "scale":
            out[path] = 1 + 0.1 * z
        elif z.ndim == 1:
            out[path] = 0.1 * z
        else:
            out[path] = z / np.float32(math.sqrt(math.prod(var.shape[:-1])))
    return out


def materialize(cfg, values: dict[tuple, np.ndarray], seed: int = 0) -> nnx.Module:
    """The model of `cfg` built abstractly (no init runs: fast) with parameters `values`; RNG streams
    (ViT dropout) get fresh keys from `seed`."""
    # Streams named as in training (params, dropout), so nnx.reseed(dropout=...) finds them.
    abstract = nnx.eval_shape(lambda: build(cfg, rngs=nnx.Rngs(params=0, dropout=0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    key = jax.random.key(seed)

    def concrete(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.split(key, leaf.shape) if leaf.shape else key
        assert jnp.issubdtype(leaf.dtype, jnp.integer), leaf  # RNG counters: nothing else is expected
        return jnp.zeros(leaf.shape, leaf.dtype)

    rest = jax.tree.map(concrete, rest)
    return nnx.merge(graphdef, with_values(params, values, cfg.num_layers), rest)


def small_model(family: str, arg: str = "", seed: int = 0, **kw) -> nnx.Module:
    cfg = (small_llama if family == "llama" else small_vit)(arg, **kw)
    return materialize(cfg, random_params(cfg, seed))


def jit(fn, **kw):
    """jax.jit with XLA's backend optimisations off: these tiny models are compile-bound on CPU, and every
    comparison below is between two programs compiled the same way."""
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kw)


def forward_fn(model: nnx.Module, train: bool | None = None):
    """A jitted `(state, inputs) -> model(inputs)` for models of `model`'s structure (one compile)."""
    graphdef = nnx.graphdef(model)

    def f(state, inputs):
        m = nnx.merge(graphdef, state)
        return m(inputs) if train is None else m(inputs, train=train)

    return jit(f)


def xent(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))


def logits_and_grads(model: nnx.Module, inputs: jax.Array, targets: jax.Array):
    """(logits, {path: grad} in unrolled layout) of the mean cross-entropy, in eval mode, jitted."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    kw = {"train": False} if model.cfg.family == "vit" else {}

    def loss(p, rest):
        # Fresh Variables for the non-differentiated state (ViT RNG streams) at this trace level: merged
        # as-is they belong to the jit trace, and nnx refuses to use them under grad (see the report).
        rest = jax.tree.map(lambda v: v, rest)
        logits = nnx.merge(graphdef, p, rest)(inputs, **kw)
        return xent(logits, targets), logits

    (_, logits), grads = jit(jax.value_and_grad(loss, has_aux=True))(params, rest)
    return np.asarray(logits), to_unrolled(flat(grads))


@functools.cache
def run_variant(family: str, arg: str, scan: bool, remat: str, layers: int = 3):
    """Logits and gradients of `arg` built scanned/unrolled with `remat`, every variant with the same random
    parameters (given in the unrolled layout, stacked into `blocks.rest` when scanned)."""
    make = small_llama if family == "llama" else small_vit
    cfg = make(f"{arg},scan={int(scan)},remat={remat}", layers=layers)
    model = materialize(cfg, random_params(cfg, seed=0))
    assert model.blocks.scan == scan and model.blocks.remat == remat
    if family == "llama":
        inputs, targets = tokens(1), tokens(2)
    else:
        inputs, targets = images(cfg, 1), jnp.asarray(np.random.default_rng(2).integers(0, 10, BATCH))
    return logits_and_grads(model, inputs, targets)


def assert_same_run(actual, expected):
    logits_a, grads_a = actual
    logits_e, grads_e = expected
    np.testing.assert_allclose(logits_a, logits_e, rtol=TOL, atol=TOL)
    assert set(grads_a) == set(grads_e)
    for path in grads_e:
        np.testing.assert_allclose(grads_a[path], grads_e[path], rtol=TOL, atol=TOL, err_msg=str(path))


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,arg", [("llama", COLA_KRON), ("llama", TT_KRON), ("vit", COLA_KRON), ("vit", TT_KRON)]
)
def test_scanned_equals_unrolled(family, arg):
    unrolled = run_variant(family, arg, False, "none")
    scanned = run_variant(family, arg, True, "none")
    assert_same_run(scanned, unrolled)
    # Every parameter, LaX gates and latent norms of every block included, receives a gradient.
    dead = [p for p, g in unrolled[1].items() if not np.any(g)]
    assert not dead, dead


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("remat", ["full", "cola_m"])
def test_remat_is_numerically_neutral(scan, remat):
    expected = run_variant("llama", COLA_KRON, scan, "none")
    assert_same_run(run_variant("llama", COLA_KRON, scan, remat), expected)


def _saved_residuals(remat: str) -> list[str]:
    """The residuals a backward pass keeps, as printed by jax (tracing only, nothing runs)."""
    abstract = nnx.eval_shape(lambda: build(small_llama(f"{COLA_KRON},remat={remat}"), rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)  # shapes suffice: nothing is computed
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens())), params)
    return [line for line in out.getvalue().splitlines() if "from the argument" not in line]


def test_cola_m_saves_only_latents_and_residual_stream():
    """Without remat FFN-wide (48) activations are saved; under CoLA-M none are (recomputed from latents)."""
    ffn_wide = re.compile(rf"f32\[[\d,]*,{FFN}\]")
    assert any(ffn_wide.search(line) for line in _saved_residuals("none"))
    cola_m = _saved_residuals("cola_m")
    assert not [line for line in cola_m if ffn_wide.search(line)]
    assert sum("named 'lax_latent'" in line for line in cola_m) >= len(LLAMA_PROJ)  # block 0's + block 1's
    assert any("named 'residual'" in line for line in cola_m)
    full = _saved_residuals("full")
    assert not any("named 'lax_latent'" in line or ffn_wide.search(line) for line in full)


# ---------------------------------------------------------------------------- causality


def logits_from_embeddings(model, x_BxLxD: jax.Array) -> jax.Array:
    """Llama.__call__ after the embedding lookup (the model has no embeddings entry point)."""
    cfg = model.cfg
    sin, cos = rope_tables(x_BxLxD.shape[1], head_dim(cfg), cfg.rope_theta)
    h = model.final_norm(model.blocks(x_BxLxD.astype(model.dtype), sin, cos))
    head = model.embed[...].T if cfg.tie_embeddings else model.head[...]
    return jnp.dot(h, head.astype(model.dtype), preferred_element_type=jnp.float32)


@pytest.mark.parametrize("arg", ["", COLA_KRON, TT_KRON_INTRA], ids=["dense", "cola+kron", "tt+kron+intra"])
def test_llama_is_causal(arg):
    model = small_model("llama", arg)
    graphdef, state = nnx.split(model)
    toks, targets = tokens(3), tokens(4)

    def per_position_loss(state, x):
        logits = logits_from_embeddings(nnx.merge(graphdef, state), x)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        return nll.sum(0), logits  # (L,): loss at position t, summed over the batch

    forward = functools.partial(forward_fn(model), state)
    x = jnp.take(model.embed[...], toks, axis=0)
    jac, logits = jit(jax.jacrev(per_position_loss, argnums=1, has_aux=True))(state, x)  # (L, B, L, D)
    np.testing.assert_allclose(logits, forward(toks), rtol=TOL, atol=TOL)  # the helper is the model

    norms = np.abs(np.asarray(jac)).sum(axis=(1, 3))  # [t, s]: |d loss_t / d x_s|
    future = np.triu(np.ones((SEQ, SEQ), bool), k=1)
    assert np.all(norms[future] == 0.0), norms  # exactly zero, not merely small
    assert np.all(norms[~future] > 0.0), norms  # and every past position matters

    reference = np.asarray(forward(toks))
    rng = np.random.default_rng(5)
    for t in range(SEQ - 1):
        changed = np.asarray(toks).copy()
        changed[:, t + 1 :] = (
            changed[:, t + 1 :] + rng.integers(1, VOCAB, changed[:, t + 1 :].shape)
        ) % VOCAB
        out = np.asarray(forward(jnp.asarray(changed)))
        np.testing.assert_array_equal(out[:, : t + 1], reference[:, : t + 1])  # bit-identical
        assert not np.allclose(out[:, t + 1 :], reference[:, t + 1 :])


# ---------------------------------------------------------------------------- LaX crossing


def test_lax_latents_cross_per_projection():
    """Block 1's latent of projection p depends on block 0's latent of p (q->q, not q->k): holding block
    1's input fixed and perturbing one incoming latent changes exactly the latents downstream of p."""
    model = small_model("llama", COLA_KRON)
    graphdef, state = nnx.split(model)
    sin, cos = rope_tables(SEQ, D // HEADS, 1e4)

    @jit
    def block0(state, x):
        return nnx.merge(graphdef, state).blocks.first(x, None, sin, cos)

    @jit
    def block1(x, latents):
        return nnx.merge(graphdef, state).blocks.rest[0](x, latents, sin, cos)

    x0 = jnp.asarray(rand((BATCH, SEQ, D), 6))
    x1, lat0 = block0(state, x0)
    assert {p: lat0[p].shape for p in LLAMA_PROJ} == dict.fromkeys(LLAMA_PROJ, (BATCH, SEQ, RANK))
    y1, lat1 = block1(x1, lat0)
    downstream = {
        "q": {"q", "o", "gate", "up", "down"},
        "k": {"k", "o", "gate", "up", "down"},
        "v": {"v", "o", "gate", "up", "down"},
        "o": {"o", "gate", "up", "down"},
        "gate": {"gate", "down"},
        "up": {"up", "down"},
        "down": {"down"},
    }
    for p in LLAMA_PROJ:
        bumped = {**lat0, p: lat0[p] + 0.5 * jnp.asarray(rand(lat0[p].shape, 7))}
        y1b, lat1b = block1(x1, bumped)
        changed = {n for n in LLAMA_PROJ if not np.array_equal(lat1b[n], lat1[n])}
        assert changed == downstream[p], p
        assert not np.allclose(y1b, y1)

    # Changing block 0's q down-projection changes block 1's q latent through the crossing alone.
    values = flat(state)
    key = ("blocks", "first", "attn", "q", "down")
    state2 = nnx.from_flat_state(
        [
            (k, v.replace(jnp.asarray(values[k] + 0.1 * rand(values[k].shape, 8))) if k == key else v)
            for k, v in nnx.to_flat_state(state)
        ]
    )
    _, lat0b = block0(state2, x0)
    _, lat1b = block1(x1, lat0b)  # block 1 input held fixed
    assert not np.allclose(lat1b["q"], lat1["q"])
    for p in ("k", "v"):  # block 0's k, v latents do not depend on its q; so neither do block 1's
        np.testing.assert_array_equal(lat1b[p], lat1[p])


def test_kron_crossing_with_zero_gate_is_no_crossing():
    """crossing 'kron' (no latent norm) with zeroed gates == crossing 'none' with the same shared parameters;
    with the initial gates the outputs differ: the gate is the only path between blocks' latents."""
    crossed_cfg = small_llama(f"{COLA_KRON},norm=none")
    values = random_params(crossed_cfg, seed=0)
    gates = {k for k in values if k[-2:] in (("gate", "g0"), ("gate", "g1"))}
    assert len(gates) == 2 * len(LLAMA_PROJ)  # block 1 only; block 0 has no gate
    plain = materialize(small_llama("kind=cola"), {k: v for k, v in values.items() if k not in gates})
    crossed = materialize(crossed_cfg, values)
    zeroed = materialize(
        crossed_cfg, {k: 0 * v if k in gates and k[-1] == "g0" else v for k, v in values.items()}
    )
    toks = tokens(9)
    run = forward_fn(crossed)
    reference = forward_fn(plain)(nnx.state(plain), toks)
    np.testing.assert_allclose(run(nnx.state(zeroed), toks), reference, rtol=TOL, atol=TOL)
    assert np.abs(run(nnx.state(crossed), toks) - reference).max() > 1e-3


# ---------------------------------------------------------------------------- grouped-query attention


def np_attention(x, wq, wk, wv, wo, heads, kv_heads, theta=1e4):
    """float64 reference: RoPE (rotate_half), causal softmax, kv head j serves query heads j*g .. j*g+g-1."""
    b, length, _ = x.shape
    e = wq.shape[1] // heads
    inv_freq = 1.0 / theta ** (np.arange(0, e, 2) / e)
    ang = np.arange(length)[:, None] * inv_freq[None]
    sin, cos = np.sin(np.concatenate([ang, ang], -1)), np.cos(np.concatenate([ang, ang], -1))

    def rope(t):
        rotated = np.concatenate([-t[..., e // 2 :], t[..., : e // 2]], -1)
        return t * cos[None, :, None] + rotated * sin[None, :, None]

    q = rope((x @ wq).reshape(b, length, heads, e))
    k = rope((x @ wk).reshape(b, length, kv_heads, e))
    v = (x @ wv).reshape(b, length, kv_heads, e)
    k, v = np.repeat(k, heads // kv_heads, axis=2), np.repeat(v, heads // kv_heads, axis=2)
    scores = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(e)
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhe->bqhe", p, v).reshape(b, length, heads * e)
    return out @ wo


@pytest.mark.parametrize("attention", ["auto", "xla"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa2", "mqa"])
def test_grouped_query_attention(kv_heads, attention):
    """Every model.attention choice that runs here (CPU: auto is XLA's) against the float64 reference."""
    cfg = small_llama(kv_heads=kv_heads, layers=1)
    cfg.attention = attention
    model = materialize(cfg, random_params(cfg, 0))
    attn = model.blocks.first.attn
    assert attn.attention == "xla"
    e = D // HEADS
    assert attn.k.kernel.shape == attn.v.kernel.shape == (D, kv_heads * e)
    sin, cos = rope_tables(SEQ, e, 1e4)
    graphdef, state = nnx.split(attn)
    x = rand((BATCH, SEQ, D), 10)
    y, latents = jit(lambda s, x: nnx.merge(graphdef, s)(x, dict.fromkeys(LLAMA_PROJ), sin, cos))(state, x)
    assert all(v is None for v in latents.values())  # dense: no latents
    w = {n: np.asarray(getattr(attn, n).kernel[...], np.float64) for n in ("q", "k", "v", "o")}
    ref = np_attention(np.asarray(x, np.float64), w["q"], w["k"], w["v"], w["o"], HEADS, kv_heads)
    np.testing.assert_allclose(y, ref, rtol=TOL, atol=TOL * np.abs(ref).max())


@pytest.mark.parametrize("family", ["llama", "vit"])
def test_attention_choices_agree(family):
    """model.attention=auto and =xla build the same program on CPU: equal logits and gradients."""
    make = small_llama if family == "llama" else small_vit
    out = {}
    for choice in ("auto", "xla"):
        cfg = make(COLA_KRON)
        cfg.attention = choice
        model = materialize(cfg, random_params(cfg, 0))
        inputs = tokens(1) if family == "llama" else images(cfg, 1)
        targets = tokens(2) if family == "llama" else jnp.asarray(np.arange(BATCH) % cfg.num_classes)
        out[choice] = logits_and_grads(model, inputs, targets)
    np.testing.assert_array_equal(out["auto"][0], out["xla"][0])
    for path, g in out["auto"][1].items():
        np.testing.assert_array_equal(g, out["xla"][1][path], err_msg=str(path))


@pytest.mark.parametrize("family", ["llama", "vit"])
@pytest.mark.parametrize(
    "value,message",
    [
        ("cudnn", "model.attention='cudnn' cannot run here"),
        ("flash", "model.attention='flash' is not one of"),
    ],
)
def test_unavailable_attention_is_a_config_error(family, value, message):
    """cuDNN on a backend without it (every CPU), or an unknown choice: one line naming model.attention, at
    build time (before anything compiles)."""
    cfg = (small_llama if family == "llama" else small_vit)()
    cfg.attention = value
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        nnx.eval_shape(lambda: build(cfg, rngs=nnx.Rngs(0)))
    assert "\n" not in str(e.value)


def test_kv_heads_must_divide_heads():
    """Like every other bad model setting, a kv-head count that does not divide the query heads should be
    refused at build time naming its key (today the build succeeds and jax fails inside the first forward)."""
    with pytest.raises(ValueError, match=re.escape("model.num_kv_heads")):
        nnx.eval_shape(lambda: build(small_llama(kv_heads=3, layers=1), rngs=nnx.Rngs(0)))


# ---------------------------------------------------------------------------- ViT


@pytest.mark.parametrize(
    "image,patch,channels,classes,arg", [(28, 4, 1, 10, ""), (32, 8, 3, 7, COLA_KRON), (32, 8, 3, 7, TT_KRON)]
)
def test_vit_any_image_shape(image, patch, channels, classes, arg):
    cfg = small_vit(arg, image=image, patch=patch, channels=channels, classes=classes)
    model = materialize(cfg, random_params(cfg, seed=0))
    assert model.pos.shape == (1, (image // patch) ** 2 + 1, D)
    assert model.patch_kernel.shape == (patch * patch * channels, D)
    x = jnp.concatenate([images(cfg, 11), images(cfg, 12)])  # 2 x BATCH distinct images
    logits = forward_fn(model, train=False)(nnx.state(model), x)
    assert logits.shape == (2 * BATCH, classes) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()
    assert not np.allclose(logits[0], logits[1], atol=1e-6)  # depends on the image


def test_vit_image_size_must_be_a_patch_multiple():
    with pytest.raises(ValueError, match="model.image_size"):
        build(small_vit(image=30, patch=4), rngs=nnx.Rngs(0))


def test_vit_dropout_only_in_train_mode():
    cfg = small_vit(COLA_KRON)
    assert cfg.dropout > 0
    model = materialize(cfg, random_params(cfg, seed=0), seed=1)
    assert {p[-3] for p, _ in nnx.to_flat_state(nnx.state(model, nnx.RngState))} == {"dropout"}
    graphdef, state = nnx.split(model)
    x = images(cfg, 13)

    def make(train: bool):
        def f(state, key):
            m = nnx.merge(graphdef, state)
            nnx.reseed(m, dropout=key, policy="match_shape")  # as the train step does
            return m(x, train=train)

        return jit(f)

    train, evaluate = make(True), make(False)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    np.testing.assert_array_equal(evaluate(state, k1), evaluate(state, k2))  # eval ignores the rng
    np.testing.assert_array_equal(train(state, k1), train(state, k1))  # same rng state, same mask
    assert not np.allclose(train(state, k1), train(state, k2))  # another rng state, another mask
    assert not np.allclose(train(state, k1), evaluate(state, k1))


def _hidden_norms(cfg) -> list:
    model = nnx.eval_shape(lambda: build(cfg, rngs=nnx.Rngs(0)))
    return [b.hidden_norm for b in [model.blocks.first, *model.blocks.rest]]


@pytest.mark.parametrize("kind", ["dense", "svd", "cola", "tt"])
def test_vit_mlp_hidden_norm_auto(kind):
    auto = _hidden_norms(small_vit(f"kind={kind}"))
    if kind == "dense":
        assert auto == [None, None]
    else:
        assert all(n is not None and n.scale.shape == n.bias.shape == (MLP,) for n in auto)
    cfg = small_vit(f"kind={kind}")
    stats = model_stats(cfg)  # rows + per block 2 LayerNorms (+ the hidden one) + the final LayerNorm
    norms = cfg.num_layers * (2 * 2 * D + (2 * MLP if kind != "dense" else 0)) + 2 * D
    assert stats.non_embedding_params == sum(r.params for r in stats.rows) + norms


@pytest.mark.parametrize("value,expected", [("true", True), ("false", False)])
@pytest.mark.parametrize("kind", ["dense", "cola"])
def test_vit_mlp_hidden_norm_explicit(kind, value, expected):
    """`model.mlp_hidden_norm` is a string field ('auto' by default), so an explicit setting, from Python or
    `--config.model.mlp_hidden_norm=false`, arrives as a string and must win over 'auto'."""
    cfg = small_vit(f"kind={kind}")
    cfg.mlp_hidden_norm = value
    assert [n is not None for n in _hidden_norms(cfg)] == [expected, expected]
