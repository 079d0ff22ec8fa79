"""The CoLA tensor layout (the authors' `ColaForCausalLM.save_pretrained`), shared by the cola and lax formats.

LLaMA's names (hf_checkpoint.HF_TOP / HF_BLOCK) with each projection's nn.Linear weight replaced by two
factors stored the way they are used, y = (x @ cola_a) @ cola_b, NOT transposed like nn.Linear weights:

    model.layers.{i}.self_attn.q_proj.cola_a    (d_in, r)   our `down`
    model.layers.{i}.self_attn.q_proj.cola_b    (r, d_out)  our `up`
    ... k_proj, v_proj, o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj alike

The lax format adds, for layers i >= 1 of a crossed model (`LAX_TENSORS`), stored as used (z @ kernel):

    .lax_gate.g0 (f1, f1), .lax_gate.g1 (f0, f0)   kron gate: z @ kron(g1, g0), f0 <= f1 the most balanced
                                                    factor pair of r
    .lax_gate.kernel (r, r), .lax_gate.bias (r,)   dense gate: z @ kernel + bias
    .lax_norm.weight (r,) [, .lax_norm.bias (r,)]  the latent norm (rmsnorm [layernorm])

Embedding (V, D) and norms as in LLaMA; lm_head (V, D) is our head transposed, absent when tied (as
`save_pretrained` writes tied weights). Every parameter must have a name and every tensor a parameter: a
leftover on either side is an error, never a silent drop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from lax_pretrain.convert.hf_checkpoint import HF_BLOCK, HF_IGNORED_SUFFIXES, HF_TOP
from lax_pretrain.convert.weights import ParamPath, dotted, module_of, param_paths
from lax_pretrain.models.llama import PROJECTIONS, Llama

SubNames = Mapping[ParamPath, str]  # a sub-path inside one projection -> the tensor suffix after `<proj>.`

COLA_TENSORS: SubNames = {("down",): "cola_a", ("up",): "cola_b"}
LAX_TENSORS: SubNames = {
    **COLA_TENSORS,
    ("gate", "g0"): "lax_gate.g0",
    ("gate", "g1"): "lax_gate.g1",
    ("gate", "kernel"): "lax_gate.kernel",
    ("gate", "bias"): "lax_gate.bias",
    ("latent_norm", "scale"): "lax_norm.weight",
    ("latent_norm", "bias"): "lax_norm.bias",
}
TOP_TENSORS = {
    ("embed",): f"{HF_TOP['embed']}.weight",
    ("final_norm", "scale"): f"{HF_TOP['final_norm']}.weight",
    ("head",): f"{HF_TOP['head']}.weight",
}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def _block_names(sub_names: SubNames) -> dict[ParamPath, str]:
    """A path inside one block -> the tensor name after `model.layers.{i}.`."""
    names = {(norm, "scale"): f"{HF_BLOCK[norm]}.weight" for norm in ("attn_norm", "mlp_norm")}
    for name in PROJECTIONS:
        names.update({(module_of(name), name, *sub): f"{HF_BLOCK[name]}.{s}" for sub, s in sub_names.items()})
    return names


def factor_tensors(model: Llama, sub_names: SubNames, fmt: str) -> dict[str, np.ndarray]:
    """Every parameter of `model` under its tensor name (the head transposed to (V, D))."""
    top, blocks = param_paths(model)
    out = {TOP_TENSORS[path]: value.T if path == ("head",) else value for path, value in top.items()}
    names = _block_names(sub_names)
    for i, block in enumerate(blocks):
        for path, value in block.items():
            if path not in names:
                raise ValueError(f"parameter {dotted(path)} of block {i} has no tensor in the {fmt} format")
            out[f"model.layers.{i}.{names[path]}"] = value
    return out


def factor_params(
    tensors: Mapping[str, np.ndarray], model_cfg: Any, sub_names: SubNames
) -> tuple[dict[ParamPath, np.ndarray], list[dict[ParamPath, np.ndarray]]]:
    """The inverse of `factor_tensors`: (top, per-block) parameter paths for `model_from_params`, which then
    checks them against the model of `model_cfg` (a missing or misshapen tensor names its parameter)."""
    top_paths = {name: path for path, name in TOP_TENSORS.items()}
    block_paths = {name: path for path, name in _block_names(sub_names).items()}
    top: dict[ParamPath, np.ndarray] = {}
    blocks: list[dict[ParamPath, np.ndarray]] = [{} for _ in range(model_cfg.num_layers)]
    unknown = []
    for name, value in tensors.items():
        layer = _LAYER.fullmatch(name)
        if name in top_paths:
            if top_paths[name] == ("head",):
                if model_cfg.tie_embeddings:
                    continue  # some tied checkpoints store the copy anyway
                value = value.T
            top[top_paths[name]] = value
        elif layer and int(layer[1]) < model_cfg.num_layers and layer[2] in block_paths:
            blocks[int(layer[1])][block_paths[layer[2]]] = value
        elif not name.endswith(HF_IGNORED_SUFFIXES):
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"the checkpoint has tensors this format does not know (wrong num_hidden_layers, or "
            f"crossing tensors the config.json does not announce?): {sorted(unknown)[:5]}"
        )
    return top, blocks
