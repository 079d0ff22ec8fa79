"""The CPU grid, on the embedded data, which is also the LaX reproduction at CPU scale: dense vs SVD, CoLA and
tensor-train, each with and without LaX (kron), at the same token / image budget, learning rate and schedule,
every variant at two seeds (the noise level is the largest seed spread). One suite per model family:

  cpu_llama  nano LLaMA (d 256, 4 layers, byte tokenizer) on Shakespeare; perplexity (bytes) on the whole
             validation split.
  cpu_vit    tiny ViT at CPU scale (d 128, 4 layers, 7x7 patches) on Fashion-MNIST, 5 epochs; top-1 on the whole
             test split.

Low-rank variants use one rank for every projection (svd/cola rank, TT latent bond) chosen so that they hold
about half the dense model's non-embedding parameters. Per suite 7 variants x 2 seeds = 14 runs (cpu_llama
about 4 minutes each, 54 in all; cpu_vit 7-9 minutes each, about 110 in all, on an idle 2-core CPU). The
budget (`budget`) and the suite's settings are shared, not in the run names: give another workdir to another
budget.

    python scripts/reproduce.py --suite=cpu_llama --out=docs/benchmarks/reproduce/cpu_llama   # runs + report
    python scripts/sweep.py --sweep=configs/sweeps/cpu.py --workdir=runs/sweep_cpu [--only=^llama-] \
        [--parallel=2]
    python scripts/compare.py runs/sweep_cpu --out=reports/sweep_cpu

Shorter (the README figure: 4 nano runs of 150 steps at batch 8, ~10 minutes):
    python scripts/sweep.py --sweep=configs/sweeps/cpu.py --workdir=/tmp/sweep_readme \
        --only='^llama-nano_kind=(dense|cola_lax=(none|kron)_rank=80|svd_lax=kron_rank=80)$' \
        --set=train.steps=150 --set=train.batch_size=8 --set=optim.warmup_steps=15 \
        --set=train.eval_every=50 --set=train.checkpoint_every=50

`get_sweep(suite=None, seeds=2, steps=None, tiny=False)`: one suite or both, the seeds of every variant
(seed-major: every variant at seed 0 first), a step budget other than the suite's, or the seconds-long smoke
version (the TINY_MODEL of lax_pretrain.experiments.sweep, 2 steps).

Expected (measured 2026-12-01, all 14 runs of each suite; mean of two seeds, noise = largest seed spread):
  cpu_vit    dense 88.05% top-1 (a linear classifier: about 84%); every low-rank variant 1.2-2.0 points below
             it, LaX gain tt +0.77, cola +0.23, svd -0.10 points; noise 0.52 points.
  cpu_llama  dense 6.31 val perplexity; cola + LaX 5.65, cola 6.00, svd + LaX 6.57, tt + LaX 6.70, tt 7.59,
             svd 8.41; LaX gain svd +1.84, tt +0.88, cola +0.35; noise 0.75.
Results and their reading against the papers' claims in docs/benchmarks/reproduce/<suite>/results.md and the
README.
"""

import dataclasses
import math

from lax_pretrain.experiments.sweep import recipes, shrink, variants
from lax_pretrain.layers import KINDS

CROSSINGS = ("none", "kron")


@dataclasses.dataclass(frozen=True)
class Suite:
    recipe: str
    preset: str
    rank: int  # svd/cola rank and TT latent bond of every projection (~2x fewer non-embedding parameters)
    steps: int
    batch_size: int
    evals: int  # evaluations after step 0, evenly spaced, the last at the final step
    shared: dict
    notes: str


SUITES = {
    "cpu_llama": Suite(
        "configs/llama.py",
        "nano",
        rank=80,
        steps=600,
        batch_size=16,
        evals=1,
        # The whole validation split (505,284 bytes: 247 batches of 16 x 128), once, after the last step.
        shared={"data.seq_len": 128, "data.eval_batches": 0, "train.eval_at_start": False},
        notes=(
            "nano LLaMA (d 256, 4 layers, 4 heads, SwiGLU 688, byte vocab 259) on Shakespeare, lr 3e-3 "
            "(preset) with 10% warm-up and cosine decay to 10%, AdamW wd 0.01, clip 0.5. Budget: 1.2M tokens "
            "per run (about 0.27 epoch of the corpus; twice the first reproduction's), about 4 minutes per "
            "run on an idle 2-core CPU; 14 runs with --seeds=2. Perplexity over the whole validation split "
            "(4 held-out works, 505,284 bytes)."
        ),
    ),
    "cpu_vit": Suite(
        "configs/vit.py",
        "tiny",
        rank=40,
        steps=2350,
        batch_size=128,
        evals=5,
        # The small-data recipe (docs/benchmarks/reproduce/README.md): 7x7 patches and 4 blocks buy five
        # epochs in the budget; one learning rate for every variant; flips but no crops or dropout (five
        # epochs of 60,000 images do not overfit a 0.8M-parameter model).
        shared={
            "model.patch_size": 7,
            "model.num_layers": 4,
            "model.dropout": 0.0,
            "optim.lr": 1e-3,
            "data.crop": "none",
        },
        notes=(
            "tiny ViT at CPU scale (d 128, 4 layers, 4 heads, MLP 512, 7x7 patches: 16 + 1 tokens) on "
            "Fashion-MNIST with flips (no crops, no dropout); lr 1e-3 for every variant, 10% warm-up, cosine "
            "to 0, AdamW wd 0.3 on matrices (the LaX recipe's), clip 1.0. Budget: 5 epochs (2,350 steps x "
            "128 = 300,800 images per run), 7-9 minutes per run on an idle 2-core CPU (about 110 minutes "
            "for the 14 runs of --seeds=2). Top-1 on the whole 10,000-image test split."
        ),
    ),
}
# The smoke version of every suite: the sweep's TINY_MODEL, 2 steps at batch 8, one evaluation batch.
TINY = {"steps": 2, "batch_size": 8, "evals": 1, "shared": {"data.seq_len": 32, "data.eval_batches": 1}}


def budget(steps: int, batch_size: int, evals: int) -> dict:
    """The settings a step budget implies; W&B off (the reports are the record)."""
    eval_every = max(math.ceil(steps / max(evals, 1)), 1)
    return {
        "train.steps": steps,
        "train.batch_size": batch_size,
        "train.log_every": max(steps // 20, 1),
        "train.eval_every": eval_every,
        "train.checkpoint_every": eval_every,
        "train.keep_checkpoints": 1,
        "train.grad_accum": 1,
        "optim.warmup_steps": max(steps // 10, 1),
        "wandb.mode": "disabled",
    }


def get_sweep(suite: str | None = None, seeds: int = 2, steps: int | None = None, tiny: bool = False):
    if suite is not None and suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    specs = []
    for name, s in SUITES.items():
        if suite not in (None, name):
            continue
        if tiny:
            s = dataclasses.replace(
                s,
                steps=TINY["steps"],
                batch_size=TINY["batch_size"],
                evals=TINY["evals"],
                shared={**s.shared, **TINY["shared"]},
            )
        shared = {**budget(steps or s.steps, s.batch_size, s.evals), **s.shared}
        seed0 = recipes(
            s.recipe, [s.preset], variants(KINDS.names(), CROSSINGS, ranks=(s.rank,)), shared=shared
        )
        if tiny:
            seed0 = [shrink(spec) for spec in seed0]
        # Seed-major: an interrupted suite has every variant at its first seeds before any at the next one.
        specs += seed0 + [{**spec, "train.seed": seed} for seed in range(1, seeds) for spec in seed0]
    return specs
