"""Every Hugging Face format, one way in and one way out.

    fmt, out = export_checkpoint(model, model_config, "out", format="auto")   # hf_llama | cola | lax
    model, model_config, fmt = load_checkpoint("hf_dir")                     # by config.json model_type

auto (representable.choose_format): dense / svd / tt without crossing -> hf_llama (LlamaForCausalLM,
materialized); CoLA without crossing and one rank -> cola (the authors' ColaForCausalLM); two-factor
projections (cola or svd) with LaX crossing, or anything else the CoLA format lacks -> lax. TT with crossing
or intra-layer LaX has no format and is refused naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from lax_pretrain.convert.cola_checkpoint import MODEL_TYPE as COLA_MODEL_TYPE
from lax_pretrain.convert.cola_checkpoint import export_cola, load_cola
from lax_pretrain.convert.hf_checkpoint import export_hf_llama, load_hf_llama, read_config
from lax_pretrain.convert.lax_checkpoint import MODEL_TYPE as LAX_MODEL_TYPE
from lax_pretrain.convert.lax_checkpoint import export_lax, load_lax
from lax_pretrain.convert.representable import choose_format
from lax_pretrain.models.llama import Llama

EXPORTERS = {"hf_llama": export_hf_llama, "cola": export_cola, "lax": export_lax}
# config.json "model_type" -> (format, reader)
READERS = {
    "llama": ("hf_llama", load_hf_llama),
    COLA_MODEL_TYPE: ("cola", load_cola),
    LAX_MODEL_TYPE: ("lax", load_lax),
}


def export_checkpoint(
    model: Llama,
    model_cfg: Any,
    out_dir: str | Path,
    *,
    format: str = "auto",
    base_config: Mapping[str, Any] | None = None,
) -> tuple[str, Path]:
    """(the format written, out_dir). Refused before anything is written when the format cannot hold the
    model; the directory appears complete or not at all (export_dir.py)."""
    fmt = choose_format(model_cfg, format)
    return fmt, EXPORTERS[fmt](model, model_cfg, out_dir, base_config=base_config)


def load_checkpoint(
    hf_dir: str | Path, *, scan_layers: bool = False
) -> tuple[Llama, ml_collections.ConfigDict, str]:
    """(model, config.model, format) of a Hugging Face directory in any of the formats."""
    model_type = read_config(hf_dir).get("model_type")
    if model_type not in READERS:
        raise ValueError(
            f"{Path(hf_dir) / 'config.json'}: model_type={model_type!r} is not one of {', '.join(READERS)}"
        )
    fmt, reader = READERS[model_type]
    model, model_cfg = reader(hf_dir, scan_layers=scan_layers)
    return model, model_cfg, fmt
