"""Experiment configs: the base ConfigDict, the model presets at the papers' scales, and the compact grammar.

A recipe file in configs/ calls `llama_config(arg)` or `vit_config(arg)` where `arg` is a compact string
`PRESET[,key=value...]`, e.g. `60m,kind=cola,lax=kron,rank=128` or `b16,kind=tt,lax=kron,intra=1`.
Compact keys (everything else: `--config.x.y=...` on the command line):
  kind      dense | svd | cola | tt                      (model.linear.kind)
  lax       none | identity | dense | kron               (model.linear.crossing)
  rank      latent width of svd/cola, middle TT rank      (default: the paper's rank of the preset)
  intra     0 | 1 | gate: TT intra-layer LaX on q, k, v, o (model.proj.<p>.intra, .intra_gate); ViT TT + LaX
            defaults to 1 as in the authors' TT + LaX configs, everything else to 0
  norm      layernorm | rmsnorm | none                    (model.linear.latent_norm)
  init      lax | cola | tt_variance                      (model.linear.init)
  act       silu | gelu | relu                            (model.linear.activation)
  latent_act 0 | 1: the activation on the latent of any kind (model.linear.latent_act; cola always 1)
  scan      0 | 1                                         (model.scan_layers)
  remat     none | full | cola_m                          (model.remat)
  dtype     float32 | bfloat16                            (model.dtype, compute)
  precision fp32 | bf16: fp32 = float32 parameters and AdamW moments (compute per `dtype`); bf16 = the CoLA
            code's `model.to(bfloat16)`: parameters, gradients, moments and compute all bfloat16
  only_lr_act 0 | 1                                       (model.only_lr_act, CoLA's SwiGLU switch)

Where each default comes from: `python -m lax_pretrain.params --config=... --recipe` (lax_pretrain/recipe.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

from lax_pretrain.data.config import default_data_config

COMPACT_KEYS = ("kind", "lax", "rank", "intra", "norm", "init", "act", "latent_act", "scan", "remat", "dtype",
                "precision", "only_lr_act")
PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class LlamaPreset:
    d_model: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    rank: int
    lr: float
    steps: int
    warmup: int
    batch_size: int
    only_lr_act: bool
    vocab_size: int = 32000
    data: str = "c4"


# The released CoLA / LaX LLaMA configs (reference/methods.md 4, recipes.md). `nano` is ours: a CPU-sized
# model for the embedded Shakespeare corpus with the byte tokenizer.
LLAMA_PRESETS = {
    "nano": LlamaPreset(256, 4, 4, 688, 64, 3e-3, 1000, 100, 32, False, vocab_size=259, data="shakespeare"),
    "60m": LlamaPreset(512, 8, 8, 1376, 128, 6e-3, 10_000, 2_000, 512, False),
    "130m": LlamaPreset(768, 12, 12, 2048, 256, 3e-3, 20_000, 2_000, 512, False),
    "350m": LlamaPreset(1024, 24, 16, 2736, 256, 3e-3, 60_000, 6_000, 512, True),
    "1b": LlamaPreset(2048, 24, 32, 5461, 512, 2e-3, 100_000, 10_000, 512, True),
    "7b": LlamaPreset(4096, 32, 32, 11008, 1024, 1e-3, 150_000, 15_000, 512, True),
}


@dataclasses.dataclass(frozen=True)
class VitPreset:
    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    rank: int
    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    num_classes: int = 1000
    data: str = "imagenet2012"
    # The official LaX TT shapes: projection -> (in modes, out modes, ranks). Others derive from `rank`.
    tt: dict | None = None


_B16_TT = {"attn": ((32, 24), (24, 32), (1, 32, 336, 32, 1)), "fc1": ((32, 24), (48, 64), (1, 32, 158, 64, 1)),
           "fc2": ((48, 64), (32, 24), (1, 48, 159, 24, 1))}
_L16_TT = {"attn": ((32, 32), (32, 32), (1, 32, 256, 32, 1)), "fc1": ((32, 32), (64, 64), (1, 32, 198, 64, 1)),
           "fc2": ((64, 64), (32, 32), (1, 64, 198, 32, 1))}

VIT_PRESETS = {
    "tiny": VitPreset(128, 6, 4, 512, 32, image_size=28, patch_size=4, channels=1, num_classes=10,
                      data="fashion_mnist"),
    "s16": VitPreset(384, 12, 6, 1536, 128),
    "b16": VitPreset(768, 12, 12, 3072, 256, tt=_B16_TT),
    "l16": VitPreset(1024, 24, 16, 4096, 256, tt=_L16_TT),
}


def parse_compact(arg: str | None, presets: dict[str, Any], family: str) -> tuple[str, dict[str, str]]:
    """'60m,kind=cola,lax=kron' -> ('60m', {'kind': 'cola', 'lax': 'kron'}), with errors naming the key."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    if not parts or "=" in parts[0]:
        raise ValueError(f"a {family} config needs a preset first, one of {', '.join(presets)} (got {arg!r})")
    preset, options = parts[0], {}
    if preset not in presets:
        raise ValueError(f"unknown {family} preset {preset!r}; choose one of {', '.join(presets)}")
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or key not in COMPACT_KEYS:
            raise ValueError(f"config argument {part!r}: expected key=value with key in {', '.join(COMPACT_KEYS)}")
        options[key] = value
    return preset, options


