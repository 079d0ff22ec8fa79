"""Before you launch: will a config fit, and how fast will it run? Compiles the real train step for N fake CPU
devices (nothing is allocated, no data is read) and reports, per device, the memory by term, the FLOPs, the
collective traffic, and a roofline estimate of step time and MFU on the accelerators asked for.

    lax-plan --config=configs/llama.py:1b,kind=cola,lax=kron,precision=bf16 --devices=64 --mesh=1,64,1 \
        --accelerator=h100,v5p [--json] [--memory_gib=60]
    python -m lax_pretrain.plan ...   (the same)

--devices: how many fake CPU devices to compile for (set before JAX starts); --mesh=DATA,FSDP,TENSOR must
multiply out to it (default: the config's mesh). --accelerator: comma-separated names from the table in
lax_pretrain/train/accelerators.py. --memory_gib: judge against this many GiB per device instead of the
accelerator's HBM. `--config.x.y=...` overrides as for lax-train (e.g. --config.train.batch_size=256).

Memory (lax_pretrain/train/preflight.py): XLA's buffer assignment of the step, compiled for CPU with remat kept
as accelerators keep it. CPU compilation estimates accelerator memory: the GPU and TPU compilers fuse, lay out
and schedule differently. FLOPs: the compiled dots with every loop iteration (XLA's cost_analysis, which counts
a scanned body once, is shown beside them) and the analytic count of the factorized model. Collectives: the comm
report's bytes per kind. Step time and MFU: lax_pretrain/train/roofline.py (perfect overlap, a lower bound).
Exit status 0 when the step fits on every accelerator asked for, 1 when not, 2 for bad input.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import jax
from absl import flags
from ml_collections import config_flags

from lax_pretrain import cli
from lax_pretrain.models.stats import model_stats
from lax_pretrain.parallel import MESH_AXES, make_mesh, mesh_shape
from lax_pretrain.parallel.comm import KINDS, comm_report
from lax_pretrain.train.accelerators import GIB, accelerator
from lax_pretrain.train.preflight import compiler_options, step_memory
from lax_pretrain.train.program import build_program
from lax_pretrain.train.roofline import hlo_cost, roofline
from lax_pretrain.train.validate import validate_config

FLAGS = cli.new_flags()
config_flags.DEFINE_config_file(
    "config", None, "Recipe file and compact argument, e.g. configs/llama.py:1b,kind=cola", flag_values=FLAGS
)
flags.DEFINE_integer("devices", None, "How many (fake CPU) devices to compile for.", flag_values=FLAGS)
flags.DEFINE_string("mesh", None, "DATA,FSDP,TENSOR sizes (default: the config's mesh).", flag_values=FLAGS)
flags.DEFINE_string("accelerator", "h100", "Comma-separated accelerator names.", flag_values=FLAGS)
flags.DEFINE_float("memory_gib", None, "Judge against this many GiB per device instead.", flag_values=FLAGS)
flags.DEFINE_bool("json", False, "Print one JSON object instead of the report.", flag_values=FLAGS)
flags.mark_flags_as_required(["config", "devices"], flag_values=FLAGS)


def cpu_devices(n: int) -> list:
    """`n` CPU devices: asks JAX for them when its backend has not started yet (this process is lax-plan)."""
    if n < 1:
        raise ValueError(f"--devices={n} must be >= 1")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass  # JAX already started in this process (a test, a notebook): use the CPU devices it has
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise ValueError(
            f"--devices={n}: JAX already started in this process with {len(devices)} CPU devices; "
            "run lax-plan as its own command"
        )
    return devices[:n]


def parse_mesh(text: str | None, config: Any, n: int) -> tuple[int, int, int]:
    if text is None:
        return mesh_shape(config.mesh, n)
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"--mesh={text} must be three positive sizes DATA,FSDP,TENSOR")
    if math.prod(sizes) != n:
        raise ValueError(
            f"--mesh={text}: data x fsdp x tensor = {' x '.join(map(str, sizes))} = {math.prod(sizes)} devices, "
            f"but --devices={n}"
        )
    return sizes


def plan(config: Any, mesh, accelerators: list, *, memory_limit: float | None = None) -> dict[str, Any]:
    """Compiles `config`'s train step for `mesh` (CPU devices) and returns the JSON-ready report."""
    n = mesh.size
    t0 = time.perf_counter()
    program = build_program(config, mesh, abstract=True)
    lowered = program.lower_train_step()
    t1 = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options(backend="cpu") or None)
    t2 = time.perf_counter()

    memory = step_memory(compiled)
    comm = comm_report(compiled)
    cost = hlo_cost(compiled.as_text())
    xla = compiled.cost_analysis() or {}
    seq_len = config.data.get("seq_len", 0)
    stats = model_stats(config.model, seq_len)
    model_flops = stats.train_flops_per_token * config.train.batch_size * stats.seq_len / n
    param_leaves = jax.tree.leaves(program.params)
    out: dict[str, Any] = {
        "config": config.get("name", ""),
        "devices": n,
        "mesh": dict(zip(MESH_AXES, (int(mesh.shape[a]) for a in MESH_AXES))),
        "batch_size": int(config.train.batch_size),
        "tokens_per_example": int(stats.seq_len),
        "grad_accum": int(config.train.grad_accum),
        "remat": str(config.model.get("remat", "none")),
        "compute_dtype": str(config.model.get("dtype", "")),
        "param_dtype": ",".join(sorted({str(x.dtype) for x in param_leaves})),
        "params": stats.total_params,
        "parameter_bytes_unsharded": sum(math.prod(x.shape) * x.dtype.itemsize for x in param_leaves),
        "memory": memory.to_json(),
        "flops": {
            "compiled": cost.flops,
            "analytic": model_flops,
            "xla_cost_analysis": float(xla.get("flops", 0.0)),
        },
        "hbm_bytes": {"compiled": cost.hbm_bytes, "xla_cost_analysis": float(xla.get("bytes accessed", 0.0))},
        "collectives": comm["collectives"],
        "total_collective_bytes": comm["total_collective_bytes"],
        "compile_s": {"build_and_lower": t1 - t0, "compile": t2 - t1},
        "accelerators": [],
    }
    for acc in accelerators:
        limit = memory_limit if memory_limit is not None else acc.hbm_bytes
        where = f"--memory_gib={memory_limit / GIB:g}" if memory_limit is not None else f"{acc.name} HBM"
        est = roofline(cost, acc, num_devices=n, model_flops=model_flops)
        out["accelerators"].append(
            {
                "name": acc.name,
                "limit_bytes": limit,
                "fits": memory.fits(limit),
                "verdict": memory.message(limit, where),
                **est.to_json(),
            }
        )
    return out


