"""Hugging Face LLaMA <-> lax-pretrain: import a `LlamaForCausalLM` directory, export one back.

    model, model_config = load_hf_llama("path/to/hf_dir")           # dense, float32 parameters
    export_hf_llama(model, model_config, "path/to/out_dir")         # transformers.LlamaForCausalLM loads it

Only safetensors checkpoints are read (one `model.safetensors`, or shards listed in
`model.safetensors.index.json`), without torch. Torch `nn.Linear` stores (out, in); our kernels are (in, out)
(y = x @ kernel), so every projection and the untied head are transposed; the embedding is (V, D) in both.
Unsupported features (biases, scaled RoPE, another activation) are rejected naming the config.json key.
Export writes dense weights: svd and tt projections are materialized, CoLA (nonlinear), LaX crossing and
intra-layer TT LaX have no dense equivalent and are refused.

Command line (the workdir layout is the hand-over to training and back):

    python -m lax_pretrain.convert.hf_llama import --hf_dir=HF_DIR --out=WORKDIR \
        [--to_kind=svd|tt --rank=R] [--scan_layers]
    python -m lax_pretrain.convert.hf_llama export --workdir=WORKDIR --out=HF_DIR

`import` writes
    WORKDIR/imported/params/        orbax StandardCheckpointer of nnx.state(model, nnx.Param)
    WORKDIR/imported/config.json    the model config (config.model), as ConfigDict JSON
    WORKDIR/imported/hf_config.json the source config.json, so an export keeps its token ids and context size
and, with --to_kind, first re-initialises every projection from the dense weights (see convert/low_rank.py).
`export` reads that layout back (`load_imported`) and writes config.json + model.safetensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx, traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from lax_pretrain.config import llama_config
from lax_pretrain.layers import DenseLinear, FactorizedLinear
from lax_pretrain.models import build
from lax_pretrain.models.llama import PROJECTIONS, Llama
from lax_pretrain.models.projections import projection_spec

ATTN_PROJECTIONS = ("q", "k", "v", "o")
# Our names -> Hugging Face module names (tensor = f"{module}.weight").
HF_TOP = {"embed": "model.embed_tokens", "final_norm": "model.norm", "head": "lm_head"}
HF_BLOCK = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
            "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
            "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
# Buffers some checkpoints carry that hold nothing we need (RoPE is recomputed).
HF_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

ParamPath = tuple[str | int, ...]  # a parameter's path in the model's pure-dict state
Weights = dict[str, np.ndarray]  # by our names: 'embed', 'final_norm', 'head' / 'attn_norm', 'q', .., 'down'


# ---------------------------------------------------------------- model params <-> plain arrays


def module_of(name: str) -> str:
    """Which sub-module of a decoder block holds projection `name`."""
    return "attn" if name in ATTN_PROJECTIONS else "mlp"


def top_paths(top: Weights) -> dict[ParamPath, np.ndarray]:
    """Embedding, head and final norm by our names -> their paths in the model."""
    return {("final_norm", "scale") if name == "final_norm" else (name,): value
            for name, value in top.items()}


def norm_paths(block: Weights) -> dict[ParamPath, np.ndarray]:
    return {(name, "scale"): block[name] for name in ("attn_norm", "mlp_norm")}


def dense_block_paths(block: Weights) -> dict[ParamPath, np.ndarray]:
    """A block of dense weights by our names -> its parameter paths in a dense model."""
    paths = norm_paths(block)
    paths.update({(module_of(name), name, "kernel"): block[name] for name in PROJECTIONS})
    return paths


def model_from_params(model_cfg: Any, top: dict[ParamPath, np.ndarray],
                      blocks: list[dict[ParamPath, np.ndarray]]) -> Llama:
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
        flat.update({("blocks", "rest", *p): np.stack([b[p] for b in rest]) for p in rest[0]})
    else:
        flat.update({("blocks", "rest", i, *p): v for i, b in enumerate(rest) for p, v in b.items()})
    want = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    _check_same_paths(set(flat), set(want))
    for path, value in flat.items():
        if tuple(value.shape) != tuple(want[path].shape):
            raise ValueError(f"{_dotted(path)}: shape {tuple(value.shape)} does not match the model config's "
                             f"{tuple(want[path].shape)}")
        flat[path] = jnp.asarray(value, dtype=want[path].dtype)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
    return nnx.merge(graphdef, state)


def _check_same_paths(got: set[ParamPath], want: set[ParamPath]) -> None:
    missing, extra = sorted(map(_dotted, want - got)), sorted(map(_dotted, got - want))
    if missing or extra:
        raise ValueError(f"parameters do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")


def _dotted(path: ParamPath) -> str:
    return ".".join(map(str, path))


def blocks_of(model: Llama) -> list[nnx.Module]:
    """Blocks 0..L-1 as separate modules; a scanned stack is sliced layer by layer."""
    stack = model.blocks
    if stack.num_layers == 1:
        return [stack.first]
    if not stack.scan:
        return [stack.first, *stack.rest]
    graphdef, state = nnx.split(stack.rest)
    return [stack.first] + [nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], state))
                            for i in range(stack.num_layers - 1)]


def projection(block: nnx.Module, name: str) -> DenseLinear | FactorizedLinear:
    return getattr(getattr(block, module_of(name)), name)


def check_linear(model_cfg: Any) -> None:
    """Raises unless every projection is one linear map (a kernel), i.e. the model has a dense equivalent."""
    if model_cfg.get("family") != "llama":
        raise ValueError(f"model.family={model_cfg.get('family')!r}: only LLaMA models convert")
    if model_cfg.only_lr_act:
        raise ValueError("model.only_lr_act=True drops the SwiGLU's SiLU: no LLaMA equivalent")
    for name in PROJECTIONS:
        # Block 0 is always built without crossing: the spec of a later block is what the config asks for.
        spec, where = projection_spec(model_cfg, name, first=False), f"model.proj.{name}"
        if spec["kind"] not in ("dense", "svd", "tt"):
            raise ValueError(f"{where}: kind {spec['kind']!r} is not a linear map (CoLA's latent activation "
                             "is nonlinear), so it has no dense weight to export")
        if spec.get("use_bias"):
            raise ValueError(f"{where}.use_bias=True: LLaMA projections have no bias")
        if spec.get("crossing", "none") != "none" and model_cfg.num_layers > 1:
            raise ValueError(f"{where}.crossing={spec['crossing']!r}: LaX crossing feeds the previous "
                             "block's latent in, which a dense LLaMA cannot express")
        if spec.get("intra"):
            raise ValueError(f"{where}.intra=True: intra-layer LaX makes the map differ from its "
                             "materialized kernel")
        if spec.get("latent_act"):
            raise ValueError(f"{where}.latent_act=True: an activation on the latent is nonlinear, so the "
                             "projection has no dense weight to export")


def dense_params(model: Llama) -> tuple[Weights, list[Weights]]:
    """(top, per-block) float arrays by our names; projections as (d_in, d_out) kernels (svd/tt materialized).

    Call `check_linear` first: CoLA or crossed layers have no meaningful kernel.
    """
    top = {"embed": np.asarray(model.embed[...]), "final_norm": np.asarray(model.final_norm.scale[...])}
    if not model.cfg.tie_embeddings:
        top["head"] = np.asarray(model.head[...])
    blocks = []
    for block in blocks_of(model):
        weights = {"attn_norm": np.asarray(block.attn_norm.scale[...]),
                   "mlp_norm": np.asarray(block.mlp_norm.scale[...])}
        weights.update({name: np.asarray(projection(block, name).materialize()) for name in PROJECTIONS})
        blocks.append(weights)
    return top, blocks


# ---------------------------------------------------------------- config.json <-> config.model


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """RoPE base; transformers 5 writes `rope_parameters`, older versions `rope_theta` + `rope_scaling`."""
    for key in ("rope_parameters", "rope_scaling"):
        rope = hf.get(key) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"config.json: {key}.rope_type={rope_type!r} is not supported; only unscaled "
                             "RoPE ('default') is implemented")
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
        raise ValueError(f"config.json: num_attention_heads={heads} is not a multiple of "
                         f"num_key_value_heads={kv_heads}")
    cfg = llama_config("nano").model
    cfg.update(dict(
        preset="hf", vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]), num_heads=heads, num_kv_heads=kv_heads,
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
        ffn_dim=int(hf["intermediate_size"]),
        rope_theta=_rope_theta(hf), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), scan_layers=scan_layers,
    ))
    return cfg


def hf_config_from_model(model_cfg: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """config.json for LlamaForCausalLM; `base` (e.g. the imported source config) supplies token ids and
    max_position_embeddings, the architecture always comes from `model_cfg`."""
    hf = {k: v for k, v in (base or {}).items() if k not in ("rope_scaling", "torch_dtype", "dtype")}
    hf.setdefault("max_position_embeddings", 2048)
    hf.update(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=model_cfg.vocab_size,
        hidden_size=model_cfg.d_model, intermediate_size=model_cfg.ffn_dim,
        num_hidden_layers=model_cfg.num_layers, num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_kv_heads,
        head_dim=model_cfg.get("head_dim") or model_cfg.d_model // model_cfg.num_heads,
        hidden_act="silu", rms_norm_eps=model_cfg.norm_eps, attention_bias=False, mlp_bias=False,
        tie_word_embeddings=model_cfg.tie_embeddings, dtype=model_cfg.param_dtype,
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
        raise FileNotFoundError(f"{hf_dir}: neither model.safetensors nor model.safetensors.index.json (only "
                                "safetensors checkpoints are read; re-save a .bin one with transformers)")
    tensors = {}
    for name in files:
        if not (hf_dir / name).exists():
            raise FileNotFoundError(f"{hf_dir / name}: a shard listed in model.safetensors.index.json is "
                                    "missing")
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
    blocks = [{name: _take(tensors, f"model.layers.{i}.{hf}", name in PROJECTIONS)
               for name, hf in HF_BLOCK.items()} for i in range(model_cfg.num_layers)]
    leftover = sorted(k for k in tensors if not k.endswith(HF_IGNORED_SUFFIXES))
    if leftover:
        raise ValueError(f"the checkpoint has tensors this converter does not know (wrong num_hidden_layers "
                         f"or an unsupported feature?): {leftover[:5]}")
    return top, blocks


def hf_tensors(top: Weights, blocks: list[Weights]) -> dict[str, np.ndarray]:
    """The inverse of `weights_from_hf`: torch (out, in) layout, contiguous for safetensors."""
    out = {f"{HF_TOP[name]}.weight": value.T if name == "head" else value for name, value in top.items()}
    for i, block in enumerate(blocks):
        out.update({f"model.layers.{i}.{HF_BLOCK[name]}.weight": value.T if name in PROJECTIONS else value
                    for name, value in block.items()})
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# ---------------------------------------------------------------- the public API


def load_hf_llama(hf_dir: str | Path, *,
                  scan_layers: bool = False) -> tuple[Llama, ml_collections.ConfigDict]:
    """(model, config.model) of a Hugging Face LlamaForCausalLM directory (config.json + safetensors)."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} does not exist: expected a Hugging Face model directory")
    model_cfg = model_config_from_hf(json.loads(config_path.read_text()), scan_layers=scan_layers)
    top, blocks = weights_from_hf(read_safetensors(hf_dir), model_cfg)
    model = model_from_params(model_cfg, top_paths(top), [dense_block_paths(b) for b in blocks])
    return model, model_cfg


