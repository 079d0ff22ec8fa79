"""ViT pretraining: dense, SVD, CoLA or tensor-train projections, with or without LaX (the LaX ViT recipe).

Compact argument (lax_pretrain/config.py; the keywords of `vit_config`):
    PRESET[,kind=dense|svd|cola|tt][,lax=none|identity|dense|kron][,rank=R][,intra=0|1|gate][,norm=...]
          [,init=lax|cola|tt_variance][,act=...][,latent_act=0|1][,scan=0|1][,remat=...][,precision=fp32|bf16]
Presets: tiny (ours: CPU, Fashion-MNIST 28x28x1, patch 4), s16, b16, l16 (ImageNet-1k 224, patch 16).
B16/L16 TT shapes are the official LaX ones (attention [32, 24 | 24, 32], ranks [1, 32, 336, 32, 1], ...);
TT + LaX switches intra-layer LaX on for q, k, v, o as the authors' TT + LaX configs do (intra=0: off).
Every default and its source: lax-params --config=configs/vit.py:l16,kind=tt,lax=kron --recipe

Train on CPU (Fashion-MNIST from Debian's dataset-fashion-mnist):
    lax-train --config=configs/vit.py:tiny,kind=cola,lax=kron --workdir=runs/vit_tiny
Train the paper's ViT-B/16 CoLA + LaX on ImageNet (TFDS imagenet2012 prepared as array_record):
    lax-train --config=configs/vit.py:b16,kind=cola,lax=kron --workdir=runs/b16_cola_kron \
        --config.data.data_dir=$TFDS_DATA_DIR
Expected (LaX paper): low-rank + LaX matches full-rank ViT-B top-1 with 44.2M instead of 86.6M parameters.
"""

from lax_pretrain.config import from_compact


def get_config(arg: str | None = None):
    return from_compact("vit", arg or "tiny")
