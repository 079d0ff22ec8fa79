"""Experiment configs: the base ConfigDict, the model presets at the papers' scales, and the compact grammar.

Recipes are keyword functions:

    llama_config("60m", kind="cola", lax="kron", rank=128)
    vit_config("b16", kind="tt", lax="kron")            # TT + LaX: intra-layer LaX on q, k, v, o by default

The compact string `PRESET[,key=value...]` of the command line (`--config=configs/llama.py:60m,kind=cola`) is
parsed once, at the config-file boundary (`from_compact`, called by each configs/<family>.py `get_config`).
Compact keys (everything else: `--config.x.y=...` on the command line):
  kind      dense | svd | cola | tt, or a registered kind (model.linear.kind)
  lax       none | identity | dense | kron, or a registered gate (model.linear.crossing)
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
  only_lr_act 0 | 1 (LLaMA)                               (model.only_lr_act, CoLA's SwiGLU switch)

Where each default comes from: `lax-params --config=... --recipe` (lax_pretrain/recipe.py, docs/recipes.md).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import ml_collections
from ml_collections import config_dict

from lax_pretrain import extensions
from lax_pretrain.data.config import default_data_config
from lax_pretrain.layers import KINDS, linear_config_fields
from lax_pretrain.optim import optimizer_sections

PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaPreset:
    d_model: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    rank: int  # the paper's latent width of every projection
    lr: float
    steps: int
    warmup: int
    batch_size: int
    only_lr_act: bool  # CoLA's default for the size (applies to kind=cola only)
    vocab_size: int = 32000
    data: str = "c4"


# The released CoLA / LaX LLaMA configs (docs/methods.md 4, docs/recipes.md). `nano` is ours: a CPU-sized
# model for the embedded Shakespeare corpus with the byte tokenizer.
LLAMA_PRESETS = {
    "nano": LlamaPreset(
        d_model=256,
        num_layers=4,
        num_heads=4,
        ffn_dim=688,
        rank=64,
        lr=3e-3,
        steps=1000,
        warmup=100,
        batch_size=32,
        only_lr_act=False,
        vocab_size=259,
        data="shakespeare",
    ),
    "60m": LlamaPreset(
        d_model=512,
        num_layers=8,
        num_heads=8,
        ffn_dim=1376,
        rank=128,
        lr=6e-3,
        steps=10_000,
        warmup=2_000,
        batch_size=512,
        only_lr_act=False,
    ),
    "130m": LlamaPreset(
        d_model=768,
        num_layers=12,
        num_heads=12,
        ffn_dim=2048,
        rank=256,
        lr=3e-3,
        steps=20_000,
        warmup=2_000,
        batch_size=512,
        only_lr_act=False,
    ),
    "350m": LlamaPreset(
        d_model=1024,
        num_layers=24,
        num_heads=16,
        ffn_dim=2736,
        rank=256,
        lr=3e-3,
        steps=60_000,
        warmup=6_000,
        batch_size=512,
        only_lr_act=True,
    ),
    "1b": LlamaPreset(
        d_model=2048,
        num_layers=24,
        num_heads=32,
        ffn_dim=5461,
        rank=512,
        lr=2e-3,
        steps=100_000,
        warmup=10_000,
        batch_size=512,
        only_lr_act=True,
    ),
    "7b": LlamaPreset(
        d_model=4096,
        num_layers=32,
        num_heads=32,
        ffn_dim=11008,
        rank=1024,
        lr=1e-3,
        steps=150_000,
        warmup=15_000,
        batch_size=512,
        only_lr_act=True,
    ),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
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
    # The LaX budget: 300 epochs of ImageNet-1k at batch 1024, 10 warm-up epochs from 1e-5, no clipping.
    steps: int = 375_300
    batch_size: int = 1024
    warmup: int = 12_510
    warmup_init_lr: float = 1e-5
    clip_norm: float = 0.0
    eval_every: int = 5000


_B16_TT = {
    "attn": ((32, 24), (24, 32), (1, 32, 336, 32, 1)),
    "fc1": ((32, 24), (48, 64), (1, 32, 158, 64, 1)),
    "fc2": ((48, 64), (32, 24), (1, 48, 159, 24, 1)),
}
_L16_TT = {
    "attn": ((32, 32), (32, 32), (1, 32, 256, 32, 1)),
    "fc1": ((32, 32), (64, 64), (1, 32, 198, 64, 1)),
    "fc2": ((64, 64), (32, 32), (1, 64, 198, 32, 1)),
}

VIT_PRESETS = {
    # Ours: a CPU budget on Fashion-MNIST, clipped for its short warm-up.
    "tiny": VitPreset(
        d_model=128,
        num_layers=6,
        num_heads=4,
        mlp_dim=512,
        rank=32,
        image_size=28,
        patch_size=4,
        channels=1,
        num_classes=10,
        data="fashion_mnist",
        steps=2000,
        batch_size=128,
        warmup=100,
        warmup_init_lr=0.0,
        clip_norm=1.0,
        eval_every=250,
    ),
    "s16": VitPreset(d_model=384, num_layers=12, num_heads=6, mlp_dim=1536, rank=128),
    "b16": VitPreset(d_model=768, num_layers=12, num_heads=12, mlp_dim=3072, rank=256, tt=_B16_TT),
    "l16": VitPreset(d_model=1024, num_layers=24, num_heads=16, mlp_dim=4096, rank=256, tt=_L16_TT),
}


def _precision(precision: str, dtype: str | None) -> tuple[str, str]:
    """(model.dtype, model.param_dtype) from `precision` and `dtype`."""
    if precision not in PRECISIONS:
        raise ValueError(f"config argument precision={precision!r} must be one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        if dtype not in (None, "bfloat16"):
            raise ValueError(
                f"config argument dtype={dtype!r} contradicts precision=bf16 (bfloat16 "
                "parameters compute in bfloat16); drop one of them"
            )
        return "bfloat16", "bfloat16"
    return dtype or "float32", "float32"


def _latent_act(value: bool | None) -> Any:
    """A bool placeholder: unset means 'only for cola' (the spec decides), and stays overridable from flags."""
    ref = config_dict.placeholder(bool)
    if value is not None:
        ref.set(bool(value))
    return ref


def _intra(intra: bool | str | None, default: bool) -> tuple[bool, bool]:
    """(intra, intra_gate) from intra = False | True | 'gate' (None: the recipe's default)."""
    if intra == "gate":
        return True, True
    if intra not in (None, True, False):
        raise ValueError(f"config argument intra={intra!r} must be 0, 1 or gate")
    return (default if intra is None else bool(intra)), False


def base_config() -> ml_collections.ConfigDict:
    """Every section and key other tools rely on, with defaults; recipes fill model/data/optim."""
    c = ml_collections.ConfigDict()
    c.name = ""
    c.extensions = extensions.imported()  # the --import modules that registered what this config names
    c.train = dict(
        steps=1000,
        batch_size=32,
        seed=0,
        log_every=10,
        eval_every=200,
        eval_at_start=True,  # evaluate the initial model (step 0) on a fresh start
        checkpoint_every=200,
        keep_checkpoints=3,
        grad_accum=1,
        init_from="",  # a workdir: a fresh run starts from its newest checkpoint's parameters (train/resume.py)
    )
    c.optim = dict(
        name="adamw",  # a registered optimizer (lax_pretrain.optim); its own keys live in optim.<name>
        lr=1e-3,
        warmup_steps=100,
        warmup_init_lr=0.0,
        min_lr_ratio=0.1,
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        clip_norm=0.5,
        weight_decay_mask="all",
        **optimizer_sections(),
    )
    c.wandb = dict(mode="offline", project="lax-pretrain", entity="", group="", tags=(), name="")
    # dcn_data, dcn_fsdp: how many TPU slices the data and fsdp axes span (parallel/mesh.py)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, num_devices=0)
    c.parallel = dict(tp_impl="auto", rules=())
    c.distributed = dict(coordinator="", num_processes=0, process_id=-1, auto=True)
    return c


def _linear(
    kind: str,
    *,
    lax: str,
    norm: str,
    init: str,
    act: str,
    latent_act: bool | None,
    use_bias: bool,
    bias_init: str = "zeros",
) -> dict:
    return dict(
        kind=kind,
        **linear_config_fields(),  # every registered kind's own keys at their defaults (rank, intra, ...)
        crossing=lax,
        latent_norm=norm,
        activation=act,
        latent_act=_latent_act(latent_act),
        use_bias=use_bias,
        init=init,
        bias_init=bias_init,
        kron_impl="auto",  # factored | gemm | auto (layers.crossing.kron_impl_for)
    )


def _projection_overrides(kind: str, rank: int, names: tuple[str, ...], **context: Any) -> dict[str, dict]:
    """`model.proj.<p>` for a preset built with `kind=`, `rank=`: what the registered kind derives per projection
    (context: what the family adds, e.g. the official TT shapes and intra-layer LaX flags of the ViT)."""
    if kind not in KINDS:  # refused where every spec is validated, naming model.proj.<p>.kind
        return {}
    overrides = KINDS.get(kind, key="kind").overrides
    return {name: o for name in names if (o := overrides(rank, name, **context))}


def _preset(presets: dict[str, Any], preset: str, family: str) -> Any:
    if preset not in presets:
        raise ValueError(f"unknown {family} preset {preset!r}; choose one of {', '.join(presets)}")
    return presets[preset]


def run_name(family: str, preset: str, options: dict[str, Any]) -> str:
    """'llama-60m,kind=cola,lax=kron': the preset and the options given, in the compact grammar."""
    shown = {k: int(v) if isinstance(v, bool) else v for k, v in options.items() if v is not None}
    return ",".join([f"{family}-{preset}", *(f"{k}={v}" for k, v in shown.items())])


def llama_config(
    preset: str = "nano",
    *,
    kind: str = "dense",
    lax: str = "none",
    rank: int | None = None,
    intra: bool | str | None = None,
    norm: str = "layernorm",
    init: str = "cola",
    act: str = "silu",
    latent_act: bool | None = None,
    scan: bool | None = None,
    remat: str = "none",
    dtype: str | None = None,
    precision: str = "fp32",
    only_lr_act: bool | None = None,
) -> ml_collections.ConfigDict:
    """The LLaMA recipe of `preset` (nano, 60m, 130m, 350m, 1b, 7b); the keywords are the compact grammar's."""
    options = {k: v for k, v in locals().items() if k != "preset"}  # the keywords as given (the run's name)
    p = _preset(LLAMA_PRESETS, preset, "llama")
    dtype, param_dtype = _precision(precision, dtype)
    c = base_config()
    c.name = run_name("llama", preset, _changed(llama_config, options))
    c.model = dict(
        family="llama",
        preset=preset,
        vocab_size=p.vocab_size,
        d_model=p.d_model,
        num_layers=p.num_layers,
        num_heads=p.num_heads,
        num_kv_heads=p.num_heads,
        head_dim=0,
        ffn_dim=p.ffn_dim,
        rope_theta=1e4,
        norm_eps=1e-6,
        tie_embeddings=False,
        embed_init_std=0.02,
        only_lr_act=bool(p.only_lr_act and kind == "cola") if only_lr_act is None else bool(only_lr_act),
        scan_layers=p.num_layers >= 24 if scan is None else bool(scan),
        remat=remat,
        dtype=dtype,
        param_dtype=param_dtype,
        attention="auto",  # auto | xla | cudnn (models/attention.py)
        linear=_linear(kind, lax=lax, norm=norm, init=init, act=act, latent_act=latent_act, use_bias=False),
        proj=_projection_overrides(
            kind,
            p.rank if rank is None else rank,
            ("q", "k", "v", "o", "gate", "up", "down"),
            intra=_intra(intra, False),
        ),
    )
    c.data = default_data_config(p.data)
    c.train.update(
        steps=p.steps,
        batch_size=p.batch_size,
        eval_every=max(p.steps // 10, 1),
        checkpoint_every=max(p.steps // 10, 1),
    )
    c.optim.update(lr=p.lr, warmup_steps=p.warmup, min_lr_ratio=0.1, weight_decay=0.01, clip_norm=0.5)
    return c


def vit_config(
    preset: str = "tiny",
    *,
    kind: str = "dense",
    lax: str = "none",
    rank: int | None = None,
    intra: bool | str | None = None,
    norm: str = "layernorm",
    init: str = "lax",
    act: str = "gelu",
    latent_act: bool | None = None,
    scan: bool | None = None,
    remat: str = "none",
    dtype: str | None = None,
    precision: str = "fp32",
) -> ml_collections.ConfigDict:
    """The ViT recipe of `preset` (tiny, s16, b16, l16); the keywords are the compact grammar's."""
    options = {k: v for k, v in locals().items() if k != "preset"}  # the keywords as given (the run's name)
    p = _preset(VIT_PRESETS, preset, "vit")
    # The authors' TT + LaX configs switch the intra-layer skip on for q, k, v, o; plain TT and svd/cola never.
    intra_flags = _intra(intra, kind == "tt" and lax != "none")
    dtype, param_dtype = _precision(precision, dtype)
    c = base_config()
    c.name = run_name("vit", preset, _changed(vit_config, options))
    c.model = dict(
        family="vit",
        preset=preset,
        image_size=p.image_size,
        patch_size=p.patch_size,
        channels=p.channels,
        num_classes=p.num_classes,
        d_model=p.d_model,
        num_layers=p.num_layers,
        num_heads=p.num_heads,
        mlp_dim=p.mlp_dim,
        dropout=0.1,
        mlp_hidden_norm="auto",
        scan_layers=p.num_layers >= 24 if scan is None else bool(scan),
        remat=remat,
        dtype=dtype,
        param_dtype=param_dtype,
        attention="auto",  # auto | xla | cudnn (models/attention.py)
        # init=lax is the authors' code: timm embeddings (PyTorch-default patch conv, cls N(0, 1e-6)) and the
        # factorized layers' N(0, 1) bias; the dense baseline is stock timm (zero biases).
        embed_init="timm" if init == "lax" else "trunc_normal",
        linear=_linear(
            kind,
            lax=lax,
            norm=norm,
            init=init,
            act=act,
            latent_act=latent_act,
            use_bias=True,
            bias_init="normal" if init == "lax" and kind != "dense" else "zeros",
        ),
        proj=_projection_overrides(
            kind,
            p.rank if rank is None else rank,
            ("q", "k", "v", "o", "fc1", "fc2"),
            intra=intra_flags,
            official_tt=p.tt if rank in (None, p.rank) else None,
        ),
    )
    c.data = default_data_config(p.data)
    c.data.image_size = p.image_size
    # LaX recipe: lr 3e-3 dense / 1e-3 low-rank, wd 0.3 not on biases/norms/cls/pos, cosine to 0; mixup 0.2 and
    # smoothing 0.1 are in the data section.
    c.optim.update(
        lr=3e-3 if kind == "dense" else 1e-3,
        weight_decay=0.3,
        weight_decay_mask="no_1d",
        min_lr_ratio=0.0,
        clip_norm=p.clip_norm,
        warmup_steps=p.warmup,
        warmup_init_lr=p.warmup_init_lr,
    )
    c.train.update(
        steps=p.steps, batch_size=p.batch_size, eval_every=p.eval_every, checkpoint_every=p.eval_every
    )
    return c


RECIPES: dict[str, Callable[..., ml_collections.ConfigDict]] = {"llama": llama_config, "vit": vit_config}
PRESETS = {"llama": LLAMA_PRESETS, "vit": VIT_PRESETS}


def _changed(recipe: Callable, options: dict[str, Any]) -> dict[str, Any]:
    """The options that differ from the recipe's defaults (what a run's name shows)."""
    defaults = {k: v.default for k, v in inspect.signature(recipe).parameters.items() if k != "preset"}
    return {k: v for k, v in options.items() if v != defaults[k]}


# The compact grammar: how a string value becomes the keyword's value.
def _as_bool(key: str, value: str) -> bool:
    if value.lower() not in ("0", "1", "true", "false"):
        raise ValueError(f"config argument {key}={value!r} must be 0 or 1")
    return value.lower() in ("1", "true")


def _as_int(key: str, value: str) -> int:
    if not value.lstrip("-").isdigit():
        raise ValueError(f"config argument {key}={value!r} must be an integer")
    return int(value)  # its range is checked with the layer spec, naming model.proj.<p>.rank


def _as_intra(key: str, value: str) -> bool | str:
    return "gate" if value.lower() == "gate" else _as_bool(key, value)


COMPACT_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "rank": _as_int,
    "intra": _as_intra,
    "latent_act": _as_bool,
    "scan": _as_bool,
    "only_lr_act": _as_bool,
}


def parse_compact(family: str, arg: str | None) -> tuple[str, dict[str, Any]]:
    """'60m,kind=cola,lax=kron' -> ('60m', {'kind': 'cola', 'lax': 'kron'}) with typed values; errors name the
    key. The one parser of the compact grammar."""
    recipe = RECIPES[family]
    keys = [k for k in inspect.signature(recipe).parameters if k != "preset"]
    presets = PRESETS[family]
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    if not parts or "=" in parts[0]:
        raise ValueError(f"a {family} config needs a preset first, one of {', '.join(presets)} (got {arg!r})")
    options: dict[str, Any] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or key not in keys:
            raise ValueError(f"config argument {part!r}: expected key=value with key in {', '.join(keys)}")
        options[key] = COMPACT_PARSERS.get(key, lambda _k, v: v)(key, value)
    return parts[0], options


def from_compact(family: str, arg: str | None) -> ml_collections.ConfigDict:
    """The recipe config of a compact argument: what `configs/<family>.py:ARG` gives (the config-file boundary)."""
    if family not in RECIPES:
        raise ValueError(f"no recipe for model family {family!r}; known: {', '.join(RECIPES)}")
    preset, options = parse_compact(family, arg)
    return RECIPES[family](preset, **options)
