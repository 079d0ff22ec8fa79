"""The spec of one linear map: what kind, how crossed, the fields its kind owns. Validated before anything is built.

A spec is given as a dict or ConfigDict (e.g. `config.model.attn`) and normalised into a frozen
`LinearSpec`. Every error names the offending key, prefixed by where the spec lives (`where`), so a bad
`--config.model.mlp.rank=0` is reported as `model.mlp.rank` before any compilation.

The spec keeps the fields every kind shares (kind, crossing, latent norm, activation, init scheme, bias); the
fields of one kind (svd/cola `rank`, the TT shape, ...) are declared by that kind (layers/registry.py) and held
in `own`, read as attributes (`spec.rank`). A field of another kind reads as its default, so code that asks
`spec.intra` of any spec keeps working.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from lax_pretrain.layers.registry import GATES, KINDS, NO_CROSSING, SpecError, crossings, kind_field_defaults

LATENT_NORMS = ("layernorm", "rmsnorm", "none")
ACTIVATIONS = ("silu", "gelu", "relu")
INITS = ("lax", "cola", "tt_variance")
BIAS_INITS = ("zeros", "normal")
KRON_IMPLS = ("auto", "factored", "gemm")


@dataclasses.dataclass(frozen=True)
class LinearSpec:
    """One projection's factorization and crossing.

    kind: a registered factorization kind ('dense', 'svd' (x A B), 'cola' (act(x A) B), 'tt' (tensor-train), or
        one registered from outside the package); its own fields (e.g. `rank`) are in `own`.
    crossing: LaX gate applied to the previous block's latent: 'none' or a registered gate ('identity', 'dense',
        'kron').
    latent_norm: norm over the latent after the crossing (crossing layers only): 'layernorm' | 'rmsnorm' | 'none'.
    activation: the latent activation when one is applied ('silu' for LLaMA, exact 'gelu' for ViT, 'relu').
    latent_act: apply `activation` to the latent (the official `LatentAct`); None = the kind's default (on for
        cola, whose definition it is). svd or tt with latent_act=True are no longer linear maps.
    use_bias: output bias.
    init: 'lax' (official LaX ViT code), 'cola' (official CoLA LLaMA code), 'tt_variance' (variance-correct
        product init: every factor gets std sigma^(1/d) * (prod internal ranks)^(-1/(2d))).
    init_std: dense kernel std ('lax': 0.02 truncated, 'cola': 0.02) or target std sigma of the represented
        matrix for 'tt_variance' (default 1/sqrt(d_in)).
    bias_init: 'zeros', or 'normal' = the official LaX code's N(0, 1) factorized-layer bias (a quirk).
    latent_in_dim: width of the incoming latent (default: this layer's latent width); only a gate that is not
        `same_width` (dense) maps between different widths.
    kron_impl: how the kron gate computes z @ kron(g1, g0): 'factored' (two small contractions), 'gemm' (one
        r x r matmul, the Kronecker product formed once per call) or 'auto' (per shape and backend,
        `layers.crossing.kron_impl_for`). The same parameters and function either way.
    own: the kind's own fields as sorted (key, value) pairs (hashable: a spec is static module metadata).
    """

    kind: str = "dense"
    crossing: str = NO_CROSSING
    latent_norm: str = "layernorm"
    activation: str = "silu"
    latent_act: bool | None = None
    use_bias: bool = False
    init: str = "lax"
    init_std: float | None = None
    bias_init: str = "zeros"
    latent_in_dim: int | None = None
    kron_impl: str = "auto"
    own: tuple[tuple[str, Any], ...] = ()

    def __getattr__(self, name: str) -> Any:
        # Only reached when `name` is not a shared field: the kind's own fields, then any kind's default.
        if name.startswith("__"):
            raise AttributeError(name)
        for key, value in object.__getattribute__(self, "own"):
            if key == name:
                return value
        defaults = kind_field_defaults()
        if name in defaults:
            return defaults[name]
        raise AttributeError(f"LinearSpec has no field {name!r}")

    @property
    def crossed(self) -> bool:
        return self.crossing != NO_CROSSING

    @property
    def is_linear(self) -> bool:
        """Whether the layer is a linear map of its input (so `materialize()` gives its kernel)."""
        return not self.latent_act and not self.intra

    @property
    def latent_dim(self) -> int | None:
        """Width of this layer's latent (None when its kind has none)."""
        return KINDS.get(self.kind, key="kind").latent_dim(self)

    def replace(self, **changes: Any) -> LinearSpec:
        shared = {k: v for k, v in changes.items() if k in SHARED_FIELDS}
        own = dict(self.own)
        own.update({k: v for k, v in changes.items() if k not in SHARED_FIELDS})
        return dataclasses.replace(self, **shared, own=tuple(sorted(own.items())))

    def as_dict(self) -> dict[str, Any]:
        """The flat key -> value form a config holds (shared fields and the kind's own)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "own"}
        out.update(self.own)
        return out


SHARED_FIELDS = {f.name for f in dataclasses.fields(LinearSpec)} - {"own"}


def _as_dict(spec: Any) -> dict[str, Any]:
    if isinstance(spec, LinearSpec):
        return spec.as_dict()
    if hasattr(spec, "to_dict"):  # ml_collections.ConfigDict
        return dict(spec.to_dict())
    if isinstance(spec, Mapping):
        return dict(spec)
    raise SpecError(f"a linear spec must be a dict or ConfigDict, got {type(spec).__name__}")


def _choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(f"{where}.{key}={value!r} is not one of {', '.join(choices)}")


def balanced_factors(n: int) -> tuple[int, int]:
    """The most balanced factor pair (f0, f1) of n with f0 <= f1 (256 -> (16, 16), 336 -> (16, 21))."""
    f0 = max(f for f in range(1, math.isqrt(n) + 1) if n % f == 0)
    return f0, n // f0


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _own_fields(raw: dict[str, Any], kind_name: str, where: str) -> dict[str, Any]:
    """Takes the kind's own fields out of `raw`; a field of another kind may only be at its default."""
    kind = KINDS.get(kind_name, key=f"{where}.kind")
    # Lists (a config's TT modes) become tuples: a spec is hashable module metadata.
    own = {k: _frozen(raw.pop(k, d)) for k, d in kind.fields.items()}
    others = kind_field_defaults()
    for key in sorted(set(raw) - SHARED_FIELDS):
        value = raw.pop(key)
        if key not in others:
            known = sorted(SHARED_FIELDS | set(others))
            raise SpecError(f"{where}.{key} is not a linear-spec key (known: {', '.join(known)})")
        if value is not None and value != others[key] and not (value == () and others[key] in ((), None)):
            owners = [n for n, k in KINDS.items() if key in k.fields]
            raise SpecError(
                f"{where}.{key}={value!r} is a field of kind {' / '.join(map(repr, owners))}, not of {kind_name!r}"
            )
    return own


def validate(spec: Any, d_in: int, d_out: int, *, where: str = "spec") -> LinearSpec:
    """Normalises a dict/ConfigDict into a LinearSpec for a (d_in -> d_out) map, or raises SpecError."""
    raw = _as_dict(spec)
    kind_name = raw.get("kind", "dense")
    own = _own_fields(raw, kind_name, where)
    s = LinearSpec(
        **{k: v for k, v in raw.items() if v is not None or k in ("init_std", "latent_in_dim", "latent_act")},
        own=tuple(sorted(own.items())),
    )

    _choice(where, "crossing", s.crossing, crossings())
    _choice(where, "latent_norm", s.latent_norm, LATENT_NORMS)
    _choice(where, "activation", s.activation, ACTIVATIONS)
    _choice(where, "init", s.init, INITS)
    _choice(where, "bias_init", s.bias_init, BIAS_INITS)
    _choice(where, "kron_impl", s.kron_impl, KRON_IMPLS)
    if d_in < 1 or d_out < 1:
        raise SpecError(f"{where}: a linear map needs positive widths, got {d_in} -> {d_out}")
    if s.latent_act is not None and not isinstance(s.latent_act, bool):
        raise SpecError(f"{where}.latent_act={s.latent_act!r} must be true, false or unset")

    kind = KINDS.get(s.kind, key=f"{where}.kind")
    if not kind.has_latent:
        if s.crossed:
            raise SpecError(
                f"{where}.crossing={s.crossing!r}: a {s.kind} layer has no latent to cross; use 'none'"
            )
        if s.latent_act:
            raise SpecError(f"{where}.latent_act=True: a {s.kind} layer has no latent to activate")
    if s.latent_act is None:
        s = dataclasses.replace(s, latent_act=kind.latent_act)
    if kind.check is not None:
        s = kind.check(s, d_in, d_out, where)

    if s.latent_in_dim is not None and (not isinstance(s.latent_in_dim, int) or s.latent_in_dim < 1):
        raise SpecError(f"{where}.latent_in_dim must be an integer >= 1 (or unset), got {s.latent_in_dim!r}")
    if s.crossed:
        width = s.latent_dim
        in_width = s.latent_in_dim if s.latent_in_dim is not None else width
        if GATES.get(s.crossing, key=f"{where}.crossing").same_width and in_width != width:
            same = [n for n, g in GATES.items() if not g.same_width]
            raise SpecError(
                f"{where}.latent_in_dim={in_width} differs from the latent width {width}: "
                f"crossing {s.crossing!r} needs equal widths (use crossing={' or '.join(map(repr, same))})"
            )
        gate = GATES.get(s.crossing, key=f"{where}.crossing")
        if gate.check is not None:
            gate.check(s, where)
    return s
