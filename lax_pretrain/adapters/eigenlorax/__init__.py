"""EigenLoRAx: recycle N LoRA adapters into per-module principal subspaces; new tasks train only loadings.

Row-vector convention throughout: a LoRA delta is (x A) B with A (d_in, r), B (r, d_out) and the LoRA scale
alpha/r already folded into B. An *adapter* is a dict module path -> (A, B).

basis.py: fit the shared subspace (`fit_basis`, `choose_k`, `augment`) and move known adapters in and out of
it (`project`, `reconstruct`); loadings.py: one task's `Loadings` and their one initialiser; module.py: the
layers (`EigenLoRA`, `EigenLoRALinear`); serving.py: many tasks from one basis (`MultiTaskEigenLoRA`).
Files: lax_pretrain/adapters/io.py (re-exported here).
"""

from lax_pretrain.adapters.eigenlorax.basis import (
    Basis,
    augment,
    choose_k,
    fit_basis,
    lora_factors,
    project,
    reconstruct,
)
from lax_pretrain.adapters.eigenlorax.loadings import (
    INIT_SCALE,
    Loadings,
    init_loadings,
    uniform_loadings,
    zero_b_loadings,
)
from lax_pretrain.adapters.eigenlorax.module import EigenLoRA, EigenLoRALinear, Frozen, eigenlora_delta
from lax_pretrain.adapters.eigenlorax.serving import (
    MultiTaskEigenLoRA,
    lora_serving_bytes,
    serve_delta,
    serving_bytes,
)
from lax_pretrain.adapters.io import load_basis, load_loadings, save_basis, save_loadings
from lax_pretrain.adapters.signature import Adapter, Signature, adapter_signature

__all__ = [
    "INIT_SCALE",
    "Adapter",
    "Basis",
    "EigenLoRA",
    "EigenLoRALinear",
    "Frozen",
    "Loadings",
    "MultiTaskEigenLoRA",
    "Signature",
    "adapter_signature",
    "augment",
    "choose_k",
    "eigenlora_delta",
    "fit_basis",
    "init_loadings",
    "load_basis",
    "load_loadings",
    "lora_factors",
    "lora_serving_bytes",
    "project",
    "reconstruct",
    "save_basis",
    "save_loadings",
    "serve_delta",
    "serving_bytes",
    "uniform_loadings",
    "zero_b_loadings",
]
