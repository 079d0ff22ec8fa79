"""Where each training hyperparameter of a config comes from: the audit behind `lax-params --recipe`.

    python -m lax_pretrain.params --config=configs/vit.py:l16,kind=tt,lax=kron --recipe

Every row is (dotted key, value, source). A source names the paper or the authors' code and script it
follows ("CoLA code", "LaX ViT code"), "ours" where we chose (the CPU presets, our fp32 default), and
"command line" for keys overridden with --config.x.y. The facts behind the sources are restated in
docs/recipes.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from lax_pretrain.layers import KINDS
from lax_pretrain.optim import OPTIMIZERS, optimizer_name, own_section

# Per family: the presets the papers define (nano, tiny and s16 are ours), and
# the sources of the per-projection rows.
PAPER_PRESETS = {"llama": ("60m", "130m", "350m", "1b", "7b"), "vit": ("b16", "l16")}
SHAPE_SOURCES = {"llama": "CoLA configs: rank of the preset", "vit": "LaX ViT configs: rank / TT shapes"}
INTRA_SOURCES = {
    "llama": "ours: intra-layer LaX off unless intra=1",
    "vit": "LaX ViT TT + LaX configs: intra-layer LaX on q, k, v, o",
}
COLUMN = {"llama": 0, "vit": 1}  # which source of a _SOURCES pair applies

COLA_SCRIPT = "CoLA code: the LLaMA-{preset} script"
GALORE = "GaLore/CoLA protocol"
TIMM = "LaX ViT code (timm defaults)"
OURS_CPU = "ours: the {preset} preset"
LAX_PAPER = "LaX paper (kron gate in every released LaX config)"

# key -> (LLaMA source, ViT source); None where the key does not apply to the family. The CPU presets (nano,
# tiny) set their own budget: for the keys in CPU_PRESET_KEYS their source is ours.
CPU_PRESET_KEYS = {
    "llama": {"train.steps", "train.batch_size", "optim.lr", "optim.warmup_steps", "data.seq_len"},
    "vit": {
        "train.steps",
        "train.batch_size",
        "optim.warmup_steps",
        "optim.warmup_init_lr",
        "optim.clip_norm",
    },
}
_SOURCES: dict[str, tuple[str | None, str | None]] = {
    "train.steps": (COLA_SCRIPT, "LaX ViT code: 300 epochs of ImageNet-1k at batch 1024"),
    "train.batch_size": (GALORE + ": 512 sequences", "LaX ViT code: 128 per GPU x 8"),
    "optim.lr": (COLA_SCRIPT, "LaX ViT code: 3e-3 dense, 1e-3 low-rank"),
    "optim.warmup_steps": (COLA_SCRIPT, "LaX ViT code: 10 warm-up epochs"),
    "optim.warmup_init_lr": (
        "GaLore/CoLA protocol: linear warm-up from 0",
        "LaX ViT code: warm-up from 1e-5",
    ),
    "optim.min_lr_ratio": ("CoLA code: cosine to 0.1 x peak", "LaX ViT code: cosine to 0"),
    "optim.weight_decay": ("CoLA code: AdamW weight decay 0.01", "LaX ViT code: weight decay 0.3"),
    "optim.weight_decay_mask": (
        "CoLA code: every parameter decayed",
        "LaX ViT code: timm param groups (no biases, norms, cls, pos)",
    ),
    "optim.b1": ("CoLA code (PyTorch AdamW default)", TIMM),
    "optim.b2": ("CoLA code (PyTorch AdamW default)", TIMM),
    "optim.eps": ("CoLA code (PyTorch AdamW default)", TIMM),
    "optim.clip_norm": (
        "CoLA code: gradient clipping 0.5",
        "LaX ViT code: the script's default, no clipping",
    ),
    "data.seq_len": (GALORE + ": 256 tokens", None),
    "data.document_format": ("CoLA code: truncate to seq_len incl. </s>, pad, pads masked", None),
    "data.packing": ("CoLA code: no packing", None),
    "data.eval_batches": ("GaLore/CoLA protocol: ~10M validation tokens", "LaX ViT code: the whole split"),
    "data.auto_augment": (None, "LaX ViT code: AutoAugment"),
    "data.mixup": (None, "LaX ViT code: mixup 0.2"),
    "data.label_smoothing": (None, "LaX ViT code: label smoothing 0.1"),
    "data.crop": (None, "LaX ViT code: RandomResizedCrop"),
    "data.crop_scale_min": (None, "LaX ViT code: RandomResizedCrop(0.08, 1)"),
    "data.flip": (None, "LaX ViT code: horizontal flip"),
    "data.eval_crop": (None, "LaX ViT code: eval crop 0.9"),
    "model.dtype": ("{precision}", "{precision}"),
    "model.param_dtype": ("{precision}", "{precision}"),
    "model.linear.kind": ("the config argument", "the config argument"),
    "model.linear.crossing": (LAX_PAPER, LAX_PAPER),
    "model.linear.latent_norm": (
        "LaX code: LayerNorm over the latent, eps 1e-6",
        "LaX ViT code: LayerNorm over the latent, eps 1e-6",
    ),
    "model.linear.init": (
        "CoLA code: factors N(0, r^-1/2 (d_in + d_out)^-1/2), dense kernels N(0, 0.02)",
        "LaX ViT code: kaiming-normal factors",
    ),
    "model.linear.bias_init": (
        None,
        "LaX ViT code: factorized-layer bias N(0, 1); dense layers timm (zeros)",
    ),
    "model.linear.activation": ("CoLA code: SiLU", "LaX ViT code: exact GELU"),
    "model.linear.latent_act": (
        "CoLA code: on the latent of cola only",
        "LaX ViT code: LatentAct off (cola: always on)",
    ),
    "model.embed_init": (None, "LaX ViT code: PyTorch-default patch conv, cls N(0, 1e-6)"),
    "model.embed_init_std": ("CoLA code (Hugging Face LLaMA init)", None),
    "model.dropout": (None, "LaX ViT code: MLP dropout 0.1"),
    "model.mlp_hidden_norm": (None, "LaX ViT code: hidden LayerNorm in every low-rank block"),
    "model.only_lr_act": ("CoLA configs: off at 60M/130M, on at 350M/1B/7B (cola only)", None),
    "model.rope_theta": ("LLaMA / CoLA config", None),
    "model.norm_eps": ("CoLA config: rms_norm_eps 1e-6", None),
    "model.tie_embeddings": ("CoLA config: untied head", None),
}


@dataclasses.dataclass(frozen=True)
class RecipeRow:
    key: str
    value: Any
    source: str


def _get(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _precision_source(config: Any) -> str:
    if config.model.param_dtype == "bfloat16":
        return "CoLA code: model.to(bfloat16) (precision=bf16)"
    return "ours: float32 parameters and moments (precision=bf16 is the CoLA code's pure-bf16 mode)"


def _projection_rows(config: Any) -> list[RecipeRow]:
    m = config.model
    shape_source = (
        SHAPE_SOURCES[m.family] if m.preset in PAPER_PRESETS[m.family] else OURS_CPU.format(preset=m.preset)
    )
    rows = []
    own_fields = KINDS.get(m.linear.kind, key="model.linear.kind").fields
    for name, spec in (m.get("proj") or {}).items():
        for key in own_fields:
            if key == "intra":  # intra-layer LaX: a recipe choice of its own, shown on or off
                rows.append(
                    RecipeRow(f"model.proj.{name}.intra", bool(spec.get("intra")), INTRA_SOURCES[m.family])
                )
            elif key != "intra_gate" and spec.get(key) is not None:
                rows.append(RecipeRow(f"model.proj.{name}.{key}", spec[key], shape_source))
    return rows


def _optimizer_rows(config: Any) -> list[RecipeRow]:
    """`optim.name` and the optimizer's own hyperparameters, with the sources its registry entry declares."""
    name = optimizer_name(config.optim)
    entry = OPTIMIZERS.get(name, key="optim.name")
    rows = [RecipeRow("optim.name", name, entry.sources.get("optim.name", "ours: the default optimizer"))]
    for key, value in own_section(config.optim, name).items():
        rows.append(RecipeRow(f"optim.{name}.{key}", value, entry.sources.get(f"optim.{name}.{key}", "ours")))
    return rows


