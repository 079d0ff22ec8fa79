"""Weight conversion: Hugging Face LLaMA import/export and dense -> low-rank (SVD / TT-SVD) initialisation.

    model, model_config = load_hf_llama(hf_dir)
    model, model_config, report = to_low_rank(model, model_config, kind="svd", rank=64)
    export_hf_llama(model, model_config, out_dir)      # dense, svd or tt models (materialized)

Command line: `python -m lax_pretrain.convert.hf_llama import|export ...` (see hf_llama's docstring).
"""

from lax_pretrain.convert.hf_llama import (export_hf_llama, load_hf_llama, load_imported,
                                           model_config_from_hf, save_imported)
from lax_pretrain.convert.low_rank import to_low_rank

__all__ = ["export_hf_llama", "load_hf_llama", "load_imported", "model_config_from_hf", "save_imported",
           "to_low_rank"]
