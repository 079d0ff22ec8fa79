"""The CPU grid, on the embedded data, which is also the LaX reproduction at CPU scale: dense vs SVD, CoLA and
tensor-train, each with and without LaX (kron), at the same token / image budget and seed, plus more seeds of
dense and of cola+kron to show the noise level. One suite per model family:

  cpu_llama  nano LLaMA (d 256, 4 layers, byte tokenizer) on Shakespeare; validation perplexity (bytes).
  cpu_vit    tiny ViT (d 128, 6 layers, 4x4 patches, dropout 0) on Fashion-MNIST; test top-1.

Low-rank variants use one rank for every projection (svd/cola rank, TT latent bond) chosen so that they hold
about half the dense model's non-embedding parameters. 2 suites x (7 variants + 2 noise seeds) = 18 runs,
about 6 minutes each on an idle 2-core CPU. The budget (`budget`) and the suite's settings are shared, not in
the run names: give another workdir to another budget.

    python scripts/reproduce.py --suite=cpu_llama --out=docs/benchmarks/reproduce/cpu_llama   # runs + report
    python scripts/sweep.py --sweep=configs/sweeps/cpu.py --workdir=runs/sweep_cpu [--only=^llama-] \
        [--parallel=2]
    python scripts/compare.py runs/sweep_cpu --out=reports/sweep_cpu

Shorter (the README figure: 4 nano runs of 150 steps at batch 8, ~10 minutes):
    python scripts/sweep.py --sweep=configs/sweeps/cpu.py --workdir=/tmp/sweep_readme \
        --only='^llama-nano_kind=(dense|cola_lax=(none|kron)_rank=80|svd_lax=kron_rank=80)$' \
        --set=train.steps=150 --set=train.batch_size=8 --set=optim.warmup_steps=15 \
        --set=train.eval_every=50 --set=train.checkpoint_every=50

`get_sweep(suite=None, seeds_noise=2, steps=None, tiny=False)`: one suite or both, the seeds of the noise
variants (every other variant: seed 0), a step budget other than the suite's, or the seconds-long smoke
version (the TINY_MODEL of lax_pretrain.experiments.sweep, 2 steps).

Expected: at half the parameters LaX improves every factorization by several times the seed noise; results and
their reading in docs/benchmarks/reproduce/ and the README.
"""

import dataclasses
import math

from lax_pretrain.experiments.sweep import make_run, recipes, shrink, variants

KINDS = ("dense", "svd", "cola", "tt")
CROSSINGS = ("none", "kron")
NOISE_VARIANTS = ("dense", "cola+kron")


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
        steps=300,
        batch_size=16,
        evals=3,
        shared={"data.seq_len": 128, "data.eval_batches": 8},
        notes=(
            "nano LLaMA (d 256, 4 layers, 4 heads, SwiGLU 688, byte vocab 259) on Shakespeare, lr 3e-3 "
            "(preset) with 10% warm-up and cosine decay to 10%, AdamW wd 0.01, clip 0.5. Budget: ~0.6M "
            "tokens per run (about 0.1 epoch of the corpus), about 6 minutes per run on an idle 2-core CPU; "
            "9 runs with --seeds_noise=2. Perplexity over the first 8 x 16 x 128 validation tokens."
        ),
    ),
    "cpu_vit": Suite(
        "configs/vit.py",
        "tiny",
        rank=40,
        steps=450,
        batch_size=64,
        evals=2,
        # At about half an epoch there is no overfitting for dropout to regularise: it would only add noise.
        shared={"model.dropout": 0.0, "data.eval_batches": 40},
        notes=(
            "tiny ViT (d 128, 6 layers, 4 heads, MLP 512, 4x4 patches: 49 + 1 tokens) on Fashion-MNIST with "
            "pad-and-crop + flip, dropout 0 (half an epoch); lr 3e-3 dense / 1e-3 low-rank (the LaX "
            "recipe), 10% warm-up, cosine to 0, wd 0.3 on matrices. Budget: 28,800 images per run (about "
            "half an epoch), about 6 minutes per run on an idle 2-core CPU; 9 runs with --seeds_noise=2. "
            "Top-1 on the first 40 x 64 = 2,560 test images (the validation metric of the reports)."
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


def get_sweep(suite: str | None = None, seeds_noise: int = 2, steps: int | None = None, tiny: bool = False):
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
        seed0 = recipes(s.recipe, [s.preset], variants(KINDS, CROSSINGS, ranks=(s.rank,)), shared=shared)
        if tiny:
            seed0 = [shrink(spec) for spec in seed0]
        noisy = [spec for spec in seed0 if make_run(spec).variant in NOISE_VARIANTS]
        specs += seed0 + [{**spec, "train.seed": seed} for seed in range(1, seeds_noise) for spec in noisy]
    return specs
