"""The LaX LLaMA format (ours; docs/interop.md): the CoLA layout plus each crossed projection's gate and
latent norm, and a PyTorch modeling file so transformers loads it with `trust_remote_code=True`.

    model, model_config = load_lax("path/to/lax_dir")
    export_lax(model, model_config, "path/to/out")     # svd or cola projections, any crossing

config.json: `"model_type": "lax_llama"`, `"architectures": ["LaxLlamaForCausalLM"]`, `"auto_map"` naming
the shipped `modeling_lax_llama.py`, the LlamaConfig keys (hf_config.py), and

    rank                 int, or {projection: int} when the projections differ
    only_lr_act          bool: no SiLU on the MLP gate's output
    lax_latent_act       "silu" | "gelu" | "relu" (cola) or null (svd: no latent activation)
    lax_crossing         "none" | "identity" | "dense" | "kron"; layer 0 is never crossed
    lax_latent_norm      "layernorm" | "rmsnorm" | "none", over the latent after the crossing
    lax_latent_norm_eps  1e-6 (the only value implemented)
    lax_format_version   1

Tensors: factor_layout.py (cola_a / cola_b everywhere, lax_gate.* and lax_norm.* in layers >= 1).
svd with latent_act=True is written with its activation and so reads back as cola: the same function.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from lax_pretrain.convert.cola_checkpoint import low_rank_model_config
from lax_pretrain.convert.export_dir import export_dir
from lax_pretrain.convert.factor_layout import LAX_TENSORS, factor_params, factor_tensors
from lax_pretrain.convert.hf_checkpoint import read_config, read_safetensors, write_config, write_safetensors
from lax_pretrain.convert.hf_config import hf_config_from_model, model_config_from_hf, reject
from lax_pretrain.convert.representable import LAX_FORMAT_CROSSINGS, check_lax, crossed
from lax_pretrain.convert.weights import model_from_params
from lax_pretrain.layers.crossing import LATENT_NORM_EPS
from lax_pretrain.layers.spec import ACTIVATIONS, LATENT_NORMS
from lax_pretrain.models.llama import PROJECTIONS, Llama

MODEL_TYPE = "lax_llama"
ARCHITECTURE = "LaxLlamaForCausalLM"
MODELING_FILE = Path(__file__).with_name("modeling_lax_llama.py")  # plain torch; never imported here
AUTO_MAP = {
    "AutoConfig": "modeling_lax_llama.LaxLlamaConfig",
    "AutoModelForCausalLM": "modeling_lax_llama.LaxLlamaForCausalLM",
}
FORMAT_VERSION = 1
FORMAT_KEYS = (
    "rank",
    "only_lr_act",
    "lax_latent_act",
    "lax_crossing",
    "lax_latent_norm",
    "lax_latent_norm_eps",
    "lax_format_version",
)


def _ranks(hf: Mapping[str, Any]) -> dict[str, int]:
    rank = hf.get("rank")
    ranks = rank if isinstance(rank, dict) else dict.fromkeys(PROJECTIONS, rank)
    if set(ranks) != set(PROJECTIONS) or not all(isinstance(r, int) and r >= 1 for r in ranks.values()):
        raise ValueError(
            f"config.json: rank={rank!r} must be an integer >= 1 or a mapping of {', '.join(PROJECTIONS)} "
            "to integers >= 1"
        )
    return ranks


def model_config_from_lax(hf: Mapping[str, Any], *, scan_layers: bool = False) -> ml_collections.ConfigDict:
    cfg = model_config_from_hf(hf, scan_layers=scan_layers, model_type=MODEL_TYPE, format_keys=FORMAT_KEYS)
    missing = [key for key in FORMAT_KEYS if key not in hf]
    if missing:
        raise ValueError(f"config.json: {missing[0]!r} is missing (a lax_llama config names every LaX key)")
    reject(hf, "lax_format_version", (FORMAT_VERSION,), f"this converter reads version {FORMAT_VERSION}")
    reject(hf, "lax_latent_act", (*ACTIVATIONS, None), "not a latent activation we implement")
    reject(hf, "lax_crossing", LAX_FORMAT_CROSSINGS, "not a LaX crossing we implement")
    reject(hf, "lax_latent_norm", LATENT_NORMS, "not a latent norm we implement")
    reject(hf, "lax_latent_norm_eps", (LATENT_NORM_EPS,), f"the latent norm's eps is {LATENT_NORM_EPS}")
    act = hf["lax_latent_act"]
    cfg = low_rank_model_config(cfg, _ranks(hf), "cola" if act else "svd")
    cfg.linear.update(
        crossing=hf["lax_crossing"],
        latent_norm=hf["lax_latent_norm"],
        activation=act or cfg.linear.activation,
    )
    cfg.only_lr_act = bool(hf["only_lr_act"])
    return cfg


def lax_config(model_cfg: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    specs = check_lax(model_cfg)
    spec = specs["q"]
    ranks = {name: s.rank for name, s in specs.items()}
    hf = hf_config_from_model(model_cfg, base)
    hf.update(
        architectures=[ARCHITECTURE],
        model_type=MODEL_TYPE,
        auto_map=AUTO_MAP,
        rank=spec.rank if len(set(ranks.values())) == 1 else ranks,
        only_lr_act=bool(model_cfg.only_lr_act),
        lax_latent_act=spec.activation if spec.latent_act else None,
        lax_crossing=spec.crossing if crossed(model_cfg, spec) else "none",
        lax_latent_norm=spec.latent_norm,
        lax_latent_norm_eps=LATENT_NORM_EPS,
        lax_format_version=FORMAT_VERSION,
    )
    return hf


def load_lax(hf_dir: str | Path, *, scan_layers: bool = False) -> tuple[Llama, ml_collections.ConfigDict]:
    """(model, config.model) of a LaX directory (config.json + safetensors; the modeling file is not read)."""
    cfg = model_config_from_lax(read_config(hf_dir), scan_layers=scan_layers)
    top, blocks = factor_params(read_safetensors(Path(hf_dir)), cfg, LAX_TENSORS)
    return model_from_params(cfg, top, blocks), cfg


def export_lax(
    model: Llama, model_cfg: Any, out_dir: str | Path, *, base_config: Mapping[str, Any] | None = None
) -> Path:
    """Writes config.json, model.safetensors and modeling_lax_llama.py; refuses (naming the key) what the
    format cannot hold (tt, biases, projections that differ in more than their rank)."""
    hf_config = lax_config(model_cfg, base_config)  # checks before anything is written
    with export_dir(out_dir) as tmp:
        write_safetensors(factor_tensors(model, LAX_TENSORS, "lax"), tmp / "model.safetensors")
        write_config(hf_config, tmp)
        shutil.copyfile(MODELING_FILE, tmp / MODELING_FILE.name)
    return Path(out_dir)