def _rank(options: dict[str, str], default: int) -> int:
    value = options.get("rank")
    if value is None:
        return default
    if not value.lstrip("-").isdigit():
        raise ValueError(f"config argument rank={value!r} must be an integer")
    return int(value)  # its range is checked with the layer spec, naming model.proj.<p>.rank


def _flag(options: dict[str, str], key: str, default: bool) -> bool:
    value = options.get(key)
    if value is None:
        return default
    if value.lower() not in ("0", "1", "true", "false"):
        raise ValueError(f"config argument {key}={value!r} must be 0 or 1")
    return value.lower() in ("1", "true")


def _intra(options: dict[str, str], default: bool) -> tuple[bool, bool]:
    """(intra, intra_gate) from `intra=0|1|gate`."""
    if options.get("intra", "").lower() == "gate":
        return True, True
    return _flag(options, "intra", default), False


def _precision(options: dict[str, str]) -> tuple[str, str]:
    """(model.dtype, model.param_dtype) from `precision` and `dtype`."""
    precision = options.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"config argument precision={precision!r} must be one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        if options.get("dtype", "bfloat16") != "bfloat16":
            raise ValueError(f"config argument dtype={options['dtype']!r} contradicts precision=bf16 (bfloat16 "
                             "parameters compute in bfloat16); drop one of them")
        return "bfloat16", "bfloat16"
    return options.get("dtype", "float32"), "float32"


def _latent_act(options: dict[str, str]) -> Any:
    """A bool placeholder: unset means 'only for cola' (the spec decides), and stays overridable from flags."""
    ref = config_dict.placeholder(bool)
    if "latent_act" in options:
        ref.set(_flag(options, "latent_act", False))
    return ref


def _tt_override(in_modes, out_modes, ranks) -> dict[str, Any]:
    return {"tt_in_modes": list(in_modes), "tt_out_modes": list(out_modes), "tt_ranks": list(ranks)}


def base_config() -> ml_collections.ConfigDict:
    """Every section and key other tools rely on, with defaults; recipes fill model/data/optim."""
    c = ml_collections.ConfigDict()
    c.name = ""
    c.train = dict(steps=1000, batch_size=32, seed=0, log_every=10, eval_every=200, checkpoint_every=200,
                   keep_checkpoints=3, grad_accum=1)
    c.optim = dict(lr=1e-3, warmup_steps=100, warmup_init_lr=0.0, min_lr_ratio=0.1, weight_decay=0.01, b1=0.9,
                   b2=0.999, eps=1e-8, clip_norm=0.5, weight_decay_mask="all")
    c.wandb = dict(mode="offline", project="lax-pretrain", entity="", group="", tags=(), name="")
    c.mesh = dict(data=-1, fsdp=1, tensor=1, num_devices=0)
    c.parallel = dict(tp_impl="auto", rules=[])
    c.distributed = dict(coordinator="", num_processes=0, process_id=-1, auto=True)
    return c


def _linear(kind: str, options: dict[str, str], default_init: str, activation: str, use_bias: bool,
            bias_init: str = "zeros") -> dict:
    return dict(kind=kind, rank=None, crossing=options.get("lax", "none"), latent_norm=options.get("norm", "layernorm"),
                intra=False, intra_gate=False, activation=options.get("act", activation),
                latent_act=_latent_act(options), use_bias=use_bias, init=options.get("init", default_init),
                bias_init=bias_init)


def _projection_overrides(kind: str, rank: int, names: tuple[str, ...], intra: tuple[bool, bool],
                          official_tt: dict | None) -> dict[str, dict]:
    proj: dict[str, dict] = {}
    for name in names:
        if kind in ("svd", "cola"):
            proj[name] = {"rank": rank}
        elif kind == "tt":
            # The official ViT shapes are fixed; otherwise the spec derives `tt_shape(d_in, d_out, rank)` from
            # the widths it is built for, so width overrides need no TT overrides.
            group = "attn" if name in ("q", "k", "v", "o") else name
            proj[name] = _tt_override(*official_tt[group]) if official_tt and group in official_tt else {"rank": rank}
            # Intra-layer LaX as released: the square attention projections only (n_2 == m_1, r_1 == r_3).
            attention = name in ("q", "k", "v", "o")
            proj[name]["intra"] = intra[0] and attention
            proj[name]["intra_gate"] = intra[1] and attention
    return proj


