"""Before you launch: will a config fit, and how fast will it run? Compiles the real train step ahead of time
(nothing is allocated, no data is read) and reports, per device, the memory by term, the FLOPs, the collective
traffic, and a roofline estimate of step time and MFU.

    lax-plan --config=configs/llama.py:1b,kind=cola,lax=kron,precision=bf16 --target=v5p:4x4x4 [--slices=2]
    lax-plan --config=... --target=h100x64 [--json] [--memory_gib=60]
    lax-plan --config=... --devices=64 --mesh=1,64,1 --accelerator=h100,v5p      (the CPU estimate)
    python -m lax_pretrain.plan ...   (the same)

--target: a TPU slice (v4:2x2x4, v5e:16x16, v5p:4x4x4, v6e:8x8, ...) or a GPU system (h100x8, h100x64 = 8
hosts of 8, h200x8, a100-80gbx8, h100x4), `--slices=N` of them: the step is compiled by THAT system's compiler
(libtpu, or XLA's GPU compiler with a GPU description from lax_pretrain/targets/gpu/) over its devices, in a
subprocess of the plan venv (`make install-plan`). Memory is the target compiler's buffer assignment; on a TPU
a step that does not fit is the compiler's own RESOURCE_EXHAUSTED, reported with its numbers; on a GPU the
peak is compared with the device memory. Everything that depends on the device kind (attention, the kron gate)
follows the target. --devices: the fallback, N fake CPU devices (the CPU compiler estimates accelerator
memory: it fuses and schedules differently), judged against --accelerator (names from
lax_pretrain/train/accelerators.py). --mesh=DATA,FSDP,TENSOR must multiply out to the devices (default: the
config's mesh). --memory_gib: judge against this many GiB per device instead. `--config.x.y=...` overrides as
for lax-train. FLOPs: the compiled matmuls (dots, TPU convolutions, cuDNN attention) with every loop
iteration, beside the analytic count. Collectives: bytes per kind from the compiled HLO. Step time and MFU:
lax_pretrain/train/roofline.py (perfect overlap, a lower bound). Exit status 0 when the step fits, 1 when
not, 2 for bad input (a missing compiler: one line naming `make install-plan`).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import sys
import time
from typing import Any

import jax
from absl import flags
from flax import nnx
from ml_collections import config_flags

from lax_pretrain import cli
from lax_pretrain.layers.crossing import KronGate
from lax_pretrain.models.stats import abstract_model, model_stats
from lax_pretrain.parallel import MESH_AXES, make_mesh, mesh_sizes, num_slices
from lax_pretrain.parallel.comm import KINDS, comm_report
from lax_pretrain.parallel.dcn import network_split
from lax_pretrain.parallel.rules import rules_from_config
from lax_pretrain.parallel.target import compiling_for
from lax_pretrain.targets import Target, parse_target
from lax_pretrain.targets.compile import compile_for_target, target_tracing
from lax_pretrain.targets.compilers import (
    CHILD_VAR,
    compiler_missing_here,
    missing_compiler,
    plan_python,
    run_in_plan_venv,
)
from lax_pretrain.targets.kernels import kernel_counts, lax_kernels
from lax_pretrain.train.accelerators import GIB, accelerator
from lax_pretrain.train.preflight import compiler_options, step_memory
from lax_pretrain.train.program import build_program
from lax_pretrain.train.roofline import hlo_cost, roofline
from lax_pretrain.train.validate import validate_config

FLAGS = cli.new_flags()
config_flags.DEFINE_config_file(
    "config", None, "Recipe file and compact argument, e.g. configs/llama.py:1b,kind=cola", flag_values=FLAGS
)
flags.DEFINE_string(
    "target",
    None,
    "A TPU slice (v5p:4x4x4) or GPU system (h100x8): its compiler plans the step.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "slices", 1, "How many of --target's slices (TPU multi-slice over DCN).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "devices", None, "How many fake CPU devices to compile for (no --target).", flag_values=FLAGS
)
flags.DEFINE_string("mesh", None, "DATA,FSDP,TENSOR sizes (default: the config's mesh).", flag_values=FLAGS)
flags.DEFINE_string(
    "accelerator",
    "h100",
    "Comma-separated accelerator names (the CPU path; a --target is its own).",
    flag_values=FLAGS,
)
flags.DEFINE_float("memory_gib", None, "Judge against this many GiB per device instead.", flag_values=FLAGS)
flags.DEFINE_bool("json", False, "Print one JSON object instead of the report.", flag_values=FLAGS)
flags.mark_flags_as_required(["config"], flag_values=FLAGS)


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


def parse_mesh(
    text: str | None, config: Any, n: int, source: str = "--devices", slices: int = 1
) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes within a slice (the slices: config.mesh.dcn_*; parallel/mesh.py)."""
    if text is None:
        return mesh_sizes(config.mesh, n, slices).ici
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"--mesh={text} must be three positive sizes DATA,FSDP,TENSOR")
    if math.prod(sizes) != n // slices:
        raise ValueError(
            f"--mesh={text}: data x fsdp x tensor = {' x '.join(map(str, sizes))} = {math.prod(sizes)} devices, "
            f"but {source} has {n // slices}" + (" per slice" if slices > 1 else "")
        )
    return sizes


