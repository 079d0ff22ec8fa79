"""`optim.name=apollo|apollo_mini`: APOLLO and APOLLO-Mini (arXiv 2412.05270) as their authors' `apollo-torch`
1.0.3 computes them (`APOLLOAdamW`, proj "random"): Adam on a random projection of each attention / MLP
weight's gradient (normal / sqrt(r), redrawn every `update_proj_gap` steps) only to estimate a learning-rate
scale, which then multiplies the raw gradient:

    phi = ||N|| / (||R|| + 1e-8)      per channel over the rank axis ('channel'), or per matrix ('tensor')
    S = G * phi * sqrt(scale)         (sqrt of the scale, as the code has it; before the limiter when
                                       scale_front, after it otherwise)
    S <- S / (max(||S|| / ||S_prev||, 1.01) / 1.01)  (Fira's norm-growth limiter, from the second step on)

APOLLO-Mini is the same with rank 1, one factor per matrix and scale 128 in front of the limiter (its scripts).
The authors seed a torch.Generator per parameter; here the projections come from `seed` (a JAX key folded
with the parameter's index and the step): the same distribution, not the same numbers.
"""

from __future__ import annotations

import math

from lax_pretrain.optim.base import Optimizer, register_optimizer
from lax_pretrain.optim.low_rank import Method, Step, build_entry, state_shardings, validate_entry
from lax_pretrain.optim.projection import channel_ratio, limit_norm_growth, tensor_ratio

SCALE_TYPES = ("channel", "tensor")
SCRIPTS = "APOLLO's scripts/pretrain_c4/llama_60m_apollo{}.sh"
DEFAULTS = {
    "apollo": {
        "rank": 128,
        "update_proj_gap": 200,
        "scale": 1.0,
        "scale_type": "channel",
        "scale_front": False,
        "eps": 1e-6,
        "seed": 0,
    },
    "apollo_mini": {
        "rank": 1,
        "update_proj_gap": 200,
        "scale": 128.0,
        "scale_type": "tensor",
        "scale_front": True,
        "eps": 1e-6,
        "seed": 0,
    },
}


def _sources(name: str, script: str) -> dict[str, str]:
    mini = name == "apollo_mini"
    return {
        f"optim.{name}.rank": f"{script}: --rank {1 if mini else 128}" + ("" if mini else " (350M: 256)"),
        f"optim.{name}.update_proj_gap": f"{script}: --update_proj_gap 200",
        f"optim.{name}.scale": f"{script}: --apollo_scale {128 if mini else 1.0}",
        f"optim.{name}.scale_type": f"{script}: --scale_type {'tensor' if mini else 'channel'}",
        f"optim.{name}.scale_front": f"{script}: " + ("--scale_front" if mini else "no --scale_front"),
        f"optim.{name}.eps": "apollo-torch 1.0.3 APOLLOAdamW default eps=1e-6 (main_pretrain.py passes 1e-6)",
        f"optim.{name}.seed": "ours: the random projections' JAX key (the authors seed a torch.Generator with "
        "the parameter's index)",
        "optim.lr": f"{script}: --lr 0.01; not set by optim.name",
    }


def apollo_direction(scale_type: str, scale_front: bool):
    def direction(s: Step):
        root = math.sqrt(s.scale)
        if scale_type == "tensor":
            ratio = tensor_ratio(s.n, s.r)
        else:
            ratio = channel_ratio(s.n, s.r, s.plan.left)
        scaled = s.g * ratio
        if scale_front:
            scaled = scaled * root
        scaled, norm = limit_norm_growth(scaled, s.norm, s.first)
        return (scaled if scale_front else scaled * root), norm

    return direction


def make_apollo(own: dict) -> Method:
    return Method(
        "random",
        own["rank"],
        own["update_proj_gap"],
        own["scale"],
        apollo_direction(own["scale_type"], bool(own["scale_front"])),
        seed=own["seed"],
    )


for _name, _suffix in (("apollo", ""), ("apollo_mini", "_mini")):
    register_optimizer(
        _name,
        Optimizer(
            build=build_entry(_name, make_apollo),
            hparams=DEFAULTS[_name],
            sources=_sources(_name, SCRIPTS.format(_suffix)),
            state_shardings=state_shardings,
            validate=validate_entry(_name, {"scale_type": SCALE_TYPES, "scale_front": (True, False)}),
        ),
    )
