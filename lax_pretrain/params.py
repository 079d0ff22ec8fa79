"""Parameter and FLOP accounting from an abstract (eval_shape) model: the 7B preset costs no memory.

    python -m lax_pretrain.params --config=configs/llama.py:60m,kind=cola,lax=kron [--json] [--recipe]

Prints one row per projection type (summed over blocks) and the totals: all parameters, non-embedding
parameters (embedding, head, patch/position/cls and classifier excluded), LaX overhead (gates and latent
norms) and forward FLOPs per token (matmuls; attention scores included; x3 for a training step).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
from flax import nnx

from lax_pretrain.layers.base import FactorizedLinear
from lax_pretrain.layers.dense import DenseLinear
from lax_pretrain.models import build, llama, vit

# Top-level attributes that hold embedding-like parameters (outside the transformer blocks).
EMBEDDING_ATTRS = ("embed", "head", "patch_kernel", "patch_bias", "cls", "pos", "head_kernel", "head_bias")
PROJECTIONS = {"llama": llama.PROJECTIONS, "vit": vit.PROJECTIONS}


@dataclasses.dataclass
class ModuleRow:
    name: str
    kind: str
    count: int  # how many blocks hold it
    params: int  # summed over blocks (bias and LaX parts included)
    lax_params: int
    flops_per_token: int  # summed over blocks


@dataclasses.dataclass
class ModelStats:
    rows: list[ModuleRow]
    total_params: int
    non_embedding_params: int
    lax_params: int
    linear_flops_per_token: int
    flops_per_token: int  # forward, per token, at `seq_len`
    seq_len: int

    @property
    def train_flops_per_token(self) -> int:
        return 3 * self.flops_per_token

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train_flops_per_token"] = self.train_flops_per_token
        return d


def abstract_model(model_cfg: Any) -> nnx.Module:
    return nnx.eval_shape(lambda: build(model_cfg, rngs=nnx.Rngs(0)))


def _tokens_per_sequence(model_cfg: Any, seq_len: int) -> int:
    if model_cfg.family == "vit":
        return (model_cfg.image_size // model_cfg.patch_size) ** 2 + 1
    return seq_len


def model_stats(model_cfg: Any, seq_len: int = 256) -> ModelStats:
    """Counts from the real (abstract) parameter tree plus the layers' analytic FLOPs."""
    model = abstract_model(model_cfg)
    rest = model_cfg.num_layers - 1
    rows: dict[str, ModuleRow] = {}
    lax_total = 0
    for path, module in nnx.iter_modules(model):
        if not isinstance(module, (FactorizedLinear, DenseLinear)):
            continue
        # A scanned stack holds blocks 1..L-1 as one module with stacked parameters.
        copies = rest if (model_cfg.scan_layers and "rest" in path) else 1
        lax = module.lax_param_count if isinstance(module, FactorizedLinear) else 0
        row = rows.setdefault(str(path[-1]), ModuleRow(str(path[-1]), module.spec.kind, 0, 0, 0, 0))
        row.count += copies
        row.params += copies * module.param_count
        row.lax_params += copies * lax
        row.flops_per_token += copies * module.flops_per_token
        lax_total += copies * lax

    total, embedding = 0, 0
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        size = math.prod(leaf.shape)
        total += size
        embedding += size if path[0] in EMBEDDING_ATTRS else 0

    tokens = _tokens_per_sequence(model_cfg, seq_len)
    d = model_cfg.d_model
    linear = sum(r.flops_per_token for r in rows.values())
    attention = model_cfg.num_layers * 2 * 2 * tokens * d  # q k^T and attn v, full (unmasked) count as in PaLM
    if model_cfg.family == "llama":
        outside = 2 * d * model_cfg.vocab_size
    else:  # patch embedding amortised over the tokens, classifier on the cls token only
        outside = (2 * model_cfg.patch_size**2 * model_cfg.channels * d * (tokens - 1) + 2 * d * model_cfg.num_classes) // tokens
    order = {name: i for i, name in enumerate(PROJECTIONS[model_cfg.family])}
    ordered = sorted(rows.values(), key=lambda r: order.get(r.name, len(order)))
    return ModelStats(ordered, total, total - embedding, lax_total, linear, linear + attention + outside,
                      tokens)


def format_table(stats: ModelStats) -> str:
    lines = [f"{'module':<8} {'kind':<6} {'blocks':>6} {'params':>14} {'LaX params':>12} {'GFLOPs/token':>13}"]
    for r in stats.rows:
        lines.append(f"{r.name:<8} {r.kind:<6} {r.count:>6} {r.params:>14,} {r.lax_params:>12,} "
                     f"{r.flops_per_token / 1e9:>13.4f}")
    lines += [
        f"total parameters          {stats.total_params:>16,}  ({stats.total_params / 1e6:.2f}M)",
        f"non-embedding parameters  {stats.non_embedding_params:>16,}  ({stats.non_embedding_params / 1e6:.2f}M)",
        f"LaX overhead              {stats.lax_params:>16,}  ({stats.lax_params / 1e6:.3f}M)",
        f"forward FLOPs per token   {stats.flops_per_token:>16,}  (seq {stats.seq_len}; training step x3)",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    from absl import flags

    config = flags.FLAGS.config
    if flags.FLAGS.recipe:
        from ml_collections import config_flags

        from lax_pretrain.recipe import flatten_overrides, format_recipe, recipe_rows

        overridden = flatten_overrides(config_flags.get_override_values(flags.FLAGS["config"]))
        rows = recipe_rows(config, overridden)
        if flags.FLAGS.json:
            print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        else:
            print(format_recipe(rows))
        return
    seq_len = config.data.get("seq_len", 256)
    stats = model_stats(config.model, seq_len)
    if flags.FLAGS.json:
        print(json.dumps(stats.to_json(), indent=2))
    else:
        print(format_table(stats))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Recipe file and compact argument, e.g. configs/llama.py:60m")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
    flags.DEFINE_bool("recipe", False, "Print every training hyperparameter with the source it follows.")
    flags.mark_flags_as_required(["config"])
    jax.config.update("jax_platforms", "cpu")
    app.run(main)