def llama_config(arg: str | None) -> ml_collections.ConfigDict:
    name, options = parse_compact(arg, LLAMA_PRESETS, "llama")
    p = LLAMA_PRESETS[name]
    kind = options.get("kind", "dense")
    rank = _rank(options, p.rank)
    intra = _intra(options, False)
    dtype, param_dtype = _precision(options)
    c = base_config()
    c.name = f"llama-{arg}"
    c.model = dict(
        family="llama", preset=name, vocab_size=p.vocab_size, d_model=p.d_model, num_layers=p.num_layers,
        num_heads=p.num_heads, num_kv_heads=p.num_heads, head_dim=0, ffn_dim=p.ffn_dim, rope_theta=1e4,
        norm_eps=1e-6, tie_embeddings=False, embed_init_std=0.02,
        only_lr_act=_flag(options, "only_lr_act", p.only_lr_act and kind == "cola"),
        scan_layers=_flag(options, "scan", p.num_layers >= 24), remat=options.get("remat", "none"),
        dtype=dtype, param_dtype=param_dtype,
        linear=_linear(kind, options, "cola", "silu", use_bias=False),
        proj=_projection_overrides(kind, rank, ("q", "k", "v", "o", "gate", "up", "down"), intra, None),
    )
    c.data = default_data_config(p.data)
    c.train.update(steps=p.steps, batch_size=p.batch_size, eval_every=max(p.steps // 10, 1),
                   checkpoint_every=max(p.steps // 10, 1))
    c.optim.update(lr=p.lr, warmup_steps=p.warmup, min_lr_ratio=0.1, weight_decay=0.01, clip_norm=0.5)
    return c


def vit_config(arg: str | None) -> ml_collections.ConfigDict:
    name, options = parse_compact(arg, VIT_PRESETS, "vit")
    p = VIT_PRESETS[name]
    kind = options.get("kind", "dense")
    rank = _rank(options, p.rank)
    # The authors' TT + LaX configs switch the intra-layer skip on for q, k, v, o; plain TT and svd/cola never.
    intra = _intra(options, kind == "tt" and options.get("lax", "none") != "none")
    dtype, param_dtype = _precision(options)
    init = options.get("init", "lax")
    c = base_config()
    c.name = f"vit-{arg}"
    d, f = p.d_model, p.mlp_dim
    c.model = dict(
        family="vit", preset=name, image_size=p.image_size, patch_size=p.patch_size, channels=p.channels,
        num_classes=p.num_classes, d_model=d, num_layers=p.num_layers, num_heads=p.num_heads, mlp_dim=f,
        dropout=0.1, mlp_hidden_norm="auto", scan_layers=_flag(options, "scan", p.num_layers >= 24),
        remat=options.get("remat", "none"), dtype=dtype, param_dtype=param_dtype,
        # init=lax is the authors' code: timm embeddings (PyTorch-default patch conv, cls N(0, 1e-6)) and the
        # factorized layers' N(0, 1) bias; the dense baseline is stock timm (zero biases).
        embed_init="timm" if init == "lax" else "trunc_normal",
        linear=_linear(kind, options, "lax", "gelu", use_bias=True,
                       bias_init="normal" if init == "lax" and kind != "dense" else "zeros"),
        proj=_projection_overrides(kind, rank, ("q", "k", "v", "o", "fc1", "fc2"), intra,
                                   p.tt if rank == p.rank else None),
    )
    c.data = default_data_config(p.data)
    c.data.image_size = p.image_size
    # LaX recipe: lr 3e-3 dense / 1e-3 low-rank, wd 0.3 not on biases/norms/cls/pos, cosine to 0, mixup 0.2,
    # smoothing 0.1 (the data section), no gradient clipping (the script's default).
    c.optim.update(lr=3e-3 if kind == "dense" else 1e-3, weight_decay=0.3, weight_decay_mask="no_1d",
                   min_lr_ratio=0.0, clip_norm=0.0)
    if name == "tiny":  # ours: a CPU budget, clipped for the short warm-up
        c.train.update(steps=2000, batch_size=128, eval_every=250, checkpoint_every=250)
        c.optim.update(warmup_steps=100, clip_norm=1.0)
    else:
        c.train.update(steps=375_300, batch_size=1024, eval_every=5000, checkpoint_every=5000)  # 300 epochs
        c.optim.update(warmup_steps=12_510, warmup_init_lr=1e-5)  # 10 epochs of 1.28M images at 1024, from 1e-5
    return c


RECIPES = {"llama": llama_config, "vit": vit_config}


def recipe_config(family: str, arg: str) -> ml_collections.ConfigDict:
    """The recipe config of `family` for a compact argument (what configs/<family>.py:ARG gives)."""
    if family not in RECIPES:
        raise ValueError(f"no recipe for model family {family!r}; known: {', '.join(RECIPES)}")
    return RECIPES[family](arg)