def flatten_overrides(overrides: dict, prefix: str = "") -> set[str]:
    """{'optim': {'lr': 1e-3}} (ml_collections' `get_override_values`) -> {'optim.lr'}."""
    keys = set()
    for k, v in overrides.items():
        keys |= flatten_overrides(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


def recipe_rows(config: Any, overridden: Collection[str] = ()) -> list[RecipeRow]:
    """Every training hyperparameter of `config` with its source; keys in `overridden` (dotted, as given on
    the command line) are marked as such, with the recipe's source kept beside them."""
    family, preset = config.model.family, config.model.preset
    cpu_preset = preset not in PAPER_PRESETS[family]
    rows = []
    for key, sources in _SOURCES.items():
        source = sources[COLUMN[family]]
        if source is None:
            continue
        if cpu_preset and key in CPU_PRESET_KEYS[family]:
            source = OURS_CPU.format(preset=preset)
        elif source == "{precision}":
            source = _precision_source(config)
        rows.append(RecipeRow(key, _get(config, key), source.format(preset=preset.upper())))
    rows += _projection_rows(config) + _optimizer_rows(config)
    overridden = set(overridden)
    return [
        dataclasses.replace(r, source=f"command line (recipe: {r.source})") if r.key in overridden else r
        for r in rows
    ]


def format_recipe(rows: list[RecipeRow]) -> str:
    width = max(len(r.key) for r in rows)
    value_width = min(max(len(str(r.value)) for r in rows), 28)
    return "\n".join(f"{r.key:<{width}}  {str(r.value):<{value_width}}  {r.source}" for r in rows)