def plan(
    config: Any,
    mesh,
    accelerators: list,
    *,
    memory_limit: float | None = None,
    target: Target | None = None,
) -> dict[str, Any]:
    """Compiles `config`'s train step for `mesh` and returns the JSON-ready report. `target`: the system whose
    devices `mesh` holds (their compiler plans, `accelerators` is its one entry); None: fake CPU devices."""
    n = mesh.size
    device = mesh.devices.flat[0]
    options = compiler_options(backend=device.platform if target else "cpu")
    t0 = time.perf_counter()
    program = build_program(config, mesh, abstract=True)
    with target_tracing(target):
        lowered = program.lower_train_step()
    t1 = time.perf_counter()
    compiled, oom, options = compile_for_target(lowered, options)
    t2 = time.perf_counter()

    seq_len = config.data.get("seq_len", 0)
    with compiling_for(device):
        stats = model_stats(config.model, seq_len)
        choices = device_choices(config)
    model_flops = stats.train_flops_per_token * config.train.batch_size * stats.seq_len / n
    param_leaves = jax.tree.leaves(program.params)
    out: dict[str, Any] = {
        "config": config.get("name", ""),
        "devices": n,
        "target": target_json(target, device),
        "mesh": dict(zip(MESH_AXES, (int(mesh.shape[a]) for a in MESH_AXES))),
        "batch_size": int(config.train.batch_size),
        "tokens_per_example": int(stats.seq_len),
        "grad_accum": int(config.train.grad_accum),
        "remat": str(config.model.get("remat", "none")),
        "compute_dtype": str(config.model.get("dtype", "")),
        "param_dtype": ",".join(sorted({str(x.dtype) for x in param_leaves})),
        "params": stats.total_params,
        "parameter_bytes_unsharded": sum(math.prod(x.shape) * x.dtype.itemsize for x in param_leaves),
        "choices": choices,
        "xla": xla_record(target, options),
        "compile_s": {"build_and_lower": t1 - t0, "compile": t2 - t1},
    }
    if compiled is None:  # the TPU compiler's own "does not fit"
        out["memory"] = argument_memory(program)
        out["out_of_memory"] = oom.to_json()
        acc = accelerators[0]
        out["accelerators"] = [
            {
                "name": acc.name,
                "limit_bytes": oom.available_bytes or acc.hbm_bytes,
                "fits": False,
                "verdict": with_hint(
                    f"the {target.name} compiler says the step does not fit: {oom.message}",
                    replicated_factors_hint(config, out),
                ),
            }
        ]
        return out

    memory = step_memory(compiled)
    analysis = compiled.memory_analysis()
    # The compiler's argument buffers beyond the logical bytes of the state and batch and the int32 step counter:
    # the TPU's tiled layouts (0 on CPU and GPU). The peak counts them.
    step_counter = jax.tree.leaves(compiled.args_info[0][4])[0]._aval.dtype.itemsize
    padding = max(0, int(analysis.argument_size_in_bytes) - memory.arguments - step_counter)
    out["memory"] = {
        **memory.to_json(),
        "argument_bytes_compiler": int(analysis.argument_size_in_bytes),
        "argument_padding": padding,
        "peak": memory.peak + padding,
    }
    hlo = compiled.as_text()
    comm = comm_report(compiled)
    cost = hlo_cost(hlo)
    xla = compiled.cost_analysis() or {}  # the GPU client gives none
    domain = target_domains(mesh, target)
    out.update(
        {
            "flops": {
                "compiled": cost.flops,
                "analytic": model_flops,
                "xla_cost_analysis": float(xla.get("flops", 0.0)),
            },
            "hbm_bytes": {
                "compiled": cost.hbm_bytes,
                "xla_cost_analysis": float(xla.get("bytes accessed", 0.0)),
            },
            "collectives": comm["collectives"],
            "total_collective_bytes": comm["total_collective_bytes"],
            "collective_links": network_split(hlo, [domain(p) for p in range(n)]) if domain else None,
            "kernels": kernel_counts(hlo),
            "attention_compiled": "cudnn" if "__cudnn$fmha" in hlo else "xla",
            "lax_kernels": lax_kernels(hlo),
            "accelerators": [],
        }
    )
    peak = out["memory"]["peak"]
    for acc in accelerators:
        limit = memory_limit if memory_limit is not None else device_memory(target, acc)
        where = f"--memory_gib={memory_limit / GIB:g}" if memory_limit is not None else f"{acc.name} HBM"
        compiler_judged = target is not None and target.platform == "tpu" and memory_limit is None
        fits = True if compiler_judged else peak <= limit  # libtpu refuses what does not fit (above)
        if compiler_judged:
            verdict = (
                f"the {target.name} compiler fits the step in HBM: {_size(peak).strip()} per device "
                f"(largest: {', '.join(f'{k} {_size(v).strip()}' for k, v in memory.largest_terms())}; "
                f"layout padding of the arguments {_size(padding).strip()})"
            )
        else:
            verdict = memory.message(limit, where) if padding == 0 else memory.message(limit - padding, where)
            verdict = verdict if fits else with_hint(verdict, replicated_factors_hint(config, out))
        est = roofline(cost, acc, num_devices=n, model_flops=model_flops, domain_of=domain)
        out["accelerators"].append(
            {"name": acc.name, "limit_bytes": limit, "fits": fits, "verdict": verdict, **est.to_json()}
        )
    return out


