"""Weight conversion: Hugging Face LLaMA import/export and dense -> low-rank (SVD / TT-SVD) initialisation.

    from lax_pretrain.convert import load_hf_llama, to_low_rank, export_hf_llama
    model, model_config = load_hf_llama(hf_dir)
    model, model_config, report = to_low_rank(model, model_config, kind="svd", rank=64)
    export_hf_llama(model, model_config, out_dir)      # dense, svd or tt models (materialized)

Command line: `python -m lax_pretrain.convert.hf_llama import|export ...` (see hf_llama's docstring).
"""

import importlib
from typing import Any

# Resolved on first use, so `python -m lax_pretrain.convert.hf_llama` does not import that module twice.
_EXPORTS = {"export_hf_llama": "hf_llama", "load_hf_llama": "hf_llama", "load_imported": "hf_llama",
            "model_config_from_hf": "hf_llama", "save_imported": "hf_llama", "to_low_rank": "low_rank"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