def _size(b: float) -> str:
    return f"{b / GIB:8.2f} GiB" if abs(b) >= GIB else f"{b / 2**20:8.1f} MiB"


def _seconds(s: float | None) -> str:
    return "   n/a" if s is None else f"{s * 1e3:8.1f} ms"


def _percent(x: float | None) -> str:
    return "   n/a" if x is None else f"{x * 100:5.1f}%"


def format_report(r: dict[str, Any]) -> str:
    m, mesh = r["memory"], r["mesh"]
    per_device = r["batch_size"] // max(mesh["data"] * mesh["fsdp"], 1)
    lines = [
        f"{r['config']}: {r['devices']} devices, mesh data={mesh['data']} fsdp={mesh['fsdp']} "
        f"tensor={mesh['tensor']}; batch {r['batch_size']} x {r['tokens_per_example']} tokens ({per_device} per "
        f"data shard), grad_accum {r['grad_accum']}, remat {r['remat']}, compute {r['compute_dtype']}, "
        f"parameters {r['param_dtype']}",
        f"compiled for {r['devices']} fake CPU devices in {r['compile_s']['compile']:.1f} s "
        f"(+{r['compile_s']['build_and_lower']:.1f} s to build and lower); CPU compilation estimates "
        "accelerator memory",
        "",
        "memory per device",
        f"  parameters          {_size(m['parameters'])}   ({r['params'] / 1e6:,.1f}M x {r['param_dtype']} = "
        f"{r['parameter_bytes_unsharded'] / GIB:.2f} GiB unsharded)",
        f"  optimizer state     {_size(m['optimizer_state'])}",
        f"  frozen + batch      {_size(m['frozen'] + m['batch'])}",
        f"  temporaries         {_size(m['temporaries'])}   (activations, workspace and the gradients: "
        f"~{m['gradients'] / GIB:.2f} GiB, estimated as the parameters)",
        f"  outputs - aliased   {_size(m['outputs'] - m['aliased'])}",
        f"  generated code      {_size(m['generated_code'])}",
        f"  peak                {_size(m['peak'])}",
        "",
        "work per step and device",
        f"  FLOPs        compiled {r['flops']['compiled'] / 1e12:.3f} T (dots, every loop iteration); analytic "
        f"{r['flops']['analytic'] / 1e12:.3f} T; XLA cost_analysis {r['flops']['xla_cost_analysis'] / 1e12:.3f} T "
        "(counts a loop body once)",
        f"  HBM traffic  {_size(r['hbm_bytes']['compiled']).strip()} (estimated from the CPU fusions)",
        "  collectives  "
        + (
            ", ".join(
                f"{k} {_size(v['bytes']).strip()} ({v['count']}x)"
                for k in KINDS
                if (v := r["collectives"][k])["count"]
            )
            or "none"
        ),
        "",
        "roofline per step (perfect overlap; 'HBM hidden': without the HBM term, which the CPU estimate "
        "overstates)",
        f"  {'accelerator':<11} {'memory':>20} {'compute':>11} {'HBM':>11} {'collectives':>11} "
        f"{'step time':>11} {'MFU':>6}   {'HBM hidden':>11} {'MFU':>6}",
    ]
    for a in r["accelerators"]:
        used = f"{m['peak'] / GIB:.1f}/{a['limit_bytes'] / GIB:.1f} GiB " + ("ok" if a["fits"] else "NO")
        lines.append(
            f"  {a['name']:<11} {used:>20} {_seconds(a['compute_s'])} {_seconds(a['hbm_s'])} "
            f"{_seconds(a['collective_s'])} {_seconds(a['step_s'])} {_percent(a['mfu'])}   "
            f"{_seconds(a['step_s_hbm_hidden'])} {_percent(a['mfu_hbm_hidden'])}"
            + (f"  ({a['bound']}-bound)" if a["bound"] else "  (collectives beyond one domain: not modelled)")
        )
    lines.append("")
    lines += [f"{a['name']}: {a['verdict']}" for a in r["accelerators"]]
    if r["compute_dtype"] != "bfloat16":
        lines.append(
            f"note: the step computes in {r['compute_dtype']}; the roofline assumes bf16 peak FLOP/s "
            "(dtype=bfloat16 or precision=bf16 in the compact argument)"
        )
    return "\n".join(lines)


