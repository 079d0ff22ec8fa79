"""Collective traffic and memory of a compiled program, read from its optimized HLO (`compiled.as_text()`), and
the walk over that HLO (`walk`: every executed instruction, loop bodies once per iteration) other readers share.

    report = comm_report(jax.jit(step).lower(*args).compile())
    report["all_reduce_bytes"], report["collectives"]["all-gather"]["count"], report["memory"]["total_bytes"]

Counts are per executed step: a collective inside a `while` body (scan, grad accumulation) counts once per
iteration when XLA knows the trip count. Bytes are per device, the size of the buffer each collective moves
through: the operand of all-reduce, all-to-all and collective-permute (= their result), the gathered result
of an all-gather, the unscattered operand of a reduce-scatter. Async pairs (`*-start` / `*-done`) count once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

# HLO instructions that launch no kernel and move no data: values, views, control flow (whose bodies the walk
# visits) and bookkeeping. The kernel count and the HBM-traffic estimate both skip them.
LAUNCH_NOTHING = frozenset(
    {
        "parameter",
        "constant",
        "tuple",
        "get-tuple-element",
        "bitcast",
        "while",
        "conditional",
        "call",
        "after-all",
        "opt-barrier",
        "partition-id",
        "replica-id",
    }
)
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

DTYPE_BYTES = {
    "pred": 1,
    "s4": 1,
    "u4": 1,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}

_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_CALLS = re.compile(
    r"\b(body|condition|to_apply|calls|branch_computations|true_computation|"
    r"false_computation)=(\{[^}]*\}|%?[\w.\-]+)"
)
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')


def shape_bytes(text: str) -> int:
    """Bytes of every array type written in `text` (a shape or a tuple of shapes)."""
    return sum(_array_bytes(dtype, dims) for dtype, dims in _ARRAY.findall(text))


def computations(hlo: str) -> tuple[dict[str, list[str]], str | None]:
    """({computation name: its instruction lines}, the entry computation's name) of an HLO module's text."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m and not line.lstrip().startswith(("HloModule", "//")):
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        comps[current].append(line)
    return comps, entry


class Instruction(NamedTuple):
    name: str
    result: str  # the result type: an array, or a tuple of them
    op: str
    args: str  # operands and attributes: everything after `op(`
    line: str


def instruction(line: str) -> Instruction | None:
    m = _INSTRUCTION.match(line)
    return Instruction(*m.groups(), line) if m else None


def _collective(op: str) -> str | None:
    for kind in KINDS:
        if op == kind or op == kind + "-start":
            return kind
    return None


def walk(hlo: str) -> Iterator[tuple[Instruction, int, bool]]:
    """(instruction, executions per step, fused) for every instruction one run of the entry computation reaches:
    a while body's once per iteration where XLA knows the trip count, a called, fused or branch computation's
    once per call, a collective's reduction computation not at all. `fused`: inside a fusion or an applied
    computation (a reduction's), whose values never become buffers of their own."""
    comps, entry = computations(hlo)
    if entry is None:
        return
    by_name = {i.name: i for lines in comps.values() for i in map(instruction, lines) if i}

    def visit(name: str, times: int, fused: bool, stack: tuple[str, ...]):
        if name not in comps or name in stack:
            return
        for line in comps[name]:
            ins = instruction(line)
            if ins is None:
                continue
            yield ins, times, fused
            trips = 1
            if ins.op == "while":
                t = _TRIP.search(line)
                trips = int(t.group(1)) if t else _trips_from_condition(ins, comps, by_name)
            for attr, target in _CALLS.findall(line):
                if attr == "to_apply" and _collective(ins.op) is not None:
                    continue  # the reduction computation of a collective
                inner = fused or ins.op == "fusion" or (attr == "to_apply" and ins.op != "call")
                for callee in re.findall(r"%?([\w.\-]+)", target):
                    yield from visit(callee, times * (trips if attr == "body" else 1), inner, stack + (name,))

    yield from visit(entry, 1, False, ())


def _trips_from_condition(
    loop: Instruction, comps: dict[str, list[str]], by_name: dict[str, Instruction]
) -> int:
    """A while loop's trip count where XLA wrote none (the TPU compiler): its condition `i < N` with N a
    constant, i the loop tuple's element whose initial value is a constant (0 for a scan) and which the body
    advances by a constant (1 for a scan, 2 for the TPU's bidirectional windowed einsums). 1 if not that shape."""
    cond = re.search(r"\bcondition=%?([\w.\-]+)", loop.line)
    body = [i for i in map(instruction, comps.get(cond.group(1), []) if cond else []) if i]
    root = next((i for i in body if i.line.lstrip().startswith("ROOT")), None)
    if root is None or root.op != "compare" or "direction=LT" not in root.line:
        return 1
    index_of, limit = None, None
    for name in _operand_names(root):
        operand = by_name.get(name)
        if operand is not None and operand.op == "constant":
            limit = _constant(operand)
        elif operand is not None and operand.op == "get-tuple-element":
            index_of = int(re.search(r"index=(\d+)", operand.line).group(1))
    if limit is None or index_of is None:
        return 1
    init = by_name.get(_operand_names(loop)[0])
    start = _element_constant(init, index_of, by_name)
    loop_body = re.search(r"\bbody=%?([\w.\-]+)", loop.line)
    lines = comps.get(loop_body.group(1), []) if loop_body else []
    body_root = next((i for i in map(instruction, lines) if i and i.line.lstrip().startswith("ROOT")), None)
    step = 1
    if body_root is not None and body_root.op == "tuple":
        update = by_name.get(_operand_names(body_root)[index_of])
        if update is not None and update.op == "add":
            steps = [
                _constant(by_name[n])
                for n in _operand_names(update)
                if by_name.get(n) and by_name[n].op == "constant"
            ]
            step = steps[0] if len(steps) == 1 and steps[0] > 0 else 1
    return max(-(-(limit - (start or 0)) // step), 1)


def _operand_names(ins: Instruction) -> list[str]:
    return re.findall(r"%([\w.\-]+)", ins.args.split(")", 1)[0])


def _constant(ins: Instruction) -> int:
    m = re.match(r"\s*(-?\d+)", ins.args)
    return int(m.group(1)) if m else 0


def _element_constant(tup: Instruction | None, index: int, by_name: dict[str, Instruction]) -> int | None:
    """The constant a tuple holds at `index`, seen through copies; None if it is not one."""
    if tup is None or tup.op != "tuple":
        return None
    names = _operand_names(tup)
    element = by_name.get(names[index]) if index < len(names) else None
    while element is not None and element.op in ("copy", "bitcast", "convert"):
        element = by_name.get(_operand_names(element)[0])
    return _constant(element) if element is not None and element.op == "constant" else None


def collectives(hlo: str) -> Iterator[tuple[str, int, int, str]]:
    """(kind, bytes moved per execution, executions per step, instruction line) of each collective a step runs."""
    for ins, times, _ in walk(hlo):
        kind = _collective(ins.op)
        if kind is not None:
            yield kind, _moved_bytes(kind, ins.op, ins.result, ins.line), times, ins.line


def count_collectives(hlo: str) -> dict[str, dict[str, int]]:
    """{kind: {'count', 'bytes'}} over one execution of the entry computation."""
    totals = {k: {"count": 0, "bytes": 0} for k in KINDS}
    for kind, nbytes, times, _ in collectives(hlo):
        totals[kind]["count"] += times
        totals[kind]["bytes"] += times * nbytes
    return totals


def _moved_bytes(kind: str, op: str, result: str, line: str) -> int:
    """The per-device buffer a collective moves: its operand (= result) for all-reduce, all-to-all and
    collective-permute, the gathered result of an all-gather, the unscattered operand of a reduce-scatter
    (result x group size). An async `*-start` returns a tuple holding operands and results."""
    arrays = [_array_bytes(dtype, dims) for dtype, dims in _ARRAY.findall(result)]
    if not arrays:
        return 0
    if op.endswith("-start"):
        nbytes = max(arrays) if kind == "all-gather" else arrays[0]
    else:
        nbytes = sum(arrays)
    if kind == "reduce-scatter":
        nbytes *= group_size(line)
    return nbytes


def group_size(line: str) -> int:
    """Devices per replica group of a collective (1 where it names none)."""
    groups = replica_groups(line)
    return len(groups[0]) if groups else 1


def _ints(text: str | None) -> list[int]:
    return [int(v) for v in (text or "").split(",") if v]


def _iota(dims: list[int], perm: list[int]) -> np.ndarray:
    """XLA's iota tile assignment `[dims]T(perm)`: 0..n-1 laid out as `dims`, then transposed."""
    ids = np.arange(math.prod(dims)).reshape(dims)
    return ids.transpose(perm) if perm else ids


def replica_groups(line: str) -> list[list[int]] | None:
    """The device (partition) ids of each replica group of a collective, from any of the replica_groups
    spellings: explicit {{0,1},{2,3}}, iota [G,S]<=[dims]T(perm), mesh['a'=2,'b'=4], device_ids=(...) {'b'};
    None if the line names none."""
    m = re.search(r"replica_groups=\{((?:\{[0-9,]*\},?)*)\}", line)
    if m:
        return [_ints(g) for g in re.findall(r"\{([0-9,]*)\}", m.group(1))]
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", line)
    if m:
        ids = _iota(_ints(m.group(3)), _ints(m.group(4))).reshape(int(m.group(1)), int(m.group(2)))
        return ids.tolist()
    m = re.search(
        r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\[([0-9,]+)\](?:T\(([0-9,]+)\))?\))?\s*\{([^}]*)\}",
        line,
    )
    if m:
        axes = [(a, int(n)) for a, n in re.findall(r"'([^']+)'=(\d+)", m.group(1))]
        sizes = [n for _, n in axes]
        ids = _iota(_ints(m.group(2)), _ints(m.group(3))) if m.group(2) else np.arange(math.prod(sizes))
        ids = ids.reshape(sizes)
        grouped = [i for i, (a, _) in enumerate(axes) if a in re.findall(r"'([^']+)'", m.group(4))]
        ids = np.moveaxis(ids, grouped, list(range(len(axes) - len(grouped), len(axes))))
        return ids.reshape(-1, math.prod(sizes[i] for i in grouped)).tolist()
    return None


