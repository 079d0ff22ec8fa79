"""The spec of one linear map: what kind, how factorized, how crossed. Validated before anything is built.

A spec is given as a dict or ConfigDict (e.g. `config.model.attn`) and normalised into a frozen
`LinearSpec`. Every error names the offending key, prefixed by where the spec lives (`where`), so a bad
`--config.model.mlp.rank=0` is reported as `model.mlp.rank` before any compilation.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

KINDS = ("dense", "svd", "cola", "tt")
CROSSINGS = ("none", "identity", "dense", "kron")
LATENT_NORMS = ("layernorm", "rmsnorm", "none")
ACTIVATIONS = ("silu", "gelu", "relu")
INITS = ("lax", "cola", "tt_variance")
BIAS_INITS = ("zeros", "normal")
TT_ORDERS = ("auto", "factor_first", "sequential")
KRON_IMPLS = ("auto", "factored", "gemm")


class SpecError(ValueError):
    """A linear-map spec that cannot be built; the message starts with the offending key."""


@dataclasses.dataclass(frozen=True)
class LinearSpec:
    """One projection's factorization and crossing.

    kind: 'dense' | 'svd' (x A B) | 'cola' (act(x A) B) | 'tt' (tensor-train, input modes then output modes).
    rank: latent width r of svd/cola; for tt without explicit modes, the latent bond of `tt_shape(d_in, d_out,
        rank)` (so a TT config follows width overrides).
    tt_in_modes, tt_out_modes, tt_ranks: TT shape; prod(in) = d_in, prod(out) = d_out, ranks include the
        leading and trailing 1 (len = len(in) + len(out) + 1). The bond after the last input core is the latent.
    crossing: LaX gate applied to the previous block's latent: 'none' | 'identity' | 'dense' | 'kron'.
    latent_norm: norm over the latent after the crossing (crossing layers only): 'layernorm' | 'rmsnorm' | 'none'.
    intra: TT intra-layer LaX (4 cores): the first input intermediate is added after the first output core.
    intra_gate: the official `IntraResGate`: the intermediate (N, n_2, r_1) passes through a mode gate (n_2, m_1)
        and a rank gate (r_1, r_3) before it is added (needs intra).
    activation: the latent activation when one is applied ('silu' for LLaMA, exact 'gelu' for ViT, 'relu').
    latent_act: apply `activation` to the latent (the official `LatentAct`); None = only for cola, whose
        definition it is. svd or tt with latent_act=True are no longer linear maps (no `materialize()`).
    use_bias: output bias.
    init: 'lax' (official LaX ViT code), 'cola' (official CoLA LLaMA code), 'tt_variance' (variance-correct
        product init: every factor gets std sigma^(1/d) * (prod internal ranks)^(-1/(2d))).
    init_std: dense kernel std ('lax': 0.02 truncated, 'cola': 0.02) or target std sigma of the represented
        matrix for 'tt_variance' (default 1/sqrt(d_in)).
    bias_init: 'zeros', or 'normal' = the official LaX code's N(0, 1) factorized-layer bias (a quirk).
    tt_order: TT contraction order; 'auto' = factor-first unless intra-layer LaX needs per-token intermediates.
    latent_in_dim: width of the incoming latent (default: this layer's latent width); only a dense gate maps
        between different widths.
    kron_impl: how the kron gate computes z @ kron(g1, g0): 'factored' (two small contractions), 'gemm' (one
        r x r matmul, the Kronecker product formed once per call) or 'auto' (per shape and backend,
        `layers.crossing.kron_impl_for`). The same parameters and function either way.
    """

    kind: str = "dense"
    rank: int | None = None
    tt_in_modes: tuple[int, ...] = ()
    tt_out_modes: tuple[int, ...] = ()
    tt_ranks: tuple[int, ...] = ()
    crossing: str = "none"
    latent_norm: str = "layernorm"
    intra: bool = False
    intra_gate: bool = False
    activation: str = "silu"
    latent_act: bool | None = None
    use_bias: bool = False
    init: str = "lax"
    init_std: float | None = None
    bias_init: str = "zeros"
    tt_order: str = "auto"
    latent_in_dim: int | None = None
    kron_impl: str = "auto"

    @property
    def crossed(self) -> bool:
        return self.crossing != "none"

    @property
    def is_linear(self) -> bool:
        """Whether the layer is a linear map of its input (so `materialize()` gives its kernel)."""
        return not self.latent_act and not self.intra

    @property
    def latent_dim(self) -> int | None:
        """Width of this layer's latent (None for dense)."""
        if self.kind in ("svd", "cola"):
            return self.rank
        if self.kind == "tt":
            return self.tt_ranks[len(self.tt_in_modes)]
        return None

    @property
    def sequential_tt(self) -> bool:
        """Whether a TT layer contracts core by core (needed for intra-layer LaX)."""
        if self.tt_order == "auto":
            return self.intra
        return self.tt_order == "sequential"

    def replace(self, **changes: Any) -> LinearSpec:
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name for f in dataclasses.fields(LinearSpec)}
_TUPLE_FIELDS = ("tt_in_modes", "tt_out_modes", "tt_ranks")