def _run(fv: flags.FlagValues) -> int:
    config = fv.config
    accelerators = [accelerator(name) for name in fv.accelerator.split(",") if name.strip()]
    if not accelerators:
        raise ValueError("--accelerator names no accelerator")
    if fv.memory_gib is not None and fv.memory_gib <= 0:
        raise ValueError(f"--memory_gib={fv.memory_gib} must be > 0")
    devices = cpu_devices(fv.devices)
    sizes = parse_mesh(fv.mesh, config, fv.devices)
    with config.unlocked():
        config.mesh.update(dict(zip(MESH_AXES, sizes)), num_devices=len(devices))
    mesh = make_mesh(config.mesh, devices=devices)
    validate_config(config, mesh)  # every config error, before anything compiles
    limit = fv.memory_gib * GIB if fv.memory_gib is not None else None
    report = plan(config, mesh, accelerators, memory_limit=limit)
    print(json.dumps(report, indent=2) if fv.json else format_report(report))
    return 0 if all(a["fits"] for a in report["accelerators"]) else 1


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        # This process is the command: it compiles for fake CPU devices, so never start an accelerator.
        jax.config.update("jax_platforms", "cpu")
    return cli.run(_run, FLAGS, argv)


if __name__ == "__main__":
    sys.exit(main())
