"""The optimizer baselines of the low-rank papers at CPU scale: GaLore, Fira, APOLLO and APOLLO-Mini training the
dense nano LLaMA on Shakespeare with the cpu_llama suite's budget, data and schedule (configs/sweeps/cpu.py),
two seeds each. Full-rank AdamW is that suite's dense row (the same runs: not rerun here).

    python -m lax_pretrain.experiments.optimizers --out=docs/benchmarks/optimizers     # runs + report, resumable
    python scripts/sweep.py --sweep=configs/sweeps/optimizers.py --workdir=runs/optimizers   # runs only

Each method as its authors' LLaMA-60M script sets it (lax_pretrain/optim/*.py name the scripts): projection
gap 200, GaLore and Fira scale 0.25, APOLLO scale 1 channel-wise, APOLLO-Mini rank 1, tensor-wise, scale 128
in front; learning rate 0.01 for every method (the scripts'; their full-rank baseline: 1e-3; cpu_llama's AdamW:
the preset's 3e-3). The rank keeps the scripts' rank / d_model = 128 / 512 = 1/4 at nano's d_model 256: 64
(APOLLO-Mini: 1). Weight decay 0.01 and clipping 0.5 are the suite's, shared by every row. A control row trains
AdamW at the methods' learning rate 0.01 (one seed), to tell the method from its learning rate.

`get_sweep(seeds=2, steps=None, tiny=False)`: `tiny` is the seconds-long smoke version (the sweep's TINY_MODEL,
2 steps, update_proj_gap 1 so a refresh runs on both steps).
"""

import dataclasses
from pathlib import Path

from lax_pretrain.experiments.sweep import load_module, recipes, shrink

CPU = load_module(Path(__file__).with_name("cpu.py"))
SUITE = CPU.SUITES["cpu_llama"]
RANK = 64  # the authors' 60M rank / d_model (128 / 512) at nano's d_model 256
LR = 0.01  # every method's script at 60M
METHODS = {
    "galore": {"optim.galore.rank": RANK},
    "fira": {"optim.fira.rank": RANK},
    "apollo": {"optim.apollo.rank": RANK},
    "apollo_mini": {},
}
# The control: full-rank AdamW at the methods' learning rate (the suite's AdamW rows train at the preset's 3e-3),
# one seed, after every method's first seed.
CONTROL = {"optim.name": "adamw", "optim.lr": LR}


def get_sweep(seeds: int = 2, steps: int | None = None, tiny: bool = False):
    suite = SUITE
    if tiny:
        suite = dataclasses.replace(
            SUITE,
            steps=CPU.TINY["steps"],
            batch_size=CPU.TINY["batch_size"],
            evals=CPU.TINY["evals"],
            shared={**SUITE.shared, **CPU.TINY["shared"]},
        )
    shared = {**CPU.budget(steps or suite.steps, suite.batch_size, suite.evals), **suite.shared}
    (dense,) = recipes(suite.recipe, [suite.preset], ["kind=dense"], shared=shared)
    if tiny:
        dense = shrink(dense)
    seed0 = []
    for name, own in METHODS.items():
        spec = {**dense, "optim.name": name, "optim.lr": LR, **own}
        if tiny:
            spec[f"optim.{name}.update_proj_gap"] = 1
            if name != "apollo_mini":
                spec[f"optim.{name}.rank"] = 4
        seed0.append(spec)
    # Seed-major, as the cpu suites: every method at seed 0 before any at seed 1; the control after seed 0.
    control = [] if tiny else [{**dense, **CONTROL}]
    return seed0 + control + [{**spec, "train.seed": seed} for seed in range(1, seeds) for spec in seed0]