RANK_RULE = """--config.parallel.rules='(("rank", "fsdp"),)'"""


def replicated_factors_hint(config: Any, report: dict[str, Any]) -> str:
    """For a step that does not fit: when the parameters per device are far above their fully sharded size
    because the rules leave the low-rank factors' `rank` axis unsharded (of each factor pair only the one with
    an `embed` axis is sharded over fsdp), that and the rule that shards them; '' otherwise."""
    mesh = report["mesh"]
    ways = mesh["fsdp"] * mesh["tensor"]
    if (
        ways == 1
        or config.model.linear.kind == "dense"
        or rules_from_config(config.parallel).get("rank") is not None
    ):
        return ""
    ratio = report["memory"]["parameters"] / (report["parameter_bytes_unsharded"] / ways)
    if ratio < 2:
        return ""
    return (
        f"The parameters take {ratio:.0f}x their fully sharded size per device: the rules leave the low-rank "
        f"factors' rank axis unsharded; {RANK_RULE} shards it over fsdp (parameters, gradients and optimizer "
        "state; the forward then all-gathers those factors too)"
    )


def with_hint(verdict: str, hint: str) -> str:
    return f"{verdict.rstrip('.')}. {hint}" if hint else verdict


def argument_memory(program) -> dict[str, int]:
    """Per-device bytes of the step's arguments from their shapes and shardings (no compiled program needed)."""

    def shard_bytes(tree) -> int:
        return sum(
            math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
            for x in jax.tree.leaves(tree)
            if hasattr(x, "sharding")
        )

    terms = {
        "parameters": shard_bytes(program.params),
        "optimizer_state": shard_bytes(program.opt_state),
        "frozen": shard_bytes(program.frozen),
        "batch": shard_bytes(program.batch_spec),
    }
    return {**terms, "arguments": sum(terms.values()), "temporaries": None, "peak": None}


def device_choices(config: Any) -> dict[str, list[str]]:
    """What the device-dependent `auto` choices resolved to for the device being compiled for."""
    model = abstract_model(config.model)
    attention, kron = set(), set()
    for _, module in nnx.iter_modules(model):
        if isinstance(getattr(module, "attention", None), str):
            attention.add(module.attention)
        if isinstance(module, KronGate):
            kron.add(module.impl)
    return {"attention": sorted(attention), "kron_impl": sorted(kron)}


def target_json(target: Target | None, device) -> dict[str, Any]:
    if target is None:
        return {"name": "cpu", "platform": "cpu", "device_kind": device.device_kind, "compiler": "XLA:CPU"}
    package = "libtpu" if target.platform == "tpu" else "jax-cuda12-plugin"
    return {
        "name": target.name,
        "platform": target.platform,
        "slices": target.slices,
        "topology": target.topology,
        "device_kind": device.device_kind,
        "compiler": f"{package} {importlib.metadata.version(package)}",
    }