def export_hf_llama(model: Llama, model_cfg: Any, out_dir: str | Path, *,
                    base_config: Mapping[str, Any] | None = None) -> Path:
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


# ---------------------------------------------------------------- the workdir hand-over


def imported_dir(workdir: str | Path) -> Path:
    return Path(workdir).absolute() / "imported"


def save_imported(model: Llama, model_cfg: Any, workdir: str | Path,
                  hf_config: Mapping[str, Any] | None = None) -> Path:
    """WORKDIR/imported/{params/ (orbax), config.json, hf_config.json (optional)}; replaces an earlier
    import."""
    import orbax.checkpoint as ocp  # only the workdir hand-over needs orbax

    root = imported_dir(workdir)
    root.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(root / "params", nnx.state(model, nnx.Param), force=True)
    checkpointer.wait_until_finished()
    (root / "config.json").write_text(model_cfg.to_json(indent=2) + "\n")
    if hf_config is not None:
        (root / "hf_config.json").write_text(json.dumps(dict(hf_config), indent=2) + "\n")
    return root


def load_imported(workdir: str | Path) -> tuple[Llama, ml_collections.ConfigDict]:
    """The (model, config.model) that `save_imported` wrote."""
    import orbax.checkpoint as ocp

    root = imported_dir(workdir)
    if not (root / "config.json").exists():
        raise FileNotFoundError(f"{root / 'config.json'} does not exist: run `import` into {workdir} first")
    model_cfg = ml_collections.ConfigDict(json.loads((root / "config.json").read_text()))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(model_cfg, rngs=nnx.Rngs(0))))
    state = ocp.StandardCheckpointer().restore(root / "params", abstract)
    return nnx.merge(graphdef, state), model_cfg


