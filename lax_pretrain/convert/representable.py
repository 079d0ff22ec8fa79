"""Which export format can hold a model: one check per format, each raising one line that names the config key,
and the `auto` choice. Checks read config.model alone, so a refusal comes before any weight is read or written.

    hf_llama  LlamaForCausalLM: every projection one linear map (dense, svd, tt materialized), no crossing
    cola      the authors' ColaForCausalLM: silu(x A) B in every projection, one rank, no crossing
    lax       our LaxLlamaForCausalLM: x A -> [+ gate(previous latent), latent norm] -> [act] -> B (svd or cola)

The checks look at the spec of a block >= 1 (block 0 is always built uncrossed). A key is named where it is
set: `model.proj.<p>.<key>` when the projection overrides it, else `model.linear.<key>`.
"""

from __future__ import annotations

from typing import Any

from lax_pretrain.layers import KINDS, LinearSpec, validate
from lax_pretrain.models import get_task
from lax_pretrain.models.llama import PROJECTIONS, Llama, head_dim
from lax_pretrain.models.projections import projection_spec

FORMATS = ("hf_llama", "cola", "lax")
# The gates the lax format's PyTorch modeling file implements (modeling_lax_llama.py).
LAX_FORMAT_CROSSINGS = ("none", "identity", "dense", "kron")
# Spec fields that change a two-factor projection's function; the cola and lax formats hold one value of each
# for every projection (the rank may differ per projection in lax).
FUNCTION_FIELDS = ("kind", "crossing", "latent_norm", "activation", "latent_act", "use_bias")


def config_key(model_cfg: Any, name: str, key: str) -> str:
    """Where projection `name`'s `key` is set in the config."""
    overrides = (model_cfg.get("proj") or {}).get(name) or {}
    return f"model.proj.{name}.{key}" if key in overrides else f"model.linear.{key}"


def projection_widths(model_cfg: Any) -> dict[str, tuple[int, int]]:
    d, f, e = model_cfg.d_model, model_cfg.ffn_dim, head_dim(model_cfg)
    q, kv = model_cfg.num_heads * e, model_cfg.num_kv_heads * e
    return {
        "q": (d, q),
        "k": (d, kv),
        "v": (d, kv),
        "o": (q, d),
        "gate": (d, f),
        "up": (d, f),
        "down": (f, d),
    }


def later_specs(model_cfg: Any) -> dict[str, LinearSpec]:
    """The validated spec of each projection in blocks 1..L-1 (what the config asks for)."""
    if get_task(model_cfg).model_class is not Llama:
        raise ValueError(f"model.family={model_cfg.get('family')!r}: only LLaMA models convert")
    widths = projection_widths(model_cfg)
    return {
        n: validate(projection_spec(model_cfg, n, first=False), *widths[n], where=f"model.proj.{n}")
        for n in PROJECTIONS
    }


def crossed(model_cfg: Any, spec: LinearSpec) -> bool:
    return spec.crossed and model_cfg.num_layers > 1


def _key(model_cfg: Any, name: str, key: str, spec: LinearSpec) -> str:
    return f"{config_key(model_cfg, name, key)}={getattr(spec, key)!r}"


def exports(spec: LinearSpec, fmt: str) -> bool:
    """Whether the projection's kind says `fmt`'s layout can hold it (its registered `exports`)."""
    return fmt in KINDS.get(spec.kind, key="kind").exports


def _unfactored_crossing(model_cfg: Any, name: str, spec: LinearSpec) -> ValueError:
    return ValueError(
        f"{_key(model_cfg, name, 'kind', spec)} with {_key(model_cfg, name, 'crossing', spec)} cannot be "
        "written as a Hugging Face checkpoint: LlamaForCausalLM has no latent to cross, and the cola and lax "
        f"formats hold two factors per projection (cola_a, cola_b), which kind {spec.kind!r} does not have"
    )


def check_linear(model_cfg: Any) -> None:
    """hf_llama: raises unless every projection is one linear map (a kernel), i.e. the model has a dense
    equivalent."""
    specs = later_specs(model_cfg)
    if model_cfg.only_lr_act:
        raise ValueError("model.only_lr_act=True drops the SwiGLU's SiLU: no LLaMA equivalent")
    for name, spec in specs.items():
        if not exports(spec, "hf_llama"):
            raise ValueError(
                f"{_key(model_cfg, name, 'kind', spec)} is not a linear map with a kernel to materialize (its "
                "kind's `exports`; CoLA's latent activation is nonlinear), so it has no dense weight to export "
                "as LlamaForCausalLM"
            )
        if spec.use_bias:
            raise ValueError(
                f"{config_key(model_cfg, name, 'use_bias')}=True: LLaMA projections have no bias"
            )
        if crossed(model_cfg, spec):
            if not (exports(spec, "lax") or exports(spec, "cola")):
                raise _unfactored_crossing(model_cfg, name, spec)
            raise ValueError(
                f"{_key(model_cfg, name, 'crossing', spec)}: LaX crossing feeds the previous block's latent "
                "in, which LlamaForCausalLM cannot express (the lax format can)"
            )
        if spec.intra:
            raise ValueError(
                f"{config_key(model_cfg, name, 'intra')}=True: intra-layer LaX makes the map differ from "
                "its materialized kernel"
            )
        if spec.latent_act:
            raise ValueError(
                f"{config_key(model_cfg, name, 'latent_act')}=True: an activation on the latent is "
                "nonlinear, so the projection has no dense weight to export as LlamaForCausalLM"
            )