def xla_record(target: Target | None, options: dict[str, Any]) -> dict[str, Any]:
    """The compiler flags and environment this plan compiled with, so that a run can use the same."""
    env = {k: os.environ[k] for k in ("XLA_FLAGS", "LIBTPU_INIT_ARGS") if os.environ.get(k)}
    notes = []
    if target is None:
        notes.append("compiled by XLA:CPU on fake devices: an estimate of the accelerator's program")
    elif target.platform == "gpu":
        if options.get("xla_gpu_enable_triton_gemm") is False:
            notes.append("Triton's default GEMM tiling failed without autotuning: GEMMs compiled with cuBLAS")
        notes.append(
            "compiled without a GPU: no autotuning (default GEMM and fusion configurations), cuDNN "
            "attention's workspace not sized; set XLA_PYTHON_CLIENT_MEM_FRACTION so that the fraction of "
            "the device memory JAX takes (0.75 by default) covers the peak"
        )
    return {"compiler_options": dict(options), "environment": env, "notes": notes}


def device_memory(target: Target | None, acc) -> float:
    """The memory a device offers: a GPU target's description (what its compiler planned against), else the
    accelerator table's HBM."""
    if target is not None and target.platform == "gpu":
        from lax_pretrain.targets.devices import gpu_description

        for line in gpu_description(target).splitlines():
            if line.strip().startswith("device_memory_size:"):
                return float(line.split(":")[1])
    return acc.hbm_bytes


def target_domains(mesh, target: Target | None):
    """Partition index -> the interconnect domain of its device (a TPU slice, a GPU host), for splitting the
    collectives into ICI/NVLink and DCN/network bytes; None for fake CPU devices (the table's domains)."""
    if target is None:
        return None
    devices = list(mesh.devices.flat)
    if target.platform == "tpu":
        return lambda p: getattr(devices[p], "slice_index", 0)
    return lambda p: devices[p].process_index


def _size(b: float) -> str:
    return f"{b / GIB:8.2f} GiB" if abs(b) >= GIB else f"{b / 2**20:8.1f} MiB"


def _seconds(s: float | None) -> str:
    return "   n/a" if s is None else f"{s * 1e3:8.1f} ms"


def _percent(x: float | None) -> str:
    return "   n/a" if x is None else f"{x * 100:5.1f}%"