def _report_lines(report: Mapping[tuple[int, str], float]) -> list[str]:
    lines = ["projection  mean rel. error  max rel. error"]
    for name in PROJECTIONS:
        errors = [e for (_, n), e in report.items() if n == name]
        lines.append(f"{name:<10}  {sum(errors) / len(errors):>15.4f}  {max(errors):>14.4f}")
    return lines


def main(argv: list[str]) -> None:
    from absl import flags, logging

    from lax_pretrain.convert.low_rank import to_low_rank

    logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore step at INFO
    f = flags.FLAGS
    command = argv[1] if len(argv) == 2 else None
    if command == "import":
        if not f.hf_dir or not f.out:
            raise SystemExit("import needs --hf_dir and --out")
        model, model_cfg = load_hf_llama(f.hf_dir, scan_layers=f.scan_layers)
        if f.to_kind != "dense":
            if not f.rank:
                raise SystemExit(f"--to_kind={f.to_kind} needs --rank")
            model, model_cfg, report = to_low_rank(model, model_cfg, kind=f.to_kind, rank=f.rank)
            print("\n".join(_report_lines(report)))
        hf_config = json.loads((Path(f.hf_dir) / "config.json").read_text())
        root = save_imported(model, model_cfg, f.out, hf_config)
        params = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        print(f"imported {f.hf_dir} ({params:,} parameters, kind {model_cfg.linear.kind}) -> {root}")
    elif command == "export":
        if not f.workdir or not f.out:
            raise SystemExit("export needs --workdir and --out")
        model, model_cfg = load_imported(f.workdir)
        base_path = imported_dir(f.workdir) / "hf_config.json"
        base = json.loads(base_path.read_text()) if base_path.exists() else None
        print(f"exported {f.workdir} -> {export_hf_llama(model, model_cfg, f.out, base_config=base)}")
    else:
        raise SystemExit("usage: python -m lax_pretrain.convert.hf_llama import|export [flags] (see --help)")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("hf_dir", None, "import: Hugging Face LlamaForCausalLM directory.")
    flags.DEFINE_string("out", None, "import: the workdir to write imported/ into; export: the HF directory.")
    flags.DEFINE_string("workdir", None, "export: a workdir holding imported/.")
    flags.DEFINE_enum("to_kind", "dense", ["dense", "svd", "tt"],
                      "import: re-initialise the projections as this kind.")
    flags.DEFINE_integer("rank", None, "import: svd rank / middle TT rank for --to_kind.")
    flags.DEFINE_bool("scan_layers", False, "import: stack blocks 1..L-1 for nnx.scan.")
    app.run(main)
