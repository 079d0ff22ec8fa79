"""The authors' CoLA LLaMA checkpoint (`ColaForCausalLM.save_pretrained`), both ways.

    model, model_config = load_cola("path/to/cola_dir")        # also the authors' released checkpoints
    export_cola(model, model_config, "path/to/out")             # kind=cola, no crossing, one rank

config.json: `"model_type": "cola"`, `"architectures": ["ColaForCausalLM"]`, the LlamaConfig keys (ColaConfig
extends LlamaConfig; hf_config.py) plus `"rank"` (one for every projection) and `"only_lr_act"` (True: no
SiLU on the MLP gate's output, the nonlinearity lives only in the latents; absent means the authors' default,
True). Tensors: the CoLA layout of factor_layout.py. Each projection is y = silu(x @ cola_a) @ cola_b.
`lr_act` / `lr_act_type` are read when present only with the values that mean that SiLU (True / "silu").

Pad row: the authors build the embedding with `padding_idx=0` (pad id 0), which zero-initialises row 0 and
masks its gradient in their training; it does not change a forward pass. Both directions copy row 0 as stored:
an import of their checkpoint has it at zero (our training then updates it like any row), and an export
writes ours as trained, so their class, loading it, gives our logits (and keeps that row frozen if fine-tuned).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from lax_pretrain.convert.export_dir import export_dir
from lax_pretrain.convert.factor_layout import COLA_TENSORS, factor_params, factor_tensors
from lax_pretrain.convert.hf_checkpoint import read_config, read_safetensors, write_config, write_safetensors
from lax_pretrain.convert.hf_config import hf_config_from_model, model_config_from_hf, reject
from lax_pretrain.convert.representable import check_cola
from lax_pretrain.convert.weights import model_from_params
from lax_pretrain.models.llama import PROJECTIONS, Llama

MODEL_TYPE = "cola"
ARCHITECTURE = "ColaForCausalLM"
FORMAT_KEYS = ("rank", "only_lr_act", "lr_act", "lr_act_type")


def low_rank_model_config(model_cfg: Any, ranks: Mapping[str, int], kind: str) -> ml_collections.ConfigDict:
    """config.model of LLaMA keys + two-factor projections of `kind` with per-projection ranks."""
    model_cfg.linear.update(kind=kind, rank=None, crossing="none", latent_act=None, init="cola")
    model_cfg.proj = {name: {"rank": int(ranks[name])} for name in PROJECTIONS}
    return model_cfg


def model_config_from_cola(hf: Mapping[str, Any], *, scan_layers: bool = False) -> ml_collections.ConfigDict:
    cfg = model_config_from_hf(hf, scan_layers=scan_layers, model_type=MODEL_TYPE, format_keys=FORMAT_KEYS)
    reject(hf, "lr_act", (True,), "CoLA's factor layers apply SiLU to the latent")
    reject(hf, "lr_act_type", ("silu",), "CoLA LLaMA's latent activation is SiLU")
    if not isinstance(hf.get("rank"), int) or hf["rank"] < 1:
        raise ValueError(f"config.json: rank={hf.get('rank')!r} must be an integer >= 1 (the CoLA rank)")
    cfg = low_rank_model_config(cfg, dict.fromkeys(PROJECTIONS, hf["rank"]), "cola")
    cfg.only_lr_act = bool(hf.get("only_lr_act", True))
    return cfg


def cola_config(model_cfg: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    specs = check_cola(model_cfg)
    hf = hf_config_from_model(model_cfg, base)
    hf.update(
        architectures=[ARCHITECTURE],
        model_type=MODEL_TYPE,
        rank=specs["q"].rank,
        only_lr_act=bool(model_cfg.only_lr_act),
    )
    return hf


def load_cola(hf_dir: str | Path, *, scan_layers: bool = False) -> tuple[Llama, ml_collections.ConfigDict]:
    """(model, config.model) of a CoLA directory (config.json + safetensors)."""
    cfg = model_config_from_cola(read_config(hf_dir), scan_layers=scan_layers)
    top, blocks = factor_params(read_safetensors(Path(hf_dir)), cfg, COLA_TENSORS)
    return model_from_params(cfg, top, blocks), cfg


def export_cola(
    model: Llama, model_cfg: Any, out_dir: str | Path, *, base_config: Mapping[str, Any] | None = None
) -> Path:
    """Writes the directory `ColaForCausalLM.save_pretrained` writes; refuses (naming the key) a model that
    is not uncrossed CoLA with one rank. The directory appears complete or not at all."""
    hf_config = cola_config(model_cfg, base_config)  # checks before anything is written
    with export_dir(out_dir) as tmp:
        write_safetensors(factor_tensors(model, COLA_TENSORS, "cola"), tmp / "model.safetensors")
        write_config(hf_config, tmp)
    return Path(out_dir)
