"""LLaMA pretraining: dense, SVD, CoLA or tensor-train projections, with or without LaX (the CoLA recipe).

Compact argument (lax_pretrain/config.py; the keywords of `llama_config`):
    PRESET[,kind=dense|svd|cola|tt][,lax=none|identity|dense|kron][,rank=R][,intra=0|1|gate][,norm=...]
          [,init=...][,act=silu|gelu|relu][,latent_act=0|1][,scan=0|1][,remat=none|full|cola_m]
          [,dtype=float32|bfloat16][,precision=fp32|bf16][,only_lr_act=0|1]
Presets: nano (ours: CPU, Shakespeare, byte tokenizer), 60m, 130m, 350m, 1b, 7b (C4, vocab 32000).
Every default and its source: lax-params --config=configs/llama.py:60m,kind=cola --recipe

Train (CPU, the quickstart model; 500 steps at batch 16 x 128 bytes take ~4 min on 2 cores):
    lax-train --config=configs/llama.py:nano,kind=cola,lax=kron --workdir=runs/nano_cola_kron
Train the paper's 60M CoLA + LaX on C4 (TFDS c4/en prepared as array_record; T5 SentencePiece model), in the
authors' pure-bf16 mode:
    lax-train --config=configs/llama.py:60m,kind=cola,lax=kron,precision=bf16 --workdir=runs/60m_cola_kron \
        --config.data.data_dir=$TFDS_DATA_DIR --config.data.tokenizer=/path/to/t5/spiece.model
Expected (published, C4 validation perplexity after 1.3B tokens): full-rank 34.06, CoLA 34.04 (60M);
LaX reports low-rank + LaX matching full rank. Parameter totals: 58.07M dense, 42.77M CoLA/SVD (60M).
"""

from lax_pretrain.config import from_compact


def get_config(arg: str | None = None):
    return from_compact("llama", arg or "nano")
