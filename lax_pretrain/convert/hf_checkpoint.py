"""Hugging Face LLaMA <-> lax-pretrain: read a `LlamaForCausalLM` directory, write one back.

    model, model_config = load_hf_llama("path/to/hf_dir")           # dense, float32 parameters
    export_hf_llama(model, model_config, "path/to/out_dir")         # transformers.LlamaForCausalLM loads it

Only safetensors checkpoints are read (one `model.safetensors`, or shards listed in
`model.safetensors.index.json`), without torch. Torch `nn.Linear` stores (out, in); our kernels are (in, out)
(y = x @ kernel), so every projection and the untied head are transposed; the embedding is (V, D) in both.
config.json is read strictly (hf_config.py): unsupported values (biases, scaled RoPE, another activation) and
unknown keys are refused naming the key. Export writes dense weights: svd and tt projections are materialized;
CoLA (nonlinear), LaX crossing and intra-layer TT LaX have no dense equivalent and are refused (the cola and
lax formats hold the first two: cola_checkpoint.py, lax_checkpoint.py). The names below are also the
skeleton of those formats (factor_layout.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from lax_pretrain.convert.export_dir import export_dir
from lax_pretrain.convert.hf_config import hf_config_from_model, model_config_from_hf
from lax_pretrain.convert.representable import check_linear
from lax_pretrain.convert.weights import (
    Weights,
    dense_block_paths,
    dense_params,
    model_from_params,
    top_paths,
)
from lax_pretrain.models.llama import PROJECTIONS, Llama

# Our names -> Hugging Face module names (tensor = f"{module}.weight").
HF_TOP = {"embed": "model.embed_tokens", "final_norm": "model.norm", "head": "lm_head"}
HF_BLOCK = {
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
# Buffers some checkpoints carry that hold nothing we need (RoPE is recomputed).
HF_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ---------------------------------------------------------------- safetensors files


def read_safetensors(hf_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of a single-file or sharded checkpoint, as float32 numpy arrays."""
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (hf_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"{hf_dir}: neither model.safetensors nor model.safetensors.index.json (only "
            "safetensors checkpoints are read; re-save a .bin one with transformers)"
        )
    tensors = {}
    for name in files:
        if not (hf_dir / name).exists():
            raise FileNotFoundError(
                f"{hf_dir / name}: a shard listed in model.safetensors.index.json is missing"
            )
        # The flax framework reads bfloat16 too (numpy has no such dtype); upcast on the host.
        with safe_open(hf_dir / name, framework="flax") as f:
            for key in f.keys():
                tensors[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
    return tensors


def write_safetensors(tensors: Mapping[str, np.ndarray], path: Path) -> None:
    # transformers refuses safetensors files without a known "format" in their metadata.
    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(contiguous, path, metadata={"format": "pt"})


def read_config(hf_dir: str | Path) -> dict[str, Any]:
    config_path = Path(hf_dir) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} does not exist: expected a Hugging Face model directory")
    return json.loads(config_path.read_text())


def write_config(hf_config: Mapping[str, Any], out_dir: Path) -> None:
    (out_dir / "config.json").write_text(json.dumps(dict(hf_config), indent=2) + "\n")


def _take(tensors: dict[str, np.ndarray], hf_name: str, transpose: bool) -> np.ndarray:
    key = f"{hf_name}.weight"
    if key not in tensors:
        raise ValueError(f"tensor {key!r} is missing from the checkpoint")
    value = tensors.pop(key)
    return value.T if transpose else value


def weights_from_hf(tensors: dict[str, np.ndarray], model_cfg: Any) -> tuple[Weights, list[Weights]]:
    """HF tensors -> (top, per-block) by our names, kernels (in, out). Leftover tensors are an error."""
    tensors = dict(tensors)
    top = {name: _take(tensors, HF_TOP[name], False) for name in ("embed", "final_norm")}
    if model_cfg.tie_embeddings:
        tensors.pop(f"{HF_TOP['head']}.weight", None)  # some tied checkpoints store the copy anyway
    else:
        top["head"] = _take(tensors, HF_TOP["head"], True)
    blocks = [
        {name: _take(tensors, f"model.layers.{i}.{hf}", name in PROJECTIONS) for name, hf in HF_BLOCK.items()}
        for i in range(model_cfg.num_layers)
    ]
    leftover = sorted(k for k in tensors if not k.endswith(HF_IGNORED_SUFFIXES))
    if leftover:
        raise ValueError(
            f"the checkpoint has tensors this converter does not know (wrong num_hidden_layers "
            f"or an unsupported feature?): {leftover[:5]}"
        )
    return top, blocks


def hf_tensors(top: Weights, blocks: list[Weights]) -> dict[str, np.ndarray]:
    """The inverse of `weights_from_hf`: torch (out, in) layout, contiguous for safetensors."""
    out = {f"{HF_TOP[name]}.weight": value.T if name == "head" else value for name, value in top.items()}
    for i, block in enumerate(blocks):
        out.update(
            {
                f"model.layers.{i}.{HF_BLOCK[name]}.weight": value.T if name in PROJECTIONS else value
                for name, value in block.items()
            }
        )
    return out


# ---------------------------------------------------------------- the public API


def load_hf_llama(
    hf_dir: str | Path, *, scan_layers: bool = False
) -> tuple[Llama, ml_collections.ConfigDict]:
    """(model, config.model) of a Hugging Face LlamaForCausalLM directory (config.json + safetensors)."""
    model_cfg = model_config_from_hf(read_config(hf_dir), scan_layers=scan_layers)
    top, blocks = weights_from_hf(read_safetensors(Path(hf_dir)), model_cfg)
    model = model_from_params(model_cfg, top_paths(top), [dense_block_paths(b) for b in blocks])
    return model, model_cfg


def export_hf_llama(
    model: Llama, model_cfg: Any, out_dir: str | Path, *, base_config: Mapping[str, Any] | None = None
) -> Path:
    """Writes config.json and model.safetensors that `transformers.LlamaForCausalLM.from_pretrained` loads.

    svd / tt projections are materialized into dense kernels; base_config: a source config.json whose
    token ids and context length are kept. The directory appears complete or not at all (export_dir.py).
    """
    check_linear(model_cfg)
    with export_dir(out_dir) as tmp:
        write_safetensors(hf_tensors(*dense_params(model)), tmp / "model.safetensors")
        write_config(hf_config_from_model(model_cfg, base_config), tmp)
    return Path(out_dir)