def _two_factor_specs(model_cfg: Any, fmt: str) -> dict[str, LinearSpec]:
    """The specs, if every projection is x A -> ... -> B with the same function fields."""
    specs = later_specs(model_cfg)
    for name, spec in specs.items():
        if spec.intra:
            raise ValueError(
                f"{config_key(model_cfg, name, 'intra')}=True: TT intra-layer LaX cannot be written as a "
                f"Hugging Face checkpoint (the {fmt} format holds two factors per projection, not TT cores)"
            )
        if not exports(spec, fmt):
            if crossed(model_cfg, spec):
                raise _unfactored_crossing(model_cfg, name, spec)
            also = " (export it as hf_llama)" if exports(spec, "hf_llama") else ""
            raise ValueError(
                f"{_key(model_cfg, name, 'kind', spec)} cannot be written in the {fmt} format, which holds "
                f"two factors per projection (cola_a, cola_b){also}"
            )
        if fmt == "lax" and spec.crossing not in LAX_FORMAT_CROSSINGS:
            raise ValueError(
                f"{_key(model_cfg, name, 'crossing', spec)}: the lax format's modeling file implements the "
                f"crossings {', '.join(LAX_FORMAT_CROSSINGS)} only"
            )
        if spec.use_bias:
            raise ValueError(
                f"{config_key(model_cfg, name, 'use_bias')}=True: the {fmt} format has no projection biases"
            )
        if spec.latent_in_dim not in (None, spec.latent_dim):
            raise ValueError(
                f"{_key(model_cfg, name, 'latent_in_dim', spec)}: the {fmt} format crosses latents of "
                "the projection's own width"
            )
    first, ref = next(iter(specs.items()))
    for name, spec in specs.items():
        for field in FUNCTION_FIELDS:
            if getattr(spec, field) != getattr(ref, field):
                raise ValueError(
                    f"{_key(model_cfg, name, field, spec)} differs from {_key(model_cfg, first, field, ref)}: "
                    f"the {fmt} format has one value for every projection"
                )
    return specs


def check_cola(model_cfg: Any) -> dict[str, LinearSpec]:
    """cola: silu(x A) B everywhere with one rank, uncrossed. Returns the specs."""
    specs = _two_factor_specs(model_cfg, "cola")
    name, spec = next(iter(specs.items()))
    if crossed(model_cfg, spec):
        raise ValueError(
            f"{_key(model_cfg, name, 'crossing', spec)}: the authors' CoLA format has no LaX crossing "
            "(the lax format has)"
        )
    if not spec.latent_act or spec.activation != "silu":
        what = f"activation={spec.activation!r}" if spec.latent_act else "latent_act=False (svd)"
        raise ValueError(
            f"{config_key(model_cfg, name, 'latent_act' if not spec.latent_act else 'activation')}: "
            f"{what} cannot be written in the CoLA format, whose factor layers apply SiLU to the latent"
        )
    for other, s in specs.items():
        if s.rank != spec.rank:
            raise ValueError(
                f"{_key(model_cfg, other, 'rank', s)} differs from {_key(model_cfg, name, 'rank', spec)}: "
                "the CoLA format has one rank for every projection"
            )
    return specs


def check_lax(model_cfg: Any) -> dict[str, LinearSpec]:
    """lax: two factors per projection (svd or cola), any crossing, latent norm and per-projection rank."""
    return _two_factor_specs(model_cfg, "lax")


CHECKS = {"hf_llama": check_linear, "cola": check_cola, "lax": check_lax}


def choose_format(model_cfg: Any, requested: str = "auto") -> str:
    """`requested` if it can hold the model (else its check's error); `auto`: the first of hf_llama, cola,
    lax that can, so plain models stay LlamaForCausalLM and the authors' format is used where it fits."""
    if requested != "auto":
        if requested not in CHECKS:
            raise ValueError(f"--format={requested!r} is not one of auto, {', '.join(FORMATS)}")
        CHECKS[requested](model_cfg)
        return requested
    errors = {}
    for fmt in FORMATS:
        try:
            CHECKS[fmt](model_cfg)
            return fmt
        except ValueError as e:
            errors[fmt] = e
    # The reason of the format closest to the model: LlamaForCausalLM for linear kinds, else lax.
    linear = all(not exports(s, "lax") for s in later_specs(model_cfg).values())
    raise errors["hf_llama" if linear else "lax"]
