"""Which collective traffic of a compiled step crosses slices (the data-centre network, DCN) and which stays
inside a slice (a TPU slice's ICI).

    split = network_split(compiled.as_text(), device_slices(mesh))
    split["dcn"]["all-reduce"], split["ici"]["total"], split["dcn"]["total"]   # bytes per device and step

Two ways a program can cross slices, both read here:
- libtpu compiles a multi-slice step as one program per slice (`num_partitions` = the devices of a slice):
  collectives over a DCN mesh axis become an in-slice collective plus a host transfer to the MegaScale runtime,
  a `send`/`recv` pair tagged `_xla_megascale_transfer_type="ALL_REDUCE"` (ALL_GATHER, ...). Those transfers
  are the DCN traffic; the comm report (parallel/comm.py), which counts collective instructions, does not see
  them. Every collective instruction of such a program stays in its slice.
- a program over every device (one partition per device of the mesh: XLA:GPU over several hosts, XLA:CPU)
  crosses domains where a collective's replica group (a collective-permute: a source-target pair) holds
  devices of two; a collective with no groups spans every device. Partition ids are positions in
  `mesh.devices.flat` (jit's device assignment).
Bytes follow the comm report: per device and per executed step (loop bodies once per iteration), the buffer
each moves (a transfer's larger side: the gathered result of an all-gather, the operand of an all-reduce).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from lax_pretrain.parallel.comm import KINDS, collectives, crosses_domains, replica_groups, shape_bytes, walk

NETWORKS = ("ici", "dcn")
MEGASCALE_HANDLER = '_xla_host_transfer_handler_name="xla_megascale_runtime"'
_TRANSFER_TYPE = re.compile(r'_xla_megascale_transfer_type="([A-Z_]+)"')
_RENDEZVOUS = re.compile(r'_xla_host_transfer_rendezvous="([^"]+)"')
_FIRST_ARRAY = re.compile(r"\b[a-z][a-z0-9]*\[[0-9,]*\]")
_PAIRS = re.compile(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}")
_PARTITIONS = re.compile(r"\bnum_partitions=(\d+)")


def device_slices(mesh: Any) -> list[int]:
    """The slice of each partition id of a program compiled over `mesh` (0 for devices without one)."""
    return [getattr(d, "slice_index", 0) for d in mesh.devices.flat]


def megascale_transfers(hlo: str) -> dict[str, tuple[str, int, int]]:
    """{rendezvous key: (kind, bytes, executions per step)} of the DCN transfers a multi-slice TPU program
    hands to the MegaScale runtime (a send and a recv share a key; the larger buffer of the two counts)."""
    out: dict[str, tuple[str, int, int]] = {}
    for ins, times, _ in walk(hlo):
        if ins.op not in ("send", "recv") or MEGASCALE_HANDLER not in ins.line:
            continue
        kind, key = _TRANSFER_TYPE.search(ins.line), _RENDEZVOUS.search(ins.line)
        if kind is None or key is None:
            continue  # a -done half: the transfer is counted at its start
        array = _FIRST_ARRAY.search(ins.result)
        nbytes = shape_bytes(array.group(0)) if array else 0
        _, seen, _ = out.get(key.group(1), ("", 0, 0))
        out[key.group(1)] = (kind.group(1).lower().replace("_", "-"), max(seen, nbytes), times)
    return out


def collective_groups(line: str) -> list[list[int]] | None:
    """The device groups a collective exchanges data within: its replica groups, or a collective-permute's
    source-target pairs; None when it names none (every device is one group)."""
    pairs = _PAIRS.search(line)
    if pairs:
        return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", pairs.group(1))]
    return replica_groups(line) or None


def network_split(hlo: str, domain_of: Sequence[int]) -> dict[str, dict[str, int]]:
    """{'ici' | 'dcn': {kind: bytes, 'total': bytes}}: one step's collective bytes per device (optimized HLO
    text) that stay inside a domain and those that cross domains. `domain_of[p]`: the domain of partition `p` of
    the whole mesh: its slice (`device_slices(mesh)`) or, for GPU hosts, its process."""
    split = {net: {**{k: 0 for k in KINDS}, "total": 0} for net in NETWORKS}

    def add(net: str, kind: str, nbytes: int) -> None:
        split[net][kind] = split[net].get(kind, 0) + nbytes
        split[net]["total"] += nbytes

    partitions = _PARTITIONS.search(hlo)
    whole_mesh = partitions is not None and int(partitions.group(1)) == len(domain_of)
    for kind, nbytes, times, line in collectives(hlo):
        crosses = whole_mesh and crosses_domains(
            collective_groups(line), domain_of.__getitem__, len(domain_of)
        )
        add("dcn" if crosses else "ici", kind, times * nbytes)
    for kind, nbytes, times in megascale_transfers(hlo).values():
        add("dcn", kind, times * nbytes)
    return split
