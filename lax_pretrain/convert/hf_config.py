"""config.json <-> config.model: the LLaMA keys every Hugging Face format here shares (LlamaForCausalLM, the
authors' ColaForCausalLM, whose config extends LlamaConfig, and our LaxLlamaForCausalLM).

Reading is strict: every key is either implemented (mapped, with the values we do not implement refused), a
format's own key (`format_keys`), or known not to change the function (`IGNORED_KEYS`: metadata, token ids,
context length, generation defaults, training-only dropout). Anything else is refused naming the key, since a
silently ignored key may mean different maths.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import ml_collections

from lax_pretrain.config import llama_config

# The LLaMA architecture keys `model_config_from_hf` maps (or refuses values of).
LLAMA_KEYS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "rms_norm_eps",
        "tie_word_embeddings",
        "attention_bias",
        "mlp_bias",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
    }
)
# Kept from a source config.json on export: they describe the tokenizer and context, not the weights.
PASSED_KEYS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "max_position_embeddings",
    "max_sequence_length",
)
IGNORED_KEYS = frozenset(
    {
        *PASSED_KEYS,
        # metadata transformers writes
        "_name_or_path",
        "transformers_version",
        "architectures",
        "model_type",
        "auto_map",
        "dtype",
        "torch_dtype",
        "use_cache",
        "initializer_range",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "id2label",
        "label2id",
        "problem_type",
        "tokenizer_class",
        "sep_token_id",
        "decoder_start_token_id",
        "use_bfloat16",
        "torchscript",
        "tf_legacy_loss",
        # pretraining_tp > 1 splits the same matmuls into slices; dropout acts in training only
        "pretraining_tp",
        "attention_dropout",
        # transformers 4.x configs carry generation defaults
        "max_length",
        "min_length",
        "do_sample",
        "num_beams",
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
    }
)


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """RoPE base; transformers 5 writes `rope_parameters`, older versions `rope_theta` + `rope_scaling`."""
    for key in ("rope_parameters", "rope_scaling"):
        rope = hf.get(key) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(
                f"config.json: {key}.rope_type={rope_type!r} is not supported; only unscaled "
                "RoPE ('default') is implemented"
            )
        if "rope_theta" in rope:
            return float(rope["rope_theta"])
    return float(hf.get("rope_theta", 10000.0))


def reject(hf: Mapping[str, Any], key: str, ok: Collection[Any], why: str) -> None:
    if key in hf and hf[key] not in ok:
        raise ValueError(f"config.json: {key}={hf[key]!r} is not supported: {why}")


def check_keys(hf: Mapping[str, Any], format_keys: Collection[str] = ()) -> None:
    unknown = sorted(set(hf) - LLAMA_KEYS - IGNORED_KEYS - set(format_keys))
    if unknown:
        raise ValueError(
            f"config.json: {unknown[0]!r} is not a key this converter implements for model_type "
            f"{hf.get('model_type')!r}; refusing rather than ignoring what may change the model's function"
        )


def model_config_from_hf(
    hf: Mapping[str, Any],
    *,
    scan_layers: bool = False,
    model_type: str = "llama",
    format_keys: Collection[str] = (),
) -> ml_collections.ConfigDict:
    """config.model (dense projections) for the LLaMA keys of a config.json of `model_type`; the formats
    with factorized projections set `linear` and `proj` afterwards."""
    reject(hf, "model_type", (model_type,), f"this reader reads model_type {model_type!r}")
    check_keys(hf, format_keys)
    reject(hf, "attention_bias", (False, None), "our attention projections have no bias")
    reject(hf, "mlp_bias", (False, None), "our MLP projections have no bias")
    reject(hf, "hidden_act", ("silu",), "the MLP is SwiGLU with SiLU")
    heads = int(hf["num_attention_heads"])
    kv_heads = int(hf.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise ValueError(
            f"config.json: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
        )
    cfg = llama_config("nano").model
    cfg.update(
        dict(
            preset="hf",
            vocab_size=int(hf["vocab_size"]),
            d_model=int(hf["hidden_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
            ffn_dim=int(hf["intermediate_size"]),
            rope_theta=_rope_theta(hf),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            scan_layers=scan_layers,
        )
    )
    return cfg


def hf_config_from_model(model_cfg: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The LLaMA keys of config.json (as LlamaForCausalLM; other formats change architectures and model_type
    and add their keys); `base` (the imported source config) supplies `PASSED_KEYS`, nothing else."""
    hf = {k: base[k] for k in PASSED_KEYS if k in (base or {})}
    hf.setdefault("max_position_embeddings", 2048)
    hf.update(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        vocab_size=model_cfg.vocab_size,
        hidden_size=model_cfg.d_model,
        intermediate_size=model_cfg.ffn_dim,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_kv_heads,
        head_dim=model_cfg.get("head_dim") or model_cfg.d_model // model_cfg.num_heads,
        hidden_act="silu",
        rms_norm_eps=model_cfg.norm_eps,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=model_cfg.tie_embeddings,
        dtype=model_cfg.param_dtype,
        # Both spellings: transformers 5 reads rope_parameters, 4.x reads rope_theta.
        rope_theta=model_cfg.rope_theta,
        rope_parameters={"rope_type": "default", "rope_theta": model_cfg.rope_theta},
    )
    return hf
