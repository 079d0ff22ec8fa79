"""The work of one compiled step per device, read from its optimized HLO, and its roofline time on an accelerator.

    cost = hlo_cost(compiled.as_text())      # HloCost: dot FLOPs, HBM bytes, collectives with their groups
    est = roofline(cost, accelerator("h100"), num_devices=64, model_flops=...)

FLOPs: 2 x (result elements) x (contracted elements) of every dot, each loop iteration counted (the comm
report's `walk`). XLA's own `compiled.cost_analysis()` counts a while body once, so a scanned stack of blocks
(model.scan_layers) or train.grad_accum micro-batches would read as one iteration: the 1B preset scanned over
its 23 blocks gives 1.4 TFLOP per device where the step does 7.0. Elementwise FLOPs are left out, as in the
analytic count (`models/stats.py`), so the two differ by what the compiler added: remat recomputation.

HBM bytes: each instruction outside a fusion reads its operands and writes its result (a fused kernel's
traffic is what it takes in and gives out); a dynamic-slice reads only its slice and a dynamic-update-slice
writes only its update in place, inside a fusion too; tuples, bitcasts, parameters, constants, control flow and
fusions that only re-type or relabel a value move nothing. The fusions are the CPU compiler's, which fuses less
than the GPU and TPU compilers and computes bf16 work in f32: the estimate runs high, by up to a few times.

Collectives: the comm report's bytes, each at the link its replica groups (a collective-permute's pairs)
cross (`collective_seconds`: NVLink / ICI inside an 8-GPU node or a TPU slice, the scale-out network between
them), an all-reduce counted twice (a ring's reduce-scatter + all-gather) and the ring's (n-1)/n taken as 1.
A multi-slice TPU step also hands transfers to libtpu's MegaScale runtime (`parallel/dcn.py`): no collective
instruction shows them, and they cross the data-centre network, so they are priced at its bandwidth.

Step time, the roofline with perfect overlap: max(FLOPs / peak, HBM bytes / HBM bandwidth, collective time),
a lower bound for these terms; `serial_s` (their sum, no overlap at all) is the upper bound beside it. As the
HBM term runs high, `step_s_hbm_hidden` = max(compute, collectives) and its MFU are reported too: the best the
step can do there. MFU = the analytic model FLOPs / (step time x peak): recomputation and the optimizer's
elementwise work count as overhead; at the compute bound without remat it is 100% by construction, an upper
bound that real kernels reach a fraction of.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from lax_pretrain.parallel.comm import (
    LAUNCH_NOTHING,
    Instruction,
    collectives,
    computations,
    crosses_domains,
    instruction,
    shape_bytes,
    walk,
)
from lax_pretrain.parallel.dcn import collective_groups, megascale_transfers
from lax_pretrain.train.accelerators import Accelerator

# Ops that move no data of their own: those that launch nothing, and iota (it reads no input).
_NO_TRAFFIC = LAUNCH_NOTHING | {"iota"}
_OPERAND = re.compile(r"%([\w.\-]+)")
_DIMS = re.compile(r"\[([0-9,]*)\]")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)")
_CUSTOM_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_CONFIG = "backend_config="


@dataclasses.dataclass(frozen=True)
class HloCost:
    flops: float  # dot FLOPs per step and device, every loop iteration counted
    hbm_bytes: float  # estimated HBM traffic per step and device
    # (kind, replica groups or None, bytes per step and device) of the collectives (the comm report's bytes)
    collectives: tuple[tuple[str, tuple[tuple[int, ...], ...] | None, float], ...] = ()
    # (kind, bytes per step and device) handed to the MegaScale runtime: always across slices (DCN)
    dcn_transfers: tuple[tuple[str, float], ...] = ()


def _operands(ins: Instruction) -> list[str]:
    """The operand names: the `%names` before the closing parenthesis of the op's argument list."""
    return _OPERAND.findall(ins.args.split(")", 1)[0])


