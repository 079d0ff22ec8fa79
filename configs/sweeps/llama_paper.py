"""The LaX paper's LLaMA grid on C4: 60M, 130M, 350M, 1B x {dense, SVD, CoLA, TT} x {no crossing, LaX kron}.

Dense has no latent to cross, so it runs once per scale: 4 scales x (1 + 3 kinds x 2 crossings) = 28 runs,
each with its preset's published recipe (steps, batch 512 x 256 tokens, lr, warmup; configs/llama.py).
What it is for: the paper's main table (C4 validation perplexity vs parameters, low-rank + LaX against dense).

    python scripts/sweep.py --sweep=configs/sweeps/llama_paper.py --workdir=runs/llama_paper \
        --set=data.data_dir=$TFDS_DATA_DIR --set=data.tokenizer=/path/to/t5/spiece.model \
        [--only='llama-60m_'] [--launcher=tpu|slurm --launcher_args='...'] [--dry_run]
    python scripts/compare.py runs/llama_paper --out=reports/llama_paper

Expected (published C4 validation perplexity, 60M / 130M / 350M / 1B): full rank 34.06 / 25.08 / 18.80 /
15.56; CoLA 34.04 (60M) and 15.52 (1B); LaX: low-rank + LaX matches full rank with 2-3x fewer parameters.
"""

from lax_pretrain.experiments.sweep import recipes, variants
from lax_pretrain.layers import KINDS

SCALES = ("60m", "130m", "350m", "1b")


def get_sweep():
    return recipes("configs/llama.py", SCALES, variants(KINDS.names(), ("none", "kron")))
