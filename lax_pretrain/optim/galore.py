"""`optim.name=galore`: GaLore (arXiv 2403.03507) as its authors' `galore-torch` 1.0 computes it (`GaLoreAdamW`,
proj_type "std"): Adam on the projection of each attention / MLP weight's gradient onto its top-r singular
vectors (the smaller side), refreshed every `update_proj_gap` steps from an SVD of the gradient, the update
projected back and multiplied by `scale`; every other parameter is in a plain AdamW group with the same
eps and bias convention (lax_pretrain/optim/low_rank.py).
"""

from __future__ import annotations

from lax_pretrain.optim.base import Optimizer, register_optimizer
from lax_pretrain.optim.low_rank import Method, Step, build_entry, state_shardings, validate_entry
from lax_pretrain.optim.projection import project_back

SCRIPTS = "GaLore's scripts/benchmark_c4/llama_60m.sh"
HPARAMS = {"rank": 128, "update_proj_gap": 200, "scale": 0.25, "eps": 1e-6}
SOURCES = {
    "optim.galore.rank": f"{SCRIPTS}: --rank 128 (130M, 350M: 256; the paper's 1B: 512)",
    "optim.galore.update_proj_gap": f"{SCRIPTS}: --update_proj_gap 200 (every size)",
    "optim.galore.scale": f"{SCRIPTS}: --galore_scale 0.25 (every size)",
    "optim.galore.eps": "galore-torch 1.0 GaLoreAdamW default eps=1e-6 (the scripts pass none)",
    "optim.lr": f"{SCRIPTS}: --lr 0.01 for GaLore (the full-rank baseline: 1e-3); not set by optim.name",
}


def galore_direction(s: Step):
    return s.scale * project_back(s.n, s.projector, s.plan.left), s.norm


def make_galore(own: dict) -> Method:
    return Method("svd", own["rank"], own["update_proj_gap"], own["scale"], galore_direction)


register_optimizer(
    "galore",
    Optimizer(
        build=build_entry("galore", make_galore),
        hparams=HPARAMS,
        sources=SOURCES,
        state_shardings=state_shardings,
        validate=validate_entry("galore"),
    ),
)
