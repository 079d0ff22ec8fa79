"""The LaX paper's ViT grid on ImageNet-1k: ViT-B/16, ViT-L/16 x {dense, SVD, CoLA, TT} x {none, LaX kron}.

Dense has no latent to cross, so it runs once per size: 2 sizes x (1 + 3 kinds x 2 crossings) = 14 runs, each
with the official LaX recipe (300 epochs at batch 1024, lr 3e-3 dense / 1e-3 low-rank, wd 0.3, mixup 0.2,
label smoothing 0.1) and the official TT shapes (configs/vit.py). What it is for: the paper's ViT table
(top-1 vs parameters).

    python scripts/sweep.py --sweep=configs/sweeps/vit_paper.py --workdir=runs/vit_paper \
        --set=data.data_dir=$TFDS_DATA_DIR [--launcher=tpu|slurm --launcher_args='...'] [--dry_run]
    python scripts/compare.py runs/vit_paper --out=reports/vit_paper

Expected (LaX paper): low-rank + LaX matches the full-rank ViT-B top-1 with 44.2M instead of 86.6M parameters.
"""

from lax_pretrain.experiments.sweep import recipes, variants
from lax_pretrain.layers import KINDS

SIZES = ("b16", "l16")


def get_sweep():
    return recipes("configs/vit.py", SIZES, variants(KINDS.names(), ("none", "kron")))
