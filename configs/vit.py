"""ViT pretraining: dense, SVD, CoLA or tensor-train projections, with or without LaX.

Compact argument: PRESET[,kind=dense|svd|cola|tt][,lax=none|identity|dense|kron][,rank=R][,intra=0|1]...
Presets: tiny (CPU, Fashion-MNIST 28x28x1, patch 4), s16, b16, l16 (ImageNet-1k 224, patch 16).
B16/L16 TT shapes are the official LaX ones (attention [32, 24 | 24, 32], ranks [1, 32, 336, 32, 1], ...).

Train on CPU (Fashion-MNIST from Debian's dataset-fashion-mnist):
    python -m lax_pretrain.train --config=configs/vit.py:tiny,kind=cola,lax=kron --workdir=runs/vit_tiny
Train the paper's ViT-B/16 CoLA + LaX on ImageNet (TFDS imagenet2012 prepared as array_record):
    python -m lax_pretrain.train --config=configs/vit.py:b16,kind=cola,lax=kron --workdir=runs/b16_cola_kron \
        --config.data.data_dir=$TFDS_DATA_DIR
Expected (LaX paper): low-rank + LaX matches full-rank ViT-B top-1 with 44.2M instead of 86.6M parameters.
"""

from lax_pretrain.config import from_compact


def get_config(arg: str | None = None):
    return from_compact("vit", arg or "tiny")
