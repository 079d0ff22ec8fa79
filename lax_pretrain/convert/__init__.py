"""Weight conversion: Hugging Face LLaMA import/export and dense -> low-rank (SVD / TT-SVD) initialisation.

    from lax_pretrain.convert import load_hf_llama, to_low_rank, export_hf_llama
    model, model_config = load_hf_llama(hf_dir)
    model, model_config, report = to_low_rank(model, model_config, kind="svd", rank=64)
    export_hf_llama(model, model_config, out_dir)      # dense, svd or tt models (materialized)

Modules import one way: weights (parameters <-> arrays) <- hf_checkpoint, low_rank; workdir (the hand-over
to training) stands alone; hf_llama, the command line (`lax-convert import|export`), uses them all and is
not imported here, so `python -m lax_pretrain.convert.hf_llama` runs it once.
"""

from lax_pretrain.convert.hf_checkpoint import export_hf_llama, load_hf_llama, model_config_from_hf
from lax_pretrain.convert.low_rank import to_low_rank
from lax_pretrain.convert.workdir import load_imported, save_imported

__all__ = [
    "export_hf_llama",
    "load_hf_llama",
    "load_imported",
    "model_config_from_hf",
    "save_imported",
    "to_low_rank",
]
