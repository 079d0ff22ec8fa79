"""`optim.name=fira`: Fira (arXiv 2410.01623) as its authors' `fira` 1.0.2 computes it: GaLore's projector and
low-rank Adam, plus the part of the gradient the projection leaves out, rescaled channel by channel by the
low-rank Adam step's norm ratio and held back by the norm-growth limiter:

    S = (G - alpha back(R)) * ||N||_r / (||R||_r + 1e-8)       (norms over the rank axis, one per channel)
    S <- S / (max(||S|| / ||S_prev||, 1.01) / 1.01)            (from the second step on)
    D = alpha back(N) + S

As in the code (not the paper's description), the residual subtracts alpha back(R), not back(R).
"""

from __future__ import annotations

from lax_pretrain.optim.base import Optimizer, register_optimizer
from lax_pretrain.optim.low_rank import Method, Step, build_entry, state_shardings, validate_entry
from lax_pretrain.optim.projection import channel_ratio, limit_norm_growth, project_back

SCRIPTS = "Fira's pre_training_c4/scripts/llama_60m.sh"
HPARAMS = {"rank": 128, "update_proj_gap": 200, "scale": 0.25, "eps": 1e-6}
SOURCES = {
    "optim.fira.rank": f"{SCRIPTS}: --rank 128 (350M: 256; 1B: 512)",
    "optim.fira.update_proj_gap": f"{SCRIPTS}: --update_proj_gap 200 (every size)",
    "optim.fira.scale": f"{SCRIPTS}: --alpha 0.25 (1B: 0.0625)",
    "optim.fira.eps": "fira 1.0.2 FiraAdamW default eps=1e-6 (the scripts pass none)",
    "optim.lr": f"{SCRIPTS}: --lr 0.01; not set by optim.name",
}


def fira_direction(s: Step):
    residual = s.g - s.scale * project_back(s.r, s.projector, s.plan.left)
    limited, norm = limit_norm_growth(residual * channel_ratio(s.n, s.r, s.plan.left), s.norm, s.first)
    return s.scale * project_back(s.n, s.projector, s.plan.left) + limited, norm


def make_fira(own: dict) -> Method:
    return Method("svd", own["rank"], own["update_proj_gap"], own["scale"], fira_direction)


register_optimizer(
    "fira",
    Optimizer(
        build=build_entry("fira", make_fira),
        hparams=HPARAMS,
        sources=SOURCES,
        state_shardings=state_shardings,
        validate=validate_entry("fira"),
    ),
)
