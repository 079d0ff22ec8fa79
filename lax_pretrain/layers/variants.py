"""The one name of a variant (a factorization kind and its crossing), as every table, legend, log line and
benchmark row spells it: `dense`, `cola`, `cola+kron`. A benchmark that compares kron gate implementations
adds the one it used (`cola+kron[gemm]`), the memory suite the remat policy (`cola remat=cola_m`).

Here, below both `bench/` and `experiments/`, so that neither borrows it from the other.
"""

from __future__ import annotations


def variant_name(
    kind: str, crossing: str = "none", remat: str = "none", *, kron_impl: str | None = None
) -> str:
    """`kind`, `+crossing` unless it is 'none', `[kron_impl]` when given, ` remat=<policy>` unless 'none'."""
    name = kind if crossing == "none" else f"{kind}+{crossing}"
    if kron_impl is not None:
        name += f"[{kron_impl}]"
    return name if remat == "none" else f"{name} remat={remat}"