def _array_bytes(dtype: str, dims: str) -> int:
    return DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d)


def memory_report(compiled: Any) -> dict[str, int] | None:
    """Per-device bytes from `compiled.memory_analysis()` (None where the backend gives none)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if m is None:
        return None
    out = {
        k: int(getattr(m, f"{k}_size_in_bytes", 0))
        for k in ("argument", "output", "temp", "alias", "generated_code")
    }
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return {f"{k}_bytes": v for k, v in out.items()}


def comm_report(compiled: Any) -> dict[str, Any]:
    """{'collectives': {kind: {count, bytes}}, '<kind>_bytes' / '<kind>_count' flattened, 'memory': {...}}."""
    collectives = count_collectives(compiled.as_text())
    report: dict[str, Any] = {"collectives": collectives}
    for kind, v in collectives.items():
        key = kind.replace("-", "_")
        report[f"{key}_count"] = v["count"]
        report[f"{key}_bytes"] = v["bytes"]
    report["total_collective_bytes"] = sum(v["bytes"] for v in collectives.values())
    report["memory"] = memory_report(compiled)
    return report


def crosses_domains(
    groups: list[list[int]] | None, domain_of: Callable[[int], int], num_partitions: int
) -> bool:
    """Whether a collective with these replica groups (None: all partitions) has a group spanning two domains
    (TPU slices, GPU hosts): such a collective moves its bytes over DCN / the network, not ICI / NVLink."""
    members = groups or [list(range(num_partitions))]
    return any(len({domain_of(d) for d in g}) > 1 for g in members)
