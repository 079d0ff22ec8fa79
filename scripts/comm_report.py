"""Collectives and memory of one compiled train step (or one transformer block) on a given mesh.

    python scripts/comm_report.py --config=configs/llama.py:60m,kind=cola,lax=kron --mesh=2,2,2
    python scripts/comm_report.py --config=configs/llama.py:60m,kind=svd --mesh=1,1,4 --block_only --json
    python scripts/comm_report.py --config=configs/llama.py:60m,kind=svd --mesh=1,1,4 --block_only \
        --config.parallel.tp_impl=shard_map --config.train.batch_size=8

Compiles (never runs) the program for the mesh data x fsdp x tensor. On CPU the devices are faked with
--xla_force_host_platform_device_count (set here, before jax is imported); on a GPU/TPU host the first
D*F*T real devices are used. Prints, per step and per device, the count and bytes of every collective kind in
the optimized HLO (lax_pretrain.parallel.comm explains the byte convention) and the memory estimate of
`compiled.memory_analysis()`. --block_only: one transformer block forward + backward (embedding, head and
optimizer excluded; a crossing block when the config uses LaX). --json: one JSON object instead of a table.
The batch is the config's (train.batch_size x data.seq_len); override it with --config.train.batch_size=...
"""

from __future__ import annotations

import math
import os
import sys


def _mesh_arg(argv: list[str]) -> tuple[int, int, int]:
    """--mesh=D,F,T, read before absl (and jax) so the fake device count can be set first."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--mesh=")]
    if not values:
        sys.exit("comm_report.py: --mesh=DATA,FSDP,TENSOR is required (e.g. --mesh=2,2,2)")
    try:
        sizes = tuple(int(v) for v in values[-1].split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        sys.exit(f"comm_report.py: --mesh={values[-1]} must be three positive sizes DATA,FSDP,TENSOR")
    return sizes


MESH = _mesh_arg(sys.argv)
_flag = f"--xla_force_host_platform_device_count={math.prod(MESH)}"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import json  # noqa: E402

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lax_pretrain.models import get_task  # noqa: E402
from lax_pretrain.parallel import make_mesh  # noqa: E402
from lax_pretrain.parallel.comm import KINDS, comm_report  # noqa: E402
from lax_pretrain.train.program import build_program, compile_block_step  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Recipe file and compact argument, e.g. configs/llama.py:60m")
flags.DEFINE_string("mesh", None, "DATA,FSDP,TENSOR mesh sizes (e.g. 2,2,2)")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.DEFINE_bool(
    "block_only", False, "One transformer block forward + backward (no embedding, head, optimizer)."
)
flags.mark_flags_as_required(["config", "mesh"])


def report(config, mesh_sizes: tuple[int, int, int], *, block_only: bool) -> dict:
    n = math.prod(mesh_sizes)
    if jax.device_count() < n:
        raise SystemExit(
            f"--mesh={','.join(map(str, mesh_sizes))} needs {n} devices; {jax.device_count()} "
            f"{jax.default_backend()} devices are available"
        )
    with config.unlocked():  # mesh.num_devices is optional in the recipes
        config.mesh.update(data=mesh_sizes[0], fsdp=mesh_sizes[1], tensor=mesh_sizes[2], num_devices=n)
    data_ways = mesh_sizes[0] * mesh_sizes[1]
    if config.train.batch_size % data_ways:
        raise SystemExit(
            f"train.batch_size={config.train.batch_size} is not divisible by the data axes "
            f"(mesh data x fsdp = {data_ways})"
        )
    mesh = make_mesh(config.mesh)
    if block_only:
        compiled = compile_block_step(config, mesh)
    else:  # the train step train() runs, built by the same program builder, abstract
        compiled = build_program(config, mesh, abstract=True).lower_train_step().compile()
    out = {
        "config": config.get("name", ""),
        "mesh": list(mesh_sizes),
        "block_only": block_only,
        "tp_impl": config.parallel.tp_impl,
        "batch_size": config.train.batch_size,
        "seq_len": get_task(config.model).tokens_per_example(config.model, config.data.get("seq_len", 0)),
        "backend": jax.default_backend(),
    }
    out.update(comm_report(compiled))
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:10.2f} MiB"


def print_table(r: dict) -> None:
    what = "one block fwd+bwd" if r["block_only"] else "one train step"
    print(
        f"{r['config']}  mesh(data,fsdp,tensor)={tuple(r['mesh'])}  tp_impl={r['tp_impl']}  {what}  "
        f"batch {r['batch_size']} x {r['seq_len']}  ({r['backend']})"
    )
    print(f"  {'collective':<20}{'count':>6}{'bytes/device':>16}")
    for kind in KINDS:
        c = r["collectives"][kind]
        print(f"  {kind:<20}{c['count']:>6}{_mib(c['bytes']):>16}")
    print(f"  {'total':<20}{'':>6}{_mib(r['total_collective_bytes']):>16}")
    m = r["memory"]
    if m is None:
        print("  memory: not reported by this backend")
    else:
        parts = {k: _mib(m[f"{k}_bytes"]).strip() for k in ("argument", "output", "temp", "alias", "total")}
        print(
            f"  memory/device: arguments {parts['argument']}, outputs {parts['output']}, temporaries "
            f"{parts['temp']}, aliased {parts['alias']} -> total {parts['total']}"
        )


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    r = report(flags.FLAGS.config, MESH, block_only=flags.FLAGS.block_only)
    if flags.FLAGS.json:
        print(json.dumps(r))
    else:
        print_table(r)


if __name__ == "__main__":
    app.run(main)
