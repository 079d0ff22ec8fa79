"""Module signatures, path -> (d_in, d_out): of projections, of adapters, and how two of them differ.

An *adapter* is a dict module path -> (A (d_in, r), B (r, d_out)), the LoRA scale folded into B (EigenLoRAx's
convention; `adapter_state` gives it, `fit_basis` and `project` take it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

ArrayLike = np.ndarray | jax.Array
Adapter = Mapping[str, tuple[ArrayLike, ArrayLike]]
Signature = Mapping[str, tuple[int, int]]


def signature(modules: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """path -> (d_in, d_out) of projections or adapter wrappers."""
    return {p: (int(m.d_in), int(m.d_out)) for p, m in modules.items()}


def adapter_signature(adapter: Adapter) -> dict[str, tuple[int, int]]:
    """path -> (d_in, d_out) of an adapter, checking each (A, B) pair is a valid LoRA factorisation."""
    if not adapter:
        raise ValueError("adapter has no modules")
    sig = {}
    for path, factors in adapter.items():
        if len(factors) != 2:
            raise ValueError(f"{path}: expected a pair (A, B), got {len(factors)} arrays")
        a, b = factors
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"{path}: A and B must be 2-D, got shapes {a.shape} and {b.shape}")
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"{path}: rank mismatch inside the adapter, A {a.shape} vs B {b.shape}")
        sig[path] = (a.shape[0], b.shape[1])
    return sig


def signature_diff(
    expected: Signature, got: Signature
) -> tuple[list[str], list[str], dict[str, tuple[tuple[int, int], tuple[int, int]]]]:
    """(paths only in `expected`, paths only in `got`, {path: (expected, got) (d_in, d_out)} where they differ)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shapes = {
        p: (tuple(expected[p]), tuple(got[p]))
        for p in expected
        if p in got and tuple(expected[p]) != tuple(got[p])
    }
    return missing, extra, shapes


def check_signature(expected: Signature, got: Signature, context: str) -> None:
    """Raise ValueError (prefixed by `context`) unless the two signatures are equal."""
    missing, extra, shapes = signature_diff(expected, got)
    if missing or extra or shapes:
        raise ValueError(
            f"{context}: missing modules {missing}, unexpected modules {extra}, "
            f"(d_in, d_out) expected vs got {shapes}"
        )
