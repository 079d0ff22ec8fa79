"""What a factorization kind and a LaX gate declare, and the registries `kind=` and `crossing=` are looked up in.

A kind is one module: its layer class, its own spec fields (with defaults) and their checks, the width of its
latent, the default per-projection overrides a preset derives from its rank, and which export formats can hold
it; it ends with `register_kind(name, Kind(...))`. Parameter and FLOP counts are the layer's own
(`param_count`, `flops_per_token`), logical axes are on its parameters. A gate is registered the same way with
`register_gate`. Both registries are read at validation time, so a kind or gate defined outside the package
works in every command once its module is imported (`--import=MODULE`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from lax_pretrain.registry import Registry

# Export formats (lax_pretrain.convert) a kind can say it fits: a materialized kernel (LlamaForCausalLM), or
# two factors x A -> B (the authors' CoLA format and ours).
EXPORT_FORMATS = ("hf_llama", "cola", "lax")


def _no_latent(spec: Any) -> None:
    return None


def _no_overrides(rank: int, projection: str, **context: Any) -> dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class Kind:
    """One factorization kind.

    layer: the nnx module class, built as `layer(d_in, d_out, spec, rngs=, axes=, dtype=, param_dtype=, name=)`;
        `__call__(x, latent_in=None) -> (y, latent_or_None)`, `param_count`, `flops_per_token`.
    fields: the spec keys it owns and their defaults (e.g. {'rank': None}); a spec of another kind may carry
        them only at their defaults.
    check: (spec, d_in, d_out, where) -> spec: validates and completes its own fields (raise SpecError naming
        `where.<key>`); runs after the shared fields are checked.
    latent_dim: spec -> the width of its latent, or None when it has none (then it cannot cross).
    latent_act: the default of `latent_act` (CoLA: its definition).
    config_keys: the fields `model.linear` shows by default (None: all of them), so they can be set from the
        command line for every projection.
    overrides: (rank, projection name, **context) -> that projection's `model.proj.<p>` entries for a preset
        built with `kind=<name>, rank=<rank>` (context: what a family passes, e.g. official TT shapes).
    exports: the export formats whose layout can hold it (EXPORT_FORMATS); the exporter refuses the others.
    """

    layer: type
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check: Callable[..., Any] | None = None
    latent_dim: Callable[[Any], int | None] = _no_latent
    latent_act: bool = False
    config_keys: tuple[str, ...] | None = None
    overrides: Callable[..., dict[str, Any]] = _no_overrides
    exports: frozenset[str] = frozenset()

    @property
    def has_latent(self) -> bool:
        return self.latent_dim is not _no_latent

    def shown_fields(self) -> dict[str, Any]:
        keys = self.fields if self.config_keys is None else self.config_keys
        return {k: self.fields[k] for k in keys}


@dataclasses.dataclass(frozen=True)
class Gate:
    """One LaX crossing gate (`crossing=<name>`).

    build: (spec, in_width, width, rngs, param_dtype) -> an nnx module z_NxR_in -> u_NxR with `param_count`
        and `flops_per_token`, or None for a parameter-free crossing (the latent is added as it is).
    same_width: whether it needs the incoming latent to have the layer's own latent width.
    check: (spec, where) -> None: its own checks or warnings on a crossed spec (raise SpecError naming the key).
    """

    build: Callable[..., Any]
    same_width: bool = True
    check: Callable[..., None] | None = None


class SpecError(ValueError):
    """A linear-map spec that cannot be built; the message starts with the offending key."""


KINDS: Registry[Kind] = Registry("factorization kind", SpecError)
GATES: Registry[Gate] = Registry("LaX gate", SpecError)
NO_CROSSING = "none"


def register_kind(name: str, kind: Kind) -> Kind:
    unknown = set(kind.exports) - set(EXPORT_FORMATS)
    if unknown:
        raise ValueError(
            f"kind {name!r}: exports {sorted(unknown)} are not among {', '.join(EXPORT_FORMATS)}"
        )
    return KINDS.register(name, kind)


def register_gate(name: str, gate: Gate) -> Gate:
    if name == NO_CROSSING:
        raise ValueError(f"crossing {NO_CROSSING!r} means no gate and no crossing; pick another name")
    return GATES.register(name, gate)


def crossings() -> tuple[str, ...]:
    """The values `crossing` may take: 'none' and every registered gate."""
    return (NO_CROSSING, *GATES.names())


def kind_field_defaults() -> dict[str, Any]:
    """Every registered kind's own fields with their defaults (a field two kinds share has one default)."""
    out: dict[str, Any] = {}
    for name, kind in KINDS.items():
        for key, default in kind.fields.items():
            if key in out and out[key] != default:
                raise ValueError(
                    f"kind {name!r}: field {key!r} defaults to {default!r}, another kind's to {out[key]!r}"
                )
            out[key] = default
    return out


def linear_config_fields() -> dict[str, Any]:
    """The kind fields `model.linear` carries by default: the union of every kind's `config_keys`."""
    out: dict[str, Any] = {}
    for _, kind in KINDS.items():
        out.update(kind.shown_fields())
    return out
