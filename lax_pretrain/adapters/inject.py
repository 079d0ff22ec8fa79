"""Model surgery: put adapters on a model's projections, read them out, save and load them.

    spec = AdapterSpec(kind="lora", rank=8, alpha=16, targets="q|v")
    model = add_adapters(model, spec, rngs=nnx.Rngs(0))       # in place; returns the model
    train(config, workdir, model_factory=..., trainable=ADAPTER_PARAMS)
    adapter_state(model)        # {'blocks.first.attn.q': (A, s B), ...}: EigenLoRAx's convention
    loadings_state(model)       # an EigenLoRAx model's task alone: its Loadings (save_loadings)
    save_adapter("adapter.safetensors", model, spec); load_adapter("adapter.safetensors", fresh_model)

Projections are named by their path in the model: 'blocks.first.attn.q' (block 0), 'blocks.rest.3.mlp.down'
(block 4) for LLaMA, 'blocks.first.q' / 'blocks.rest.0.fc1' for ViT. `targets` is a regex that must match a
whole dot-separated tail of the path: 'q|v' (the LoRA paper's default) picks every q and v projection,
'attn\\..*' every attention projection, 'rest\\.3\\.mlp\\..*' one block's MLP, 'all' every projection.
Only unrolled models can be adapted: under `model.scan_layers=True` blocks 1..L-1 are one stacked module.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lax_pretrain.adapters.base import base_axes
from lax_pretrain.adapters.eigenlorax import (
    INIT_SCALE,
    Basis,
    EigenLoRA,
    EigenLoRALinear,
    Frozen,
    Loadings,
    zero_b_loadings,
)
from lax_pretrain.adapters.eigenlorax.module import EIGEN_ATTR
from lax_pretrain.adapters.io import load_adapter_file, save_adapter_file
from lax_pretrain.adapters.lora import LAX_GATES, LAX_LATENTS, LORA_INITS, LoRA
from lax_pretrain.adapters.signature import signature, signature_diff
from lax_pretrain.layers.base import LinearBase
from lax_pretrain.models.stack import BlockStack

ADAPTER_KINDS = ("lora", "lax_lora", "eigenlorax")
EIGEN_INITS = ("uniform", "zero_b")
DEFAULT_TARGETS = "q|v"
ALL_TARGETS = "all"
_BLOCK = re.compile(r"^(?P<pre>(?:.*\.)?)blocks\.(?:first|rest\.(?P<index>\d+))\.(?P<role>.+)$")


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """What to put where. Saved in every adapter file's metadata.

    kind: 'lora' | 'lax_lora' | 'eigenlorax'.
    rank: r (EigenLoRAx: the columns of the loadings, (K, r)). alpha: LoRA scale s = alpha / r (not used by
        EigenLoRAx, which has no scale). targets: regex over projection paths (see the module docstring).
    dropout: on the adapter's input. init: A's init, 'kaiming_uniform' | 'gaussian' (B = 0).
    gate, lax_latent: LaX-LoRA's crossing gate ('identity' | 'kron' | 'dense') and which latent a block
        passes on ('own' = x A_l, 'crossed' = x A_l + gate(h_{l-1})).
    init_scale: EigenLoRAx's fresh loadings are U(-init_scale, init_scale).
    eigen_init: EigenLoRAx's fresh loadings: 'uniform' (the reference's default: alpha_A and alpha_B both
        U(-init_scale, init_scale), so training starts from a random delta) or 'zero_b' (alpha_B = 0, like
        LoRA's B = 0: training starts exactly at the base model).
    """

    kind: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    targets: str = DEFAULT_TARGETS
    dropout: float = 0.0
    init: str = "kaiming_uniform"
    gate: str = "identity"
    lax_latent: str = "own"
    init_scale: float = INIT_SCALE
    eigen_init: str = "uniform"

    def __post_init__(self):
        def choice(key, value, choices):
            if value not in choices:
                raise ValueError(f"adapter.{key}={value!r} is not one of {', '.join(choices)}")

        choice("kind", self.kind, ADAPTER_KINDS)
        choice("init", self.init, LORA_INITS)
        choice("gate", self.gate, LAX_GATES)
        choice("lax_latent", self.lax_latent, LAX_LATENTS)
        choice("eigen_init", self.eigen_init, EIGEN_INITS)
        if int(self.rank) < 1:
            raise ValueError(f"adapter.rank={self.rank} must be >= 1")
        if self.alpha <= 0:
            raise ValueError(f"adapter.alpha={self.alpha} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter.dropout={self.dropout} must be in [0, 1)")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"adapter.targets={self.targets!r} is not a regex: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdapterSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"adapter.{unknown[0]} is not an adapter-spec key (known: {', '.join(sorted(known))})"
            )
        return cls(**dict(d))


def exact_targets(paths: Any) -> str:
    """A `targets` regex selecting exactly these projection paths (e.g. a basis's modules)."""
    return "|".join(re.escape(p) for p in paths)


def targets_match(targets: str, path: str) -> bool:
    if targets == ALL_TARGETS:
        return True
    return re.search(rf"(?:^|\.)(?:{targets})$", path) is not None


# ----------------------------------------------------------------------------------------------- discovery


def _dotted(parts: tuple) -> str:
    return ".".join(str(p) for p in parts)


def check_unrolled(model: nnx.Module) -> None:
    """Adapters replace single projections, which a scanned stack does not have."""
    cfg = getattr(model, "cfg", None)
    scanned = any(
        isinstance(m, BlockStack) and m.scan and m.num_layers > 1 for _, m in nnx.iter_modules(model)
    )
    if scanned or (cfg is not None and cfg.get("scan_layers", False) and cfg.get("num_layers", 1) > 1):
        raise ValueError(
            "model.scan_layers=True: blocks 1..L-1 are one stacked module run by nnx.scan, so its "
            "projections cannot be wrapped one by one; adapt a base built with model.scan_layers=False "
            "(a scanned checkpoint holds blocks 1..L-1 stacked on a leading axis: unstack them first)"
        )


def projections(model: nnx.Module) -> dict[str, nnx.Module]:
    """Every factory linear map of the model that is not inside an adapter, by dotted path."""
    out = {}
    for parts, module in nnx.iter_modules(model):
        if isinstance(module, LinearBase) and (not parts or parts[-1] != "base"):
            out[_dotted(parts)] = module
    return out


def adapters(model: nnx.Module) -> dict[str, LoRA | EigenLoRALinear]:
    """The model's adapter wrappers by the path of the projection they wrap."""
    return {
        _dotted(parts): m for parts, m in nnx.iter_modules(model) if isinstance(m, (LoRA, EigenLoRALinear))
    }


def base_values_in(adapted: nnx.Module, base_params: nnx.State) -> dict[tuple, Any]:
    """The base model's parameters as {flat path in `adapted`: value}: a wrapped projection's parameters move
    under its adapter's `base` (`train(..., init_values=...)` takes this)."""
    wrapped = [tuple(p.split(".")) for p in adapters(adapted)]
    values = {}
    for path, variable in nnx.to_flat_state(base_params):
        names = tuple(map(str, path))
        prefix = next((len(w) for w in wrapped if names[: len(w)] == w), None)
        if prefix is not None:
            path = (*path[:prefix], "base", *path[prefix:])
        values[path] = variable.get_value() if isinstance(variable, nnx.Variable) else variable
    return values


def _block_of(path: str) -> tuple[str, int] | None:
    """(role, block index) of 'pre.blocks.first.role' (block 0) / 'pre.blocks.rest.i.role' (block i + 1)."""
    m = _BLOCK.match(path)
    if m is None:
        return None
    index = 0 if m["index"] is None else int(m["index"]) + 1
    return m["pre"] + m["role"], index


def _first_blocks(selected: list[str], every: list[str]) -> dict[str, bool]:
    """LaX-LoRA: which selected paths start their projection's latent chain (no incoming adapter latent).

    Per projection role the adapted blocks must be a contiguous run that ends with the last block: every
    later block must find the previous block's adapter latent, and an unadapted projection after an adapted
    one would receive a latent it cannot read.
    """
    last: dict[str, int] = {}
    for p in every:
        if (rb := _block_of(p)) is not None:
            last[rb[0]] = max(last.get(rb[0], 0), rb[1])
    runs: dict[str, list[int]] = {}
    first = {}
    for p in selected:
        rb = _block_of(p)
        if rb is None:  # not in a block stack: nothing to cross from
            first[p] = True
            continue
        runs.setdefault(rb[0], []).append(rb[1])
    for role, blocks in runs.items():
        blocks = sorted(blocks)
        if blocks != list(range(blocks[0], last[role] + 1)):
            raise ValueError(
                f"LaX-LoRA threads the adapter latent of {role!r} from block to block: targets must "
                f"select it in a contiguous run of blocks ending with the last block "
                f"({last[role]}), got blocks {blocks}"
            )
    for p in selected:
        if (rb := _block_of(p)) is not None:
            first[p] = rb[1] == min(runs[rb[0]])
    return first


def _set(model: nnx.Module, path: str, value: nnx.Module) -> None:
    *parents, last = path.split(".")
    node = model
    for part in parents:
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    setattr(node, last, value)


def _select(model: nnx.Module, targets: str) -> tuple[dict[str, nnx.Module], dict[str, nnx.Module]]:
    check_unrolled(model)
    if adapters(model):
        raise ValueError(
            f"the model already has adapters on {sorted(adapters(model))}; adapt a fresh base model"
        )
    every = projections(model)
    selected = {p: m for p, m in every.items() if targets_match(targets, p)}
    if not selected:
        raise ValueError(f"adapter.targets={targets!r} selects no projection; the model has {sorted(every)}")
    return selected, every


# ----------------------------------------------------------------------------------------------- surgery


def add_adapters(
    model: nnx.Module,
    spec: AdapterSpec,
    *,
    rngs: nnx.Rngs | None = None,
    basis: Basis | None = None,
    loadings: Loadings | None = None,
) -> nnx.Module:
    """Wraps every projection whose path matches `spec.targets` (in place) and returns the model.

    lora / lax_lora: fresh A (spec.init) and B = 0, so the model's outputs are unchanged.
    eigenlorax: `basis` (fit_basis / load_basis) gives the frozen components; the selected projections must
    be exactly the basis's modules with the basis's (d_in, d_out) (else a signature-mismatch error);
    `loadings` warm-starts them (e.g. `project(basis, adapter)`), else U(-init_scale, init_scale).
    """
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    selected, every = _select(model, spec.targets)
    if spec.kind == "eigenlorax":
        if basis is None:
            raise ValueError("adapter.kind='eigenlorax' needs a basis (fit_basis / load_basis; --basis=PATH)")
        basis.check_signature(signature(selected), "model")
        if loadings is None and spec.eigen_init == "zero_b":
            loadings = zero_b_loadings(basis, spec.rank, rngs=rngs, scale=spec.init_scale)

        def make(p: str, base: nnx.Module) -> nnx.Module:
            return EigenLoRALinear.from_basis(
                base,
                basis,
                p,
                spec.rank,
                rngs=rngs,
                loadings=loadings,
                dropout=spec.dropout,
                init_scale=spec.init_scale,
            )
    else:
        lax = spec.kind == "lax_lora"
        first = _first_blocks(list(selected), list(every)) if lax else {}

        def make(p: str, base: nnx.Module) -> nnx.Module:
            return LoRA(
                base,
                spec.rank,
                alpha=spec.alpha,
                dropout=spec.dropout,
                lax=lax,
                first=first.get(p, True),
                gate=spec.gate,
                lax_latent=spec.lax_latent,
                init=spec.init,
                rngs=rngs,
                name=p,
            )

    for path, base in selected.items():
        _set(model, path, make(path, base))
    return model


def adapter_state(model: nnx.Module) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{module path: (A (d_in, r), B (r, d_out))} with the LoRA scale folded into B: EigenLoRAx's adapter
    format (fit_basis / project take it as is). LaX-LoRA gates are not part of it."""
    found = adapters(model)
    if not found:
        raise ValueError("the model has no adapters (add_adapters first)")
    return {p: tuple(jnp.asarray(f) for f in m.factors()) for p, m in found.items()}


def loadings_state(model: nnx.Module) -> Loadings:
    """The task of a model with EigenLoRAx adapters: its loadings alone, to serve from the shared basis."""
    found = adapters(model)
    kinds = {_kind_of(m) for m in found.values()}
    if kinds != {"eigenlorax"}:
        raise ValueError(f"loadings are EigenLoRAx's: the model's adapters are {sorted(kinds)}")
    return Loadings(
        {p: m.delta.alpha_A[...] for p, m in found.items()},
        {p: m.delta.alpha_B[...] for p, m in found.items()},
    )


# ----------------------------------------------------------------------------------------------- files


def _variables(wrapper: nnx.Module) -> dict[str, nnx.Variable]:
    """The adapter's own variables (not the base's, not RNG state) by dotted path inside the wrapper."""
    state = nnx.state(wrapper, nnx.Any(nnx.Param, Frozen))
    return {_dotted(path): var for path, var in nnx.to_flat_state(state) if path[0] != "base"}


def _kind_of(wrapper: nnx.Module) -> str:
    if isinstance(wrapper, EigenLoRALinear):
        return "eigenlorax"
    return "lax_lora" if wrapper.lax else "lora"


def _check_against(
    found: Mapping[str, nnx.Module], spec: AdapterSpec, sig: Mapping[str, tuple[int, int]], where: str
) -> None:
    kinds = {_kind_of(m) for m in found.values()}
    if kinds != {spec.kind}:
        raise ValueError(f"{where}: adapter kind {spec.kind!r} vs the model's adapters {sorted(kinds)}")
    missing, extra, shapes = signature_diff(sig, signature(found))
    if missing or extra or shapes:
        raise ValueError(
            f"{where}: mismatched module sets: modules only in the file {missing}, only in the model "
            f"{extra}, (d_in, d_out) file vs model {shapes}"
        )
    ranks = {p: m.rank for p, m in found.items() if m.rank != spec.rank}
    if ranks:
        raise ValueError(f"{where}: adapter rank {spec.rank} (spec) vs the model's adapters' ranks {ranks}")


def save_adapter(
    path: str | PathLike, model: nnx.Module, spec: AdapterSpec, meta: Mapping[str, Any] | None = None
) -> None:
    """safetensors: one tensor '<module>/<variable>' per adapter variable (LoRA: lora_a, lora_b, gate.*;
    EigenLoRAx: eigenlora.alpha_A/B and the frozen eigenlora.C_A/B, so the file stands alone); header JSON
    under 'lax_pretrain_adapter': spec, module signature, `meta` (any JSON dict: base, task, ...)."""
    found = adapters(model)
    if not found:
        raise ValueError("the model has no adapters to save")
    sig = signature(found)
    _check_against(found, spec, sig, "save_adapter")
    tensors = {
        f"{p}/{name}": var.get_value() for p, m in found.items() for name, var in _variables(m).items()
    }
    unwind = any(m.delta.unwind_shape is not None for m in found.values() if isinstance(m, EigenLoRALinear))
    save_adapter_file(path, tensors, spec=spec.to_dict(), modules=sig, unwind=unwind, meta=meta)


def read_adapter(path: str | PathLike) -> tuple[AdapterSpec, dict[str, Any], dict[str, np.ndarray]]:
    """(spec, header, tensors) of an adapter file."""
    header, tensors = load_adapter_file(path)
    return AdapterSpec.from_dict(header["spec"]), header, tensors


def _eigen_from_file(
    tensors: Mapping[str, np.ndarray], header: Mapping[str, Any], spec: AdapterSpec
) -> Callable[[str, nnx.Module], nnx.Module]:
    def make(p: str, base: nnx.Module) -> nnx.Module:
        a_c, b_c, a_alpha, b_alpha = (
            tensors[f"{p}/{EIGEN_ATTR}.{n}"] for n in ("C_A", "C_B", "alpha_A", "alpha_B")
        )
        delta = EigenLoRA(
            a_c,
            b_c,
            spec.rank,
            loadings=(a_alpha, b_alpha),
            axes=base_axes(base),
            unwind_shape=(base.d_in, base.d_out) if header["unwind"] else None,
        )
        return EigenLoRALinear(base, delta, dropout=spec.dropout, rngs=nnx.Rngs(0), name=p)

    return make


def load_adapter(path: str | PathLike, model: nnx.Module, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Loads an adapter file into `model` and returns it.

    A model without adapters gets them first, exactly as the file's spec and module list say; a model that
    already has adapters must have the same kind, modules, shapes and rank (else a clear error).
    """
    spec, header, tensors = read_adapter(path)
    sig = {p: tuple(s) for p, s in header["modules"].items()}
    if not adapters(model):
        exact = dataclasses.replace(spec, targets=exact_targets(sig))
        selected, _ = _select(model, exact.targets)
        missing, _, shapes = signature_diff(sig, signature(selected))  # extra modules: _check_against below
        if missing or shapes:
            raise ValueError(
                f"{path} does not fit this model: modules missing from the model {missing}, "
                f"(d_in, d_out) file vs model {shapes}"
            )
        if spec.kind == "eigenlorax":
            make = _eigen_from_file(tensors, header, spec)
            for p, base in selected.items():
                _set(model, p, make(p, base))
        else:
            add_adapters(model, exact, rngs=rngs)
    found = adapters(model)
    _check_against(found, spec, sig, str(path))
    expected = {f"{p}/{name}": var for p, m in found.items() for name, var in _variables(m).items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: tensors missing from the file {missing[:8]}, not in the model {extra[:8]}")
    for name, var in expected.items():
        if tuple(tensors[name].shape) != tuple(var.shape):
            raise ValueError(
                f"{path}: {name} has shape {tensors[name].shape} in the file, {var.shape} in the model"
            )
        var.set_value(jnp.asarray(tensors[name], var.get_value().dtype))
    return model
