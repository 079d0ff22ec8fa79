"""safetensors files of adapters, EigenLoRAx bases and EigenLoRAx loadings: float32 tensors plus a JSON header.

    file       metadata key              format                 header (besides format and version)
    adapter    'lax_pretrain_adapter'    lax_pretrain.adapter   spec, modules (path -> (d_in, d_out)), unwind, meta
    basis      'eigenlorax'              eigenlorax.basis       modules, K, rank, unwind, model_signature,
                                                                n_random, explained_variance
    loadings   'eigenlorax'              eigenlorax.loadings    modules, K, rank, meta

Tensors: adapter '<module>/<variable>' (see `save_adapter`), basis 'C_A/<module>' and 'C_B/<module>', loadings
'alpha_A/<module>' and 'alpha_B/<module>'. `meta` is any JSON-serialisable dict (task, base, basis file, ...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from os import PathLike
from typing import Any

import jax
import numpy as np
from flax.core import FrozenDict
from safetensors import safe_open
from safetensors.numpy import save_file

from lax_pretrain.adapters.eigenlorax.basis import Basis, f32
from lax_pretrain.adapters.eigenlorax.loadings import Loadings
from lax_pretrain.adapters.signature import Signature

FORMAT_VERSION = 1
ADAPTER_FORMAT, BASIS_FORMAT, LOADINGS_FORMAT = (
    "lax_pretrain.adapter",
    "eigenlorax.basis",
    "eigenlorax.loadings",
)
_METADATA_KEY = {
    ADAPTER_FORMAT: "lax_pretrain_adapter",
    BASIS_FORMAT: "eigenlorax",
    LOADINGS_FORMAT: "eigenlorax",
}


def _write(
    path: str | PathLike, file_format: str, tensors: Mapping[str, Any], header: Mapping[str, Any]
) -> None:
    arrays = {name: np.ascontiguousarray(np.asarray(value, np.float32)) for name, value in tensors.items()}
    header = {"format": file_format, "version": FORMAT_VERSION, **header}
    save_file(arrays, str(path), metadata={_METADATA_KEY[file_format]: json.dumps(header)})


def _read(path: str | PathLike, file_format: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    key = _METADATA_KEY[file_format]
    with safe_open(str(path), framework="numpy") as f:
        raw = (f.metadata() or {}).get(key)
        if raw is None:
            raise ValueError(f"{path}: no {key!r} header metadata, so not a {file_format!r} file")
        header = json.loads(raw)
        if header.get("format") != file_format or header.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: holds {header.get('format')!r} v{header.get('version')}, expected "
                f"{file_format!r} v{FORMAT_VERSION}"
            )
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return header, tensors


def _floats(x: jax.Array) -> list[float]:
    # float32 -> Python float -> JSON is exact, so the arrays round-trip bit for bit
    return [float(v) for v in np.asarray(x, np.float32)]


# ----------------------------------------------------------------------------------------------- adapters


def save_adapter_file(
    path: str | PathLike,
    tensors: Mapping[str, Any],
    *,
    spec: Mapping[str, Any],
    modules: Signature,
    unwind: bool,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """The file of one model's adapters: `tensors` by '<module>/<variable>', the spec as a dict."""
    _write(
        path,
        ADAPTER_FORMAT,
        tensors,
        {
            "spec": dict(spec),
            "modules": {p: list(s) for p, s in modules.items()},
            "unwind": unwind,
            "meta": dict(meta or {}),
        },
    )


def load_adapter_file(path: str | PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, tensors) of an adapter file."""
    return _read(path, ADAPTER_FORMAT)


# ----------------------------------------------------------------------------------------------- EigenLoRAx


def save_basis(path: str | PathLike, basis: Basis) -> None:
    tensors = {
        f"{name}/{p}": c[p] for p in basis.modules for name, c in (("C_A", basis.C_A), ("C_B", basis.C_B))
    }
    _write(
        path,
        BASIS_FORMAT,
        tensors,
        {
            "modules": list(basis.modules),
            "K": basis.k,
            "rank": basis.rank,
            "unwind": basis.unwind,
            "model_signature": {p: list(s) for p, s in basis.model_signature.items()},
            "n_random": {p: list(n) for p, n in basis.n_random.items()},
            "explained_variance": {
                p: {"A": _floats(basis.rho_A[p]), "B": _floats(basis.rho_B[p])} for p in basis.modules
            },
        },
    )


def load_basis(path: str | PathLike) -> Basis:
    header, tensors = _read(path, BASIS_FORMAT)
    modules, rho = header["modules"], header["explained_variance"]
    return Basis(
        C_A={p: f32(tensors[f"C_A/{p}"]) for p in modules},
        C_B={p: f32(tensors[f"C_B/{p}"]) for p in modules},
        rho_A={p: f32(np.asarray(rho[p]["A"], np.float32)) for p in modules},
        rho_B={p: f32(np.asarray(rho[p]["B"], np.float32)) for p in modules},
        model_signature=FrozenDict({p: tuple(header["model_signature"][p]) for p in modules}),
        rank=header["rank"],
        unwind=header["unwind"],
        n_random=FrozenDict({p: tuple(n) for p, n in header["n_random"].items()}),
    )


def save_loadings(path: str | PathLike, loadings: Loadings, meta: Mapping[str, Any] | None = None) -> None:
    """One task's loadings; `load_loadings` gives `meta` back."""
    tensors = {
        f"{name}/{p}": alpha[p]
        for p in loadings.modules
        for name, alpha in (("alpha_A", loadings.alpha_A), ("alpha_B", loadings.alpha_B))
    }
    k, rank = next(iter(loadings.alpha_A.values())).shape
    _write(
        path,
        LOADINGS_FORMAT,
        tensors,
        {"modules": list(loadings.modules), "K": k, "rank": rank, "meta": dict(meta or {})},
    )


def load_loadings(path: str | PathLike) -> tuple[Loadings, dict[str, Any]]:
    """(loadings, meta) as saved by `save_loadings`."""
    header, tensors = _read(path, LOADINGS_FORMAT)
    modules = header["modules"]
    loadings = Loadings(
        {p: f32(tensors[f"alpha_A/{p}"]) for p in modules}, {p: f32(tensors[f"alpha_B/{p}"]) for p in modules}
    )
    return loadings, header["meta"]