def format_report(r: dict[str, Any]) -> str:
    m, mesh, t = r["memory"], r["mesh"], r["target"]
    per_device = r["batch_size"] // max(mesh["data"] * mesh["fsdp"], 1)
    on_cpu = t["platform"] == "cpu"
    compiled_for = (
        f"{r['devices']} fake CPU devices"
        if on_cpu
        else f"{t['name']}"
        + (f" x {t['slices']} slices" if t["slices"] > 1 else "")
        + f" ({r['devices']} x {t['device_kind']}) by {t['compiler']}"
    )
    source = "CPU compilation estimates accelerator memory" if on_cpu else "memory from the target compiler"
    lines = [
        f"{r['config']}: {r['devices']} devices, mesh data={mesh['data']} fsdp={mesh['fsdp']} "
        f"tensor={mesh['tensor']}; batch {r['batch_size']} x {r['tokens_per_example']} tokens ({per_device} per "
        f"data shard), grad_accum {r['grad_accum']}, remat {r['remat']}, compute {r['compute_dtype']}, "
        f"parameters {r['param_dtype']}",
        f"compiled for {compiled_for} in {r['compile_s']['compile']:.1f} s "
        f"(+{r['compile_s']['build_and_lower']:.1f} s to build and lower); {source}",
        f"device choices: attention {'/'.join(r['choices']['attention']) or '-'}, kron gate "
        f"{'/'.join(r['choices']['kron_impl']) or '-'}" + "".join(f"; {note}" for note in r["xla"]["notes"]),
        "",
        "memory per device",
        f"  parameters          {_size(m['parameters'])}   ({r['params'] / 1e6:,.1f}M x {r['param_dtype']} = "
        f"{r['parameter_bytes_unsharded'] / GIB:.2f} GiB unsharded)",
        f"  optimizer state     {_size(m['optimizer_state'])}",
        f"  frozen + batch      {_size(m['frozen'] + m['batch'])}",
    ]
    if "out_of_memory" in r:
        oom = r["out_of_memory"]
        lines += ["", f"{t['name']}: DOES NOT FIT (the compiler's own verdict): {oom['message']}"]
        return "\n".join(lines)
    if m.get("argument_padding"):
        lines.append(f"  layout padding      {_size(m['argument_padding'])}   (the target's tiled layouts)")
    lines += [
        f"  temporaries         {_size(m['temporaries'])}   (activations, workspace and the gradients: "
        f"~{m['gradients'] / GIB:.2f} GiB, estimated as the parameters)",
        f"  outputs - aliased   {_size(m['outputs'] - m['aliased'])}",
        f"  generated code      {_size(m['generated_code'])}",
        f"  peak                {_size(m['peak'])}",
        "",
        "work per step and device",
        f"  FLOPs        compiled {r['flops']['compiled'] / 1e12:.3f} T (matmuls, every loop iteration); analytic "
        f"{r['flops']['analytic'] / 1e12:.3f} T; XLA cost_analysis {r['flops']['xla_cost_analysis'] / 1e12:.3f} T "
        "(counts a loop body once; none on GPU)",
        f"  HBM traffic  {_size(r['hbm_bytes']['compiled']).strip()} (from the "
        + ("CPU fusions: runs high)" if on_cpu else f"{t['platform'].upper()} compiler's fusions)"),
        f"  kernels      {r['kernels']['total']:,} per step (fusions {r['kernels'].get('fusion', 0):,}, custom "
        f"calls {r['kernels'].get('custom-call', 0):,})"
        + (
            f"; the LaX gate in {lk['gate']:,}, the latent norm in {lk['latent_norm']:,}, both in "
            f"{lk['gate_and_latent_norm']:,}"
            if (lk := r["lax_kernels"])["gate"] or lk["latent_norm"]
            else ""
        ),
        "  collectives  "
        + (
            ", ".join(
                f"{k} {_size(v['bytes']).strip()} ({v['count']}x)"
                for k in KINDS
                if (v := r["collectives"][k])["count"]
            )
            or "none"
        ),
    ]
    if r.get("collective_links"):
        links = r["collective_links"]
        lines.append(
            f"  links        inside a slice/host (ICI, NVLink) {_size(links['ici']['total']).strip()}, across "
            f"(DCN, network) {_size(links['dcn']['total']).strip()}"
        )
    lines += [
        "",
        "roofline per step (perfect overlap; 'HBM hidden': without the HBM term)",
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


def _run(fv: flags.FlagValues, argv: list[str]) -> int:
    config = fv.config
    if fv.memory_gib is not None and fv.memory_gib <= 0:
        raise ValueError(f"--memory_gib={fv.memory_gib} must be > 0")
    limit = fv.memory_gib * GIB if fv.memory_gib is not None else None
    if fv.target is None:
        if fv.devices is None:
            raise ValueError("give --target=SYSTEM (its compiler plans) or --devices=N (fake CPU devices)")
        if fv.slices != 1:
            raise ValueError(f"--slices={fv.slices} needs --target")
        accelerators = [accelerator(name) for name in fv.accelerator.split(",") if name.strip()]
        if not accelerators:
            raise ValueError("--accelerator names no accelerator")
        devices, target = cpu_devices(fv.devices), None
    else:
        if fv.devices is not None:
            raise ValueError(
                f"--devices={fv.devices} and --target={fv.target}: give one (the target has its own)"
            )
        target = parse_target(fv.target, fv.slices)
        if not os.environ.get(CHILD_VAR):
            # This interpreter must not load the compilers (they change how jax starts): the plan venv runs it.
            python = plan_python()
            problem = missing_compiler(target, python)
            if problem:
                raise ValueError(problem)
            status, stdout, stderr = run_in_plan_venv(python, argv)
            sys.stdout.write(stdout)
            if stderr:
                print(stderr, file=sys.stderr)
            return status
        problem = compiler_missing_here(target)
        if problem:
            raise ValueError(problem)
        from lax_pretrain.targets.devices import topology_devices

        devices, accelerators = topology_devices(target), [accelerator(target.accelerator)]
    source = "--target" if target else "--devices"
    sizes = parse_mesh(fv.mesh, config, len(devices), source, num_slices(devices))
    with config.unlocked():
        config.mesh.update(dict(zip(MESH_AXES, sizes)), num_devices=len(devices) if target is None else 0)
    mesh = make_mesh(config.mesh, devices=devices)
    with compiling_for(devices[0]):
        validate_config(config, mesh)  # every config error, before anything compiles
    report = plan(config, mesh, accelerators, memory_limit=limit, target=target)
    print(json.dumps(report, indent=2) if fv.json else format_report(report))
    return 0 if all(a["fits"] for a in report["accelerators"]) else 1


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        # This process is the command: it compiles for fake CPU or target devices, so never start an accelerator.
        jax.config.update("jax_platforms", "cpu")
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args = args[1:]  # sys.argv-style: the program name first
    return cli.run(lambda fv: _run(fv, args), FLAGS, argv)


if __name__ == "__main__":
    sys.exit(main())
