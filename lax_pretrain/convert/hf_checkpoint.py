"""Hugging Face LLaMA <-> lax-pretrain: read a `LlamaForCausalLM` directory, write one back.

    model, model_config = load_hf_llama("path/to/hf_dir")           # dense, float32 parameters
    export_hf_llama(model, model_config, "path/to/out_dir")         # transformers.LlamaForCausalLM loads it

Only safetensors checkpoints are read (one `model.safetensors`, or shards listed in
`model.safetensors.index.json`), without torch. Torch `nn.Linear` stores (out, in); our kernels are (in, out)
(y = x @ kernel), so every projection and the untied head are transposed; the embedding is (V, D) in both.
Unsupported features (biases, scaled RoPE, another activation) are rejected naming the config.json key.
Export writes dense weights: svd and tt projections are materialized, CoLA (nonlinear), LaX crossing and
intra-layer TT LaX have no dense equivalent and are refused.
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

from lax_pretrain.config import llama_config
from lax_pretrain.convert.weights import (
    Weights,
    check_linear,
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


# ---------------------------------------------------------------- config.json <-> config.model


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """RoPE base; transformers 5 writes `rope_parameters`, older versions `rope_theta` + `rope_scaling`."""
    for key in ("rope_parameters", "rope_scaling"):
        rope = hf.get(key) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(
                f"config.json: {key}.rope_type={rope_type!r} is not supported; only unscaled "
                "RoPE ('default') is implemented"
            )
        if "rope_theta" in rope:
            return float(rope["rope_theta"])
    return float(hf.get("rope_theta", 10000.0))


def _reject(hf: Mapping[str, Any], key: str, ok: Any, why: str) -> None:
    if key in hf and hf[key] not in ok:
        raise ValueError(f"config.json: {key}={hf[key]!r} is not supported: {why}")


def model_config_from_hf(hf: Mapping[str, Any], *, scan_layers: bool = False) -> ml_collections.ConfigDict:
    """config.model (dense) for a Hugging Face LlamaForCausalLM config.json."""
    _reject(hf, "model_type", ("llama",), "only LlamaForCausalLM checkpoints convert")
    _reject(hf, "attention_bias", (False, None), "our attention projections have no bias")
    _reject(hf, "mlp_bias", (False, None), "our MLP projections have no bias")
    _reject(hf, "hidden_act", ("silu",), "the MLP is SwiGLU with SiLU")
    heads = int(hf["num_attention_heads"])
    kv_heads = int(hf.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise ValueError(
            f"config.json: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
        )
    cfg = llama_config("nano").model
    cfg.update(
        dict(
            preset="hf",
            vocab_size=int(hf["vocab_size"]),
            d_model=int(hf["hidden_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
            ffn_dim=int(hf["intermediate_size"]),
            rope_theta=_rope_theta(hf),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            scan_layers=scan_layers,
        )
    )
    return cfg


def hf_config_from_model(model_cfg: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """config.json for LlamaForCausalLM; `base` (e.g. the imported source config) supplies token ids and
    max_position_embeddings, the architecture always comes from `model_cfg`."""
    hf = {k: v for k, v in (base or {}).items() if k not in ("rope_scaling", "torch_dtype", "dtype")}
    hf.setdefault("max_position_embeddings", 2048)
    hf.update(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        vocab_size=model_cfg.vocab_size,
        hidden_size=model_cfg.d_model,
        intermediate_size=model_cfg.ffn_dim,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_kv_heads,
        head_dim=model_cfg.get("head_dim") or model_cfg.d_model // model_cfg.num_heads,
        hidden_act="silu",
        rms_norm_eps=model_cfg.norm_eps,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=model_cfg.tie_embeddings,
        dtype=model_cfg.param_dtype,
        # Both spellings: transformers 5 reads rope_parameters, 4.x reads rope_theta.
        rope_theta=model_cfg.rope_theta,
        rope_parameters={"rope_type": "default", "rope_theta": model_cfg.rope_theta},
    )
    return hf


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


def _take(tensors: dict[str, np.ndarray], hf_name: str, transpose: bool) -> np.ndarray:
    key = f"{hf_name}.weight"
    if key not in tensors:
        raise KeyError(f"tensor {key!r} is missing from the checkpoint")
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
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# ---------------------------------------------------------------- the public API


def load_hf_llama(
    hf_dir: str | Path, *, scan_layers: bool = False
) -> tuple[Llama, ml_collections.ConfigDict]:
    """(model, config.model) of a Hugging Face LlamaForCausalLM directory (config.json + safetensors)."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} does not exist: expected a Hugging Face model directory")
    model_cfg = model_config_from_hf(json.loads(config_path.read_text()), scan_layers=scan_layers)
    top, blocks = weights_from_hf(read_safetensors(hf_dir), model_cfg)
    model = model_from_params(model_cfg, top_paths(top), [dense_block_paths(b) for b in blocks])
    return model, model_cfg


def export_hf_llama(
    model: Llama, model_cfg: Any, out_dir: str | Path, *, base_config: Mapping[str, Any] | None = None
) -> Path:
    """Writes config.json and model.safetensors that `transformers.LlamaForCausalLM.from_pretrained` loads.

    svd / tt projections are materialized into dense kernels; base_config: a source config.json whose
    non-architecture keys (token ids, max_position_embeddings) are kept.
    """
    check_linear(model_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    top, blocks = dense_params(model)
    # transformers refuses safetensors files without a known "format" in their metadata.
    save_file(hf_tensors(top, blocks), out_dir / "model.safetensors", metadata={"format": "pt"})
    hf_config = hf_config_from_model(model_cfg, base_config)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return out_dir
