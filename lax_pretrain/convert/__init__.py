"""Weight conversion: Hugging Face import/export (LlamaForCausalLM, the authors' CoLA format, our LaX format)
and dense -> low-rank (SVD / TT-SVD) initialisation.

    from lax_pretrain.convert import export_checkpoint, load_checkpoint, load_hf_llama, to_low_rank
    model, model_config, fmt = load_checkpoint(hf_dir)          # by config.json model_type: llama, cola, lax_llama
    model, model_config, report = to_low_rank(model, model_config, kind="svd", rank=64)
    fmt, out = export_checkpoint(model, model_config, out_dir)   # auto: hf_llama, cola or lax (docs/interop.md)

Modules import one way: weights (parameters <-> arrays) and representable (which format holds a config) <-
hf_config (config.json keys) <- hf_checkpoint (LlamaForCausalLM) <- factor_layout (the CoLA tensor layout) <-
cola_checkpoint <- lax_checkpoint <- formats; low_rank and workdir (the hand-over to training) beside them;
hf_llama, the command line (`lax-convert import|export`), uses them all and is not imported here, so
`python -m lax_pretrain.convert.hf_llama` runs it once. modeling_lax_llama.py is PyTorch code that exports copy
into LaX directories; nothing here imports it.
"""

from lax_pretrain.convert.cola_checkpoint import export_cola, load_cola
from lax_pretrain.convert.formats import export_checkpoint, load_checkpoint
from lax_pretrain.convert.hf_checkpoint import export_hf_llama, load_hf_llama
from lax_pretrain.convert.hf_config import model_config_from_hf
from lax_pretrain.convert.lax_checkpoint import export_lax, load_lax
from lax_pretrain.convert.low_rank import to_low_rank
from lax_pretrain.convert.representable import choose_format
from lax_pretrain.convert.workdir import load_imported, save_imported

__all__ = [
    "choose_format",
    "export_checkpoint",
    "export_cola",
    "export_hf_llama",
    "export_lax",
    "load_checkpoint",
    "load_cola",
    "load_hf_llama",
    "load_imported",
    "load_lax",
    "model_config_from_hf",
    "save_imported",
    "to_low_rank",
]