def _as_dict(spec: Any) -> dict[str, Any]:
    if isinstance(spec, LinearSpec):
        return dataclasses.asdict(spec)
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


def cap_tt_ranks(
    in_modes: tuple[int, ...], out_modes: tuple[int, ...], ranks: tuple[int, ...]
) -> tuple[int, ...]:
    """Caps each TT bond by the largest rank it can carry: r_k <= r_{k-1} s_k (left sweep) and
    r_k <= s_{k+1} r_{k+1} (right sweep), which also bounds it by the unfolding sizes. More adds nothing."""
    modes = tuple(in_modes) + tuple(out_modes)
    capped = [1, *ranks[1:-1], 1]
    for k in range(1, len(modes)):
        capped[k] = min(capped[k], capped[k - 1] * modes[k - 1])
    for k in range(len(modes) - 1, 0, -1):
        capped[k] = min(capped[k], modes[k] * capped[k + 1])
    return tuple(capped)


def tt_shape(d_in: int, d_out: int, r_mid: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """A 4-core TT shape in the official layout: input modes descending, output ascending (768 -> [32, 24 | 24, 32]),
    outer ranks as large as the unfoldings allow, the latent bond `r_mid`."""
    f0, f1 = balanced_factors(d_in)
    g0, g1 = balanced_factors(d_out)
    in_modes, out_modes = (f1, f0), (g0, g1)
    return in_modes, out_modes, cap_tt_ranks(in_modes, out_modes, (1, f1, r_mid, g1, 1))


def validate(spec: Any, d_in: int, d_out: int, *, where: str = "spec") -> LinearSpec:
    """Normalises a dict/ConfigDict into a LinearSpec for a (d_in -> d_out) map, or raises SpecError."""
    raw = _as_dict(spec)
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise SpecError(
            f"{where}.{unknown[0]} is not a linear-spec key (known: {', '.join(sorted(_FIELDS))})"
        )
    for key in _TUPLE_FIELDS:
        if raw.get(key) is not None:
            raw[key] = tuple(int(v) for v in raw[key])
    s = LinearSpec(
        **{
            k: v
            for k, v in raw.items()
            if v is not None or k in ("rank", "init_std", "latent_in_dim", "latent_act")
        }
    )

    _choice(where, "kind", s.kind, KINDS)
    _choice(where, "crossing", s.crossing, CROSSINGS)
    _choice(where, "latent_norm", s.latent_norm, LATENT_NORMS)
    _choice(where, "activation", s.activation, ACTIVATIONS)
    _choice(where, "init", s.init, INITS)
    _choice(where, "bias_init", s.bias_init, BIAS_INITS)
    _choice(where, "tt_order", s.tt_order, TT_ORDERS)
    _choice(where, "kron_impl", s.kron_impl, KRON_IMPLS)
    if d_in < 1 or d_out < 1:
        raise SpecError(f"{where}: a linear map needs positive widths, got {d_in} -> {d_out}")

    if s.kind == "dense" and s.crossing != "none":
        raise SpecError(f"{where}.crossing={s.crossing!r}: a dense layer has no latent to cross; use 'none'")
    if s.kind in ("svd", "cola"):
        if s.rank is None or int(s.rank) < 1:
            raise SpecError(f"{where}.rank must be an integer >= 1 for kind {s.kind!r}, got {s.rank!r}")
        if s.rank > min(d_in, d_out):
            raise SpecError(
                f"{where}.rank={s.rank} exceeds min(d_in, d_out)={min(d_in, d_out)}, the full rank of the "
                f"{d_in} -> {d_out} map: a factorization wider than that only adds parameters"
            )
    if s.kind == "tt":
        if not s.tt_in_modes and not s.tt_out_modes and not s.tt_ranks:
            if s.rank is None or int(s.rank) < 1:
                raise SpecError(
                    f"{where}.rank={s.rank!r}: kind 'tt' needs tt_in_modes/tt_out_modes/tt_ranks or a "
                    "rank >= 1 (the latent bond of the default 4-core `tt_shape`)"
                )
            if s.rank > min(d_in, d_out):
                raise SpecError(
                    f"{where}.rank={s.rank} exceeds min(d_in, d_out)={min(d_in, d_out)}: the latent TT bond "
                    "splits the input modes from the output modes, whose unfolding has at most that rank"
                )
            in_modes, out_modes, ranks = tt_shape(d_in, d_out, int(s.rank))
            s = s.replace(tt_in_modes=in_modes, tt_out_modes=out_modes, tt_ranks=ranks)
        _validate_tt(s, d_in, d_out, where)
    if s.latent_act is None:
        s = s.replace(latent_act=s.kind == "cola")
    elif not isinstance(s.latent_act, bool):
        raise SpecError(f"{where}.latent_act={s.latent_act!r} must be true, false or unset")
    if s.kind == "cola" and not s.latent_act:
        raise SpecError(f"{where}.latent_act=False: CoLA is defined by its latent activation; use kind 'svd'")
    if s.kind == "dense" and s.latent_act:
        raise SpecError(f"{where}.latent_act=True: a dense layer has no latent to activate")
    if s.intra_gate and not s.intra:
        raise SpecError(f"{where}.intra_gate=True gates the intra-layer skip: it needs intra=True")
    if s.intra and s.kind != "tt":
        raise SpecError(f"{where}.intra=True needs kind 'tt' (intra-layer LaX crosses TT core intermediates)")
    if s.intra and s.tt_order == "factor_first":
        raise SpecError(
            f"{where}.intra=True needs per-token intermediates: tt_order must be 'sequential' or 'auto'"
        )

    if s.latent_in_dim is not None and (not isinstance(s.latent_in_dim, int) or s.latent_in_dim < 1):
        raise SpecError(f"{where}.latent_in_dim must be an integer >= 1 (or unset), got {s.latent_in_dim!r}")
    if s.crossed:
        width = s.latent_dim
        in_width = s.latent_in_dim if s.latent_in_dim is not None else width
        if s.crossing in ("identity", "kron") and in_width != width:
            raise SpecError(
                f"{where}.latent_in_dim={in_width} differs from the latent width {width}: "
                f"crossing {s.crossing!r} needs equal widths (use crossing='dense')"
            )
        if s.crossing == "kron":
            f0, _ = balanced_factors(width)
            if f0 == 1:
                warnings.warn(
                    f"{where}: kron gate on prime latent width {width} degenerates to a dense "
                    f"{width}x{width} map",
                    stacklevel=3,
                )
    return s


def _validate_tt(s: LinearSpec, d_in: int, d_out: int, where: str) -> None:
    if not s.tt_in_modes or not s.tt_out_modes:
        raise SpecError(f"{where}.tt_in_modes/tt_out_modes must be given for kind 'tt'")
    for key, modes in (("tt_in_modes", s.tt_in_modes), ("tt_out_modes", s.tt_out_modes)):
        if any(m < 1 for m in modes):
            raise SpecError(f"{where}.{key}={list(modes)} must be positive")
    if math.prod(s.tt_in_modes) != d_in:
        raise SpecError(
            f"{where}.tt_in_modes={list(s.tt_in_modes)} multiply to {math.prod(s.tt_in_modes)}, "
            f"not d_in={d_in}"
        )
    if math.prod(s.tt_out_modes) != d_out:
        raise SpecError(
            f"{where}.tt_out_modes={list(s.tt_out_modes)} multiply to {math.prod(s.tt_out_modes)}, "
            f"not d_out={d_out}"
        )
    n_cores = len(s.tt_in_modes) + len(s.tt_out_modes)
    if len(s.tt_ranks) != n_cores + 1:
        raise SpecError(
            f"{where}.tt_ranks={list(s.tt_ranks)} must have {n_cores + 1} entries (one per bond of "
            f"{n_cores} cores, including the leading and trailing 1)"
        )
    if s.tt_ranks[0] != 1 or s.tt_ranks[-1] != 1:
        raise SpecError(f"{where}.tt_ranks={list(s.tt_ranks)} must start and end with 1")
    if any(r < 1 for r in s.tt_ranks):
        raise SpecError(f"{where}.tt_ranks={list(s.tt_ranks)} must be positive")
    modes = (*s.tt_in_modes, *s.tt_out_modes)
    for k in range(1, n_cores):
        # Bond k joins cores 0..k-1 to cores k..; the unfolding it factorizes is that big, so a wider bond
        # only adds parameters.
        full = min(math.prod(modes[:k]), math.prod(modes[k:]))
        if s.tt_ranks[k] > full:
            raise SpecError(
                f"{where}.tt_ranks={list(s.tt_ranks)}: bond {k} ({s.tt_ranks[k]}) is wider than the full rank "
                f"{full} of the unfolding it splits (modes {list(modes[:k])} | {list(modes[k:])})"
            )
    if s.intra:
        p = len(s.tt_in_modes)
        if p != 2 or len(s.tt_out_modes) != 2:
            raise SpecError(
                f"{where}.intra=True needs 4 TT cores (2 input + 2 output modes), got "
                f"{list(s.tt_in_modes)} | {list(s.tt_out_modes)}"
            )
        n2, m1 = s.tt_in_modes[1], s.tt_out_modes[0]
        r1, r3 = s.tt_ranks[1], s.tt_ranks[3]
        if n2 != m1 or r1 != r3:
            raise SpecError(
                f"{where}.intra=True needs tt_in_modes[1] == tt_out_modes[0] and "
                f"tt_ranks[1] == tt_ranks[3], got {n2} vs {m1} and {r1} vs {r3}"
            )
