"""LLaMA pretraining: dense, SVD, CoLA or tensor-train projections, with or without LaX.

Compact argument: PRESET[,kind=dense|svd|cola|tt][,lax=none|identity|dense|kron][,rank=R][,intra=0|1]
                  [,norm=...][,init=...][,scan=0|1][,remat=none|full|cola_m][,dtype=float32|bfloat16]
Presets: nano (CPU, Shakespeare, byte tokenizer), 60m, 130m, 350m, 1b, 7b (C4, vocab 32000).

Train (CPU, the quickstart; ~10 min on 2 cores):
    python -m lax_pretrain.train --config=configs/llama.py:nano,kind=cola,lax=kron --workdir=runs/nano_cola_kron
Train the paper's 60M CoLA + LaX on C4 (TFDS c4/en prepared as array_record; T5 SentencePiece model):
    python -m lax_pretrain.train --config=configs/llama.py:60m,kind=cola,lax=kron --workdir=runs/60m_cola_kron \
        --config.data.data_dir=$TFDS_DATA_DIR --config.data.tokenizer=/path/to/t5/spiece.model
Expected (published, C4 validation perplexity after 1.3B tokens): full-rank 34.06, CoLA 34.04 (60M);
LaX reports low-rank + LaX matching full rank. Parameter totals: 58.07M dense, 42.77M CoLA/SVD (60M).
"""

from lax_pretrain.config import from_compact


def get_config(arg: str | None = None):
    return from_compact("llama", arg or "nano")
