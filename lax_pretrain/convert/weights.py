"""Model parameters <-> plain numpy arrays by our names: what Hugging Face conversion and low-rank
initialisation share.

A block's weights are keyed 'attn_norm', 'mlp_norm' and the projections 'q', .., 'down'; the top level's
'embed', 'final_norm' and (untied) 'head'. Kernels are (d_in, d_out) (y = x @ kernel).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from lax_pretrain.layers import DenseLinear, FactorizedLinear
from lax_pretrain.models import build
from lax_pretrain.models.llama import PROJECTIONS, Llama

ATTN_PROJECTIONS = ("q", "k", "v", "o")

ParamPath = tuple[str | int, ...]  # a parameter's path in the model's pure-dict state
Weights = dict[str, np.ndarray]  # by our names: 'embed', 'final_norm', 'head' / 'attn_norm', 'q', .., 'down'


def module_of(name: str) -> str:
    """Which sub-module of a decoder block holds projection `name`."""
    return "attn" if name in ATTN_PROJECTIONS else "mlp"


def top_paths(top: Weights) -> dict[ParamPath, np.ndarray]:
    """Embedding, head and final norm by our names -> their paths in the model."""
    return {
        ("final_norm", "scale") if name == "final_norm" else (name,): value for name, value in top.items()
    }


def norm_paths(block: Weights) -> dict[ParamPath, np.ndarray]:
    return {(name, "scale"): block[name] for name in ("attn_norm", "mlp_norm")}


def dense_block_paths(block: Weights) -> dict[ParamPath, np.ndarray]:
    """A block of dense weights by our names -> its parameter paths in a dense model."""
    paths = norm_paths(block)
    paths.update({(module_of(name), name, "kernel"): block[name] for name in PROJECTIONS})
    return paths


def model_from_params(
    model_cfg: Any, top: dict[ParamPath, np.ndarray], blocks: list[dict[ParamPath, np.ndarray]]
) -> Llama:
    """Builds the model of `model_cfg` holding exactly the given parameters (no random init is spent).

    top: paths outside the blocks; blocks: one dict per layer with paths inside a block. Under
    `scan_layers` blocks 1..L-1 are stacked along a leading axis, as `BlockStack` keeps them.
    """
    if len(blocks) != model_cfg.num_layers:
        raise ValueError(f"got {len(blocks)} blocks of weights for model.num_layers={model_cfg.num_layers}")
    abstract = nnx.eval_shape(lambda: build(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)  # a Llama holds nothing but Params
    flat: dict[ParamPath, np.ndarray] = dict(top)
    flat.update({("blocks", "first", *p): v for p, v in blocks[0].items()})
    rest = blocks[1:]
    if rest and model_cfg.scan_layers:
        for i, block in enumerate(rest, 2):  # stacking needs the same parameters in every block
            differ = sorted(map(dotted, set(block) ^ set(rest[0])))
            if differ:
                raise ValueError(f"block {i} and block 1 differ in their parameters: {differ[:5]}")
        flat.update({("blocks", "rest", *p): np.stack([b[p] for b in rest]) for p in rest[0]})
    else:
        flat.update({("blocks", "rest", i, *p): v for i, b in enumerate(rest) for p, v in b.items()})
    want = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    _check_same_paths(set(flat), set(want))
    for path, value in flat.items():
        if tuple(value.shape) != tuple(want[path].shape):
            raise ValueError(
                f"{dotted(path)}: shape {tuple(value.shape)} does not match the model config's "
                f"{tuple(want[path].shape)}"
            )
        flat[path] = jnp.asarray(value, dtype=want[path].dtype)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
    return nnx.merge(graphdef, state)


def _check_same_paths(got: set[ParamPath], want: set[ParamPath]) -> None:
    missing, extra = sorted(map(dotted, want - got)), sorted(map(dotted, got - want))
    if missing or extra:
        raise ValueError(f"parameters do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")


def dotted(path: ParamPath) -> str:
    return ".".join(map(str, path))


def blocks_of(model: Llama) -> list[nnx.Module]:
    """Blocks 0..L-1 as separate modules; a scanned stack is sliced layer by layer."""
    stack = model.blocks
    if stack.num_layers == 1:
        return [stack.first]
    if not stack.scan:
        return [stack.first, *stack.rest]
    graphdef, state = nnx.split(stack.rest)
    return [stack.first] + [
        nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], state)) for i in range(stack.num_layers - 1)
    ]


def projection(block: nnx.Module, name: str) -> DenseLinear | FactorizedLinear:
    return getattr(getattr(block, module_of(name)), name)


def dense_params(model: Llama) -> tuple[Weights, list[Weights]]:
    """(top, per-block) float arrays by our names; projections as (d_in, d_out) kernels (svd/tt materialized).

    Call `representable.check_linear` first: CoLA or crossed layers have no meaningful kernel.
    """
    top = {"embed": np.asarray(model.embed[...]), "final_norm": np.asarray(model.final_norm.scale[...])}
    if not model.cfg.tie_embeddings:
        top["head"] = np.asarray(model.head[...])
    blocks = []
    for block in blocks_of(model):
        weights = {
            "attn_norm": np.asarray(block.attn_norm.scale[...]),
            "mlp_norm": np.asarray(block.mlp_norm.scale[...]),
        }
        weights.update({name: np.asarray(projection(block, name).materialize()) for name in PROJECTIONS})
        blocks.append(weights)
    return top, blocks


def param_paths(model: Llama) -> tuple[dict[ParamPath, np.ndarray], list[dict[ParamPath, np.ndarray]]]:
    """(top, per-block) parameters by path, the inverse of `model_from_params` (a scanned stack is sliced)."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    top = {path: np.asarray(value) for path, value in flat.items() if path[0] != "blocks"}
    blocks = [
        {
            path: np.asarray(value)
            for path, value in traverse_util.flatten_dict(nnx.to_pure_dict(state)).items()
        }
        for state in (nnx.state(block, nnx.Param) for block in blocks_of(model))
    ]
    return top, blocks
