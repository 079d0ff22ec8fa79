"""The CPU grid on the embedded data: nano LLaMA on Shakespeare and tiny ViT on Fashion-MNIST, each
{dense, SVD, CoLA, TT} x {no crossing, LaX kron} x two ranks (nano 32, 64; tiny 16, 32), dense once.

2 families x (1 + 3 x 2 x 2) = 26 runs of 300 steps at batch 16 (LLaMA: 128-byte windows), evaluated every
100 steps; on a 2-core CPU about 2-5 minutes each. What it is for: the reproduction benchmark (the paper's
comparisons in miniature, offline, on any machine) and a quick end-to-end check of every kind x crossing.

    python scripts/sweep.py --sweep=configs/sweeps/cpu.py --workdir=runs/sweep_cpu [--only=^llama-] \
        [--parallel=2]
    python scripts/compare.py runs/sweep_cpu --out=reports/sweep_cpu

Shorter (the README figure: 4 nano runs of 150 steps at batch 8, ~10 minutes):
    python scripts/sweep.py --sweep=configs/sweeps/cpu.py --workdir=/tmp/sweep_readme \
        --only='^llama-nano_kind=(dense|cola_lax=(none|kron)_rank=64|svd_lax=kron_rank=64)$' \
        --set=train.steps=150 --set=train.batch_size=8 --set=optim.warmup_steps=15 \
        --set=train.eval_every=50 --set=train.checkpoint_every=50

Expected: the low-rank runs have about half the dense non-embedding parameters; at a few hundred steps the
validation losses are close, and LaX (kron) narrows the gap of a low-rank kind to dense at a few % extra cost.
"""

from lax_pretrain.sweep import recipes, variants

KINDS = ("dense", "svd", "cola", "tt")
CROSSINGS = ("none", "kron")

# Every run: a CPU-sized budget (not part of the run names).
SHARED = {
    "train.steps": 300,
    "train.batch_size": 16,
    "train.eval_every": 100,
    "train.checkpoint_every": 100,
    "train.log_every": 10,
    "optim.warmup_steps": 30,
    "data.seq_len": 128,  # LLaMA only; the ViT reads 28x28 images
    "data.eval_batches": 16,
}


def get_sweep():
    return recipes("configs/llama.py", ["nano"], variants(KINDS, CROSSINGS, ranks=(32, 64))) + recipes(
        "configs/vit.py", ["tiny"], variants(KINDS, CROSSINGS, ranks=(16, 32))
    )