def _dims(shape: str) -> list[int]:
    m = _DIMS.search(shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _dot_flops(ins: Instruction, shapes: dict[str, str]) -> float:
    lhs = shapes.get(_operands(ins)[0], "")
    contracting = _CONTRACTING.search(ins.line)
    lhs_dims = _dims(lhs)
    k = math.prod(lhs_dims[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
    return 2.0 * math.prod(_dims(ins.result)) * k


def _convolution_flops(ins: Instruction, shapes: dict[str, str]) -> float:
    """2 x the multiply-adds that touch real input: the TPU compiler writes matmuls as convolutions
    (`dim_labels=bf_io->bf`), batched ones with the batch as a spatial dimension whose window, padding and
    dilation make each output see one real tap of several; padding and dilation holes are not counted."""
    labels = _DIM_LABELS.search(ins.line)
    operands = _operands(ins)
    if not labels or len(operands) < 2:
        return 0.0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    lhs, rhs, out = _dims(shapes.get(operands[0], "")), _dims(shapes.get(operands[1], "")), _dims(ins.result)
    if (len(lhs), len(rhs), len(out)) != (len(lhs_labels), len(rhs_labels), len(out_labels)):
        return 0.0
    spatial = sorted(c for c in rhs_labels if c.isdigit())
    window = _window(ins.line, len(spatial))
    taps = 1
    for i, dim in enumerate(spatial):
        taps *= _valid_taps(
            lhs[lhs_labels.index(dim)], rhs[rhs_labels.index(dim)], out[out_labels.index(dim)], window[i]
        )
    others = math.prod(d for d, c in zip(out, out_labels) if not c.isdigit())
    return 2.0 * others * taps * rhs[rhs_labels.index("i")]


def _window(line: str, n: int) -> list[dict[str, list[int]]]:
    """Per spatial dimension: stride, padding (low, high), lhs and rhs dilation of `window={...}`."""
    m = re.search(r"window=\{([^}]*)\}", line)
    attrs = dict(kv.split("=", 1) for kv in m.group(1).split()) if m else {}

    def per_dim(key: str, default: int) -> list[int]:
        return [int(v) for v in attrs[key].split("x")] if key in attrs else [default] * n

    pads = (
        [tuple(int(p) for p in v.split("_")) for v in attrs["pad"].split("x")]
        if "pad" in attrs
        else [(0, 0)] * n
    )
    stride, lhs_dilate, rhs_dilate = per_dim("stride", 1), per_dim("lhs_dilate", 1), per_dim("rhs_dilate", 1)
    return [
        {"stride": stride[i], "pad_low": pads[i][0], "lhs_dilate": lhs_dilate[i], "rhs_dilate": rhs_dilate[i]}
        for i in range(n)
    ]


def _valid_taps(n_in: int, k: int, n_out: int, w: dict[str, int]) -> int:
    """Over one spatial dimension: the (output position, kernel tap) pairs that land on an input element
    (not on padding or a dilation hole)."""
    o = np.arange(n_out)[:, None]
    j = np.arange(k)[None, :]
    pos = o * w["stride"] + j * w["rhs_dilate"] - w["pad_low"]
    d = w["lhs_dilate"]
    return int(np.sum((pos >= 0) & (pos <= (n_in - 1) * d) & (pos % d == 0)))


def _backend_config(line: str) -> dict[str, Any]:
    """The JSON `backend_config={...}` of an instruction ({} where it has none or it does not parse)."""
    at = line.find(_CONFIG)
    if at < 0:
        return {}
    try:
        return json.JSONDecoder().raw_decode(line, at + len(_CONFIG))[0]
    except ValueError:
        return {}


def _custom_call_flops(ins: Instruction, shapes: dict[str, str]) -> float:
    """cuBLAS GEMMs (their dot dimensions in the backend config) and cuDNN attention, counted as the matmuls
    they replace: forward q k^T and p v (4 B T H S E), backward 8 B T H S E, unmasked as the analytic count
    (flash attention's recomputed scores and causal block skipping not modelled)."""
    target = _CUSTOM_TARGET.search(ins.line)
    name = target.group(1) if target else ""
    operands = [_dims(shapes.get(o, "")) for o in _operands(ins)]
    if name.startswith("__cublas") and operands:
        numbers = _backend_config(ins.line).get("gemm_backend_config", {})
        contracting = numbers.get("dot_dimension_numbers", {}).get("lhs_contracting_dimensions", [])
        k = math.prod(operands[0][int(i)] for i in contracting) if contracting else 1
        return 2.0 * math.prod(_dims(ins.result.split(")")[0].lstrip("("))) * k
    if name.startswith("__cudnn$fmha") and len(operands) >= 2 and len(operands[0]) == 4:
        b, t, h, e = operands[0]  # q: (B, T, H, E), k: (B, S, K, E) in jax's BTNH layout
        s = operands[1][1]
        return (8.0 if "Backward" in name else 4.0) * b * t * h * s * e
    return 0.0


# Ops that only relabel or re-type a value inside a fusion: a dynamic-slice or dynamic-update-slice seen
# through them still touches only its slice (XLA:CPU computes bf16 in f32, wrapping a stacked buffer's
# in-place update in convert(dynamic-update-slice(convert(buffer))): real in-place traffic on accelerators).
_VIEWS = {"bitcast", "convert", "copy", "reshape"}


def _fusion_traffic(ins: Instruction, body: list[Instruction], shapes: dict[str, str]) -> float:
    """Operands in, result out; a fused parameter read only through dynamic-slices counts as those slices, and
    a root that updates a parameter in place (dynamic-update-slice) writes only its update."""
    if all(b.op == "parameter" or b.op in _VIEWS for b in body):
        return 0.0  # a fused re-type or relabel alone: the CPU's f32 plumbing, fused into its users elsewhere
    operands = _operands(ins)
    params = {}  # fused parameter name -> the fusion operand it binds
    for b in body:
        if b.op == "parameter":
            index = int(b.args.split(")", 1)[0])
            params[b.name] = operands[index] if index < len(operands) else ""
    by_name = {b.name: b for b in body}
    users: dict[str, list[Instruction]] = {b.name: [] for b in body}
    for b in body:
        for name in _operands(b):
            if name in users:
                users[name].append(b)

    def source(name: str) -> str:  # through views, to the value they relabel
        while name in by_name and by_name[name].op in _VIEWS:
            name = _operands(by_name[name])[0]
        return name

    def sliced_bytes(name: str) -> float | None:  # bytes read if `name` is only ever dynamic-sliced
        total = 0.0
        for u in users.get(name, []):
            if u.op == "dynamic-slice" and _operands(u)[0] == name:
                total += shape_bytes(u.result)
            elif u.op in _VIEWS:
                inner = sliced_bytes(u.name)
                if inner is None:
                    return None
                total += inner
            else:
                return None
        return total if users.get(name) else None

    root = next((b for b in body if b.line.lstrip().startswith("ROOT")), body[-1]) if body else None
    written, in_place = shape_bytes(ins.result), None
    update = by_name.get(source(root.name)) if root else None
    if update is not None and update.op == "dynamic-update-slice":
        target = source(_operands(update)[0])
        if target in params:
            in_place = target
            written = shape_bytes(by_name[source(_operands(update)[1])].result)
    read = 0.0
    for p in params:
        if p == in_place:
            continue
        sliced = sliced_bytes(p)
        read += sliced if sliced is not None else shape_bytes(shapes.get(params[p], ""))
    return read + written


def hlo_cost(hlo: str) -> HloCost:
    """Dot FLOPs and estimated HBM bytes of one execution of an optimized HLO module (per device)."""
    comps, _ = computations(hlo)
    parsed = {name: [i for i in map(instruction, lines) if i] for name, lines in comps.items()}
    shapes = {i.name: i.result for body in parsed.values() for i in body}  # names are unique in a module
    traffic_by_group: dict[tuple, float] = {}
    for kind, nbytes, times, line in collectives(hlo):
        groups = collective_groups(line)
        key = (kind, None if groups is None else tuple(map(tuple, groups)))
        traffic_by_group[key] = traffic_by_group.get(key, 0.0) + times * nbytes
    flops = hbm = 0.0
    for ins, times, fused in walk(hlo):
        if ins.op == "dot":
            flops += times * _dot_flops(ins, shapes)
        elif ins.op == "convolution":
            flops += times * _convolution_flops(ins, shapes)
        elif ins.op == "custom-call":
            flops += times * _custom_call_flops(ins, shapes)
        if fused or ins.op in _NO_TRAFFIC:
            continue
        if ins.op == "fusion":
            callee = re.search(r"\bcalls=%?([\w.\-]+)", ins.line)
            traffic = _fusion_traffic(ins, parsed.get(callee.group(1), []) if callee else [], shapes)
        elif ins.op == "dynamic-slice":
            traffic = 2 * shape_bytes(ins.result)
        elif ins.op == "dynamic-update-slice":
            traffic = 2 * shape_bytes(shapes.get(_operands(ins)[1], ""))
        else:
            traffic = shape_bytes(ins.result) + sum(shape_bytes(shapes.get(o, "")) for o in _operands(ins))
        hbm += times * traffic
    dcn = tuple((kind, float(times * nbytes)) for kind, nbytes, times in megascale_transfers(hlo).values())
    return HloCost(flops, hbm, tuple((k, g, b) for (k, g), b in traffic_by_group.items()), dcn)


@dataclasses.dataclass(frozen=True)
class Roofline:
    accelerator: str
    compute_s: float
    hbm_s: float
    collective_s: float | None  # None: the mesh spans links the table does not model
    step_s: float | None  # max of the three (perfect overlap): a lower bound
    serial_s: float | None  # their sum (no overlap): an upper bound
    mfu: float | None  # analytic model FLOPs / (step_s x peak)
    bound: str | None  # which term sets step_s
    # The same without the HBM term, whose CPU-fusion estimate runs high: what a step can reach at best.
    step_s_hbm_hidden: float | None
    mfu_hbm_hidden: float | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def collective_seconds(
    cost: HloCost, acc: Accelerator, num_devices: int, domain_of: Callable[[int], int] | None = None
) -> float | None:
    """The collectives' time at `acc`'s links: a collective whose replica groups each stay inside one domain
    moves at the ICI/NVLink bandwidth, one that crosses at the scale-out bandwidth; an all-reduce moves its
    buffer twice. Domains: `domain_of(partition)` (a target's slice or host, lax-plan --target), else partitions
    i // ici_domain alike (make_mesh keeps the inner mesh axes node- or slice-local); the MegaScale transfers
    cross by definition. None if something crosses domains where the table has no scale-out bandwidth."""
    domain = domain_of or (lambda d: d // acc.ici_domain)
    links = [
        (kind, crosses_domains(groups and [list(g) for g in groups], domain, num_devices), nbytes)
        for kind, groups, nbytes in cost.collectives
    ] + [(kind, True, nbytes) for kind, nbytes in cost.dcn_transfers]
    total = 0.0
    for kind, crosses, nbytes in links:
        bandwidth = acc.dcn_bytes_per_s if crosses else acc.ici_bytes_per_s
        if bandwidth is None:
            return None
        total += (2 if kind == "all-reduce" else 1) * nbytes / bandwidth
    return total


def roofline(
    cost: HloCost,
    acc: Accelerator,
    *,
    num_devices: int,
    model_flops: float,
    domain_of: Callable[[int], int] | None = None,
) -> Roofline:
    """Step time and MFU of a step doing `cost` per device on `acc`; `model_flops`: the analytic training
    FLOPs of one step per device; `domain_of`: as for `collective_seconds`."""
    compute_s = cost.flops / acc.peak_bf16_flops
    hbm_s = cost.hbm_bytes / acc.hbm_bytes_per_s
    collective_s = collective_seconds(cost, acc, num_devices, domain_of)
    if collective_s is None:
        return Roofline(acc.name, compute_s, hbm_s, None, None, None, None, None, None, None)
    terms = {"compute": compute_s, "HBM": hbm_s, "collectives": collective_s}
    bound = max(terms, key=terms.get)
    hidden_s = max(compute_s, collective_s)

    def mfu(seconds: float) -> float | None:
        return model_flops / (seconds * acc.peak_bf16_flops) if seconds > 0 else None

    step_s = terms[bound]
    return Roofline(
        acc.name,
        compute_s,
        hbm_s,
        collective_s,
        step_s,
        sum(terms.values()),
        mfu(step_s),
        bound,
        hidden_s,
        mfu(hidden_s),
    )
