"""Parameter and FLOP accounting from an abstract (eval_shape) model: the 7B preset costs no memory.

`model_stats(config.model, seq_len)` gives one row per projection type (summed over blocks) and the totals: all
parameters, non-embedding parameters (the task's embedding attributes excluded: embedding, head,
patch/position/cls and classifier), LaX overhead (gates, latent norms, intra-layer gates) and forward FLOPs per
token (matmuls; attention scores included; x3 for a training step). `lax-params` prints it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from flax import nnx

from lax_pretrain.layers.base import FactorizedLinear, LinearBase
from lax_pretrain.models.tasks import get_task


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
    return nnx.eval_shape(lambda: get_task(model_cfg).model_class(model_cfg, rngs=nnx.Rngs(0)))


def model_stats(model_cfg: Any, seq_len: int = 256) -> ModelStats:
    """Counts from the real (abstract) parameter tree plus the layers' analytic FLOPs."""
    task = get_task(model_cfg)
    model = abstract_model(model_cfg)
    rest = model_cfg.num_layers - 1
    rows: dict[str, ModuleRow] = {}
    lax_total = 0
    for path, module in nnx.iter_modules(model):
        if not isinstance(module, LinearBase):  # every kind's layer, registered ones included
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
        embedding += size if path[0] in task.embedding_attrs else 0

    tokens = task.tokens_per_example(model_cfg, seq_len)
    linear = sum(r.flops_per_token for r in rows.values())
    attention = (
        model_cfg.num_layers * 2 * 2 * tokens * model_cfg.d_model
    )  # q k^T and attn v, unmasked as in PaLM
    outside = task.outside_flops_per_token(model_cfg, tokens)
    order = {name: i for i, name in enumerate(task.projections)}
    ordered = sorted(rows.values(), key=lambda r: order.get(r.name, len(order)))
    return ModelStats(
        ordered, total, total - embedding, lax_total, linear, linear + attention + outside, tokens
    )


def format_table(stats: ModelStats) -> str:
    lines = [
        f"{'module':<8} {'kind':<6} {'blocks':>6} {'params':>14} {'LaX params':>12} {'GFLOPs/token':>13}"
    ]
    for r in stats.rows:
        lines.append(
            f"{r.name:<8} {r.kind:<6} {r.count:>6} {r.params:>14,} {r.lax_params:>12,} "
            f"{r.flops_per_token / 1e9:>13.4f}"
        )
    lines += [
        f"total parameters          {stats.total_params:>16,}  ({stats.total_params / 1e6:.2f}M)",
        f"non-embedding parameters  {stats.non_embedding_params:>16,}  ({stats.non_embedding_params / 1e6:.2f}M)",
        f"LaX overhead              {stats.lax_params:>16,}  ({stats.lax_params / 1e6:.3f}M)",
        f"forward FLOPs per token   {stats.flops_per_token:>16,}  (seq {stats.seq_len}; training step x3)",
    ]
    return "\n".join(lines)
