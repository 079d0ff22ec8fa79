"""Which kernels of a compiled step carry the LaX gate and the latent norm: read from the optimized HLO's
source metadata (every instruction's `stack_frame_id` names the Python call chain it was traced from).

    lax_kernels(compiled.as_text())
    # {'kernels': 3351, 'gate': 96, 'latent_norm': 288, 'gate_and_latent_norm': 0}

A kernel is an unfused instruction that launches work (`is_kernel`: a fusion with everything fused into it, a
custom call, a collective, a copy), each loop iteration counted. `gate`: kernels holding an instruction traced inside `KronGate.__call__` or
`DenseGate.__call__`; `latent_norm`: inside `Norm.__call__` called by `FactorizedLinear.__call__` (the block
norms are called by the blocks); `gate_and_latent_norm`: kernels holding both, i.e. where the compiler fused
the gate's epilogue with the norm. Forward and backward alike (the backward keeps the forward's metadata).
"""

from __future__ import annotations

import re

from lax_pretrain.parallel.comm import LAUNCH_NOTHING, walk

GATES = ("KronGate.__call__", "DenseGate.__call__")
LATENT_NORM_CALLER = "FactorizedLinear.__call__"
NORM = "Norm.__call__"
_SECTION_ROW = re.compile(r"^(\d+)\s+(.*)$")
_FRAME = re.compile(r"file_location_id=(\d+)\s+parent_frame_id=(\d+)")
_LOCATION = re.compile(r"function_name_id=(\d+)")
_FRAME_REF = re.compile(r"stack_frame_id=(\d+)")


def _sections(hlo: str) -> dict[str, dict[int, str]]:
    """The module's metadata tables (FileNames, FunctionNames, FileLocations, StackFrames): id -> row text."""
    tables: dict[str, dict[int, str]] = {}
    current = None
    for line in hlo.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
        elif current is not None:
            m = _SECTION_ROW.match(line)
            if m:
                current[int(m.group(1))] = m.group(2)
            else:
                current = None
    return tables


def call_chains(hlo: str) -> dict[int, tuple[str, ...]]:
    """Stack frame id -> the function names of its call chain, innermost first."""
    t = _sections(hlo)
    functions = {i: name.strip('"') for i, name in t.get("FunctionNames", {}).items()}
    location_function = {
        i: functions.get(int(m.group(1)), "")
        for i, row in t.get("FileLocations", {}).items()
        if (m := _LOCATION.search(row))
    }
    # The text prints each frame's parent as its id + 1 (0 would be none): frame 1's "parent_frame_id=1" is the
    # root, frame k's "parent_frame_id=k" its caller k - 1.
    frames = {
        i: (int(m.group(1)), int(m.group(2)) - 1)
        for i, row in t.get("StackFrames", {}).items()
        if (m := _FRAME.search(row))
    }
    chains: dict[int, tuple[str, ...]] = {}
    for frame in frames:
        chain, seen, at = [], set(), frame
        while at in frames and at not in seen:
            seen.add(at)
            location, parent = frames[at]
            chain.append(location_function.get(location, ""))
            at = parent
        chains[frame] = tuple(chain)
    return chains


def _roles(chain: tuple[str, ...]) -> set[str]:
    roles = set()
    if any(f in GATES for f in chain):
        roles.add("gate")
    for inner, outer in zip(chain, chain[1:]):
        if inner == NORM and outer == LATENT_NORM_CALLER:
            roles.add("latent_norm")
    return roles


# Instructions that launch nothing (async completions are excluded in is_kernel).
NOT_KERNELS = LAUNCH_NOTHING


def is_kernel(op: str) -> bool:
    """Whether an unfused instruction launches work (a fusion, a custom call, a collective's start, a copy)."""
    return op not in NOT_KERNELS and not op.endswith("-done")


def kernel_counts(hlo: str) -> dict[str, int]:
    """Kernels one step launches, by op, from the compiled HLO's entry and loop bodies (each iteration)."""
    counts: dict[str, int] = {}
    for ins, times, fused in walk(hlo):
        if not fused and is_kernel(ins.op):
            counts[ins.op] = counts.get(ins.op, 0) + times
    counts["total"] = sum(counts.values())
    return counts


def lax_kernels(hlo: str) -> dict[str, int]:
    """Kernels per step, and those carrying the LaX gate, the latent norm, and both (see the module doc)."""
    chains = call_chains(hlo)
    counts = {"kernels": 0, "gate": 0, "latent_norm": 0, "gate_and_latent_norm": 0}
    kernel_roles: set[str] = set()
    kernel_times = 0

    def close() -> None:
        for role in kernel_roles:
            counts[role] += kernel_times
        if {"gate", "latent_norm"} <= kernel_roles:
            counts["gate_and_latent_norm"] += kernel_times

    for ins, times, fused in walk(hlo):
        m = _FRAME_REF.search(ins.line)
        roles = _roles(chains.get(int(m.group(1)), ())) if m else set()
        if fused:
            kernel_roles |= roles
            continue
        close()
        launches = is_kernel(ins.op)
        kernel_roles, kernel_times = (roles, times) if launches else (set(), 0)
        counts["kernels"] += times if launches else 0
    close()
    return counts
