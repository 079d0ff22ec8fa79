"""Benchmarks on whatever backend JAX finds; writes OUT/bench.json and OUT/bench.md (see lax_pretrain/bench).

    lax-bench --suite=all --out=docs/benchmarks/cpu
    lax-bench --suite=layers --tiny --out=/tmp/bench
    lax-bench --suite=models --dtype=bfloat16 --cases=llama:1b:8x2048 --out=docs/benchmarks/h100
    lax-bench --suite=reference --xla_options=ynn_all --out=docs/benchmarks/cpu_speed
    lax-bench --suite=loop --cases=llama:nano:32x128 --out=docs/benchmarks/cpu_speed
    lax-bench --suite=device --out=docs/benchmarks/device     (scripts/device_check.sh: install, then this)
    python scripts/bench.py ...   (the same, from a checkout that is not installed)

A configuration error (an unknown suite, a malformed --cases or --memory_variants) prints one line
`error: ...` and returns 2; --verbose shows its traceback instead.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import jax

from lax_pretrain import bench
from lax_pretrain.bench import memory, models, reference
from lax_pretrain.timing import on_accelerator


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}={text}: expected comma-separated integers") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--suite", default="all", choices=(*bench.SUITES, "all"), help=f"all = {','.join(bench.ALL_SUITES)}"
    )
    p.add_argument("--out", default=None, help="output directory (default docs/benchmarks/<backend>)")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke version of every suite")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="compute dtype; auto: bfloat16 on accelerators (and always for the device suite), float32 on CPU",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (layers 5, models 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls before timing (1)")
    p.add_argument(
        "--min_sample_s", type=float, default=None, help="calls per timed sample last at least this"
    )
    p.add_argument(
        "--widths",
        default=None,
        help="layers: comma-separated widths (CPU 512,1024,2048; accelerators also 4096)",
    )
    p.add_argument("--tokens", type=int, default=None, help="layers: tokens per call (1024)")
    p.add_argument("--layer_kinds", default=None, help="layers: kinds (dense,svd,cola,tt)")
    p.add_argument("--crossings", default=None, help="layers: crossings (none,identity,kron,dense)")
    p.add_argument("--tt_orders", default=None, help="layers: TT orders (factor_first,sequential)")
    p.add_argument(
        "--cases",
        default=None,
        help="models, loop: FAMILY:PRESET:BATCH[xSEQ],... e.g. llama:nano:8x256,llama:60m:2x256,vit:tiny:32",
    )
    p.add_argument(
        "--kron_impls",
        default=None,
        help="layers, models: kron gate implementations of every +kron variant, e.g. factored,gemm (auto)",
    )
    p.add_argument(
        "--xla_options",
        default=None,
        help=f"reference: also time our step under these XLA:CPU option sets ({', '.join(reference.XLA_CPU_OPTIONS)})",
    )
    p.add_argument("--presets", default=None, help="device: LLaMA presets in running order (1b,60m,350m)")
    p.add_argument("--budget_s", type=float, default=None, help="device: seconds for the whole suite (420)")
    p.add_argument("--memory_presets", default=None, help="memory: LLaMA presets (60m,130m)")
    p.add_argument("--memory_batch", type=int, default=None, help="memory: per-device batch (16)")
    p.add_argument("--memory_seq", type=int, default=None, help="memory: sequence length (256)")
    p.add_argument(
        "--memory_variants",
        default=None,
        help="memory: KIND:CROSSING:REMAT,... (default dense, cola, cola+cola_m, cola+full)",
    )
    p.add_argument(
        "--memory_precisions",
        default=None,
        help="memory: fp32,bf16 (default fp32; bf16 = the CoLA code's pure-bf16 parameters and moments)",
    )
    p.add_argument(
        "--cpu_drop_remat",
        action="store_true",
        help="memory: compile as XLA:CPU does by default (which drops remat)",
    )
    p.add_argument("--verbose", action="store_true", help="show the full traceback of a configuration error")
    return p


def _settings(a: argparse.Namespace) -> dict[str, dict]:
    """Per-suite keyword arguments of `bench.run` from the flags that were given."""
    given = (("repeats", a.repeats), ("warmup", a.warmup), ("min_sample_s", a.min_sample_s))
    timing = {k: v for k, v in given if v is not None}
    settings: dict[str, dict] = {
        "layers": dict(timing),
        "models": dict(timing),
        "memory": {},
        "reference": dict(timing),
        "loop": {"repeats": a.repeats} if a.repeats else {},
        "device": dict(timing),
    }
    if a.widths:
        settings["layers"]["widths"] = _ints("--widths", a.widths)
    if a.tokens:
        settings["layers"]["tokens"] = a.tokens
    for flag, key in (("layer_kinds", "kinds"), ("crossings", "crossings"), ("tt_orders", "tt_orders")):
        if getattr(a, flag):
            settings["layers"][key] = _names(getattr(a, flag))
    if a.cases:
        settings["models"]["cases"] = settings["loop"]["cases"] = models.parse_cases(a.cases)
    if a.kron_impls:
        settings["models"]["kron_impls"] = settings["layers"]["kron_impls"] = _names(a.kron_impls)
    if a.xla_options:
        settings["reference"]["xla_options"] = reference.parse_xla_options(a.xla_options)
    if a.presets:
        settings["device"]["presets"] = _names(a.presets)
    if a.budget_s:
        settings["device"]["budget_s"] = a.budget_s
    if a.memory_presets:
        settings["memory"]["presets"] = tuple(x.strip() for x in a.memory_presets.split(",") if x.strip())
    if a.memory_batch:
        settings["memory"]["batch_size"] = a.memory_batch
    if a.memory_seq:
        settings["memory"]["seq_len"] = a.memory_seq
    if a.memory_variants:
        settings["memory"]["variants"] = memory.parse_variants(a.memory_variants)
    if a.memory_precisions:
        precisions = a.memory_precisions.split(",")
        settings["memory"]["precisions"] = tuple(x.strip() for x in precisions if x.strip())
    if a.cpu_drop_remat:
        settings["memory"]["keep_remat_on_cpu"] = False
    return settings


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    out = Path(a.out or f"docs/benchmarks/{jax.default_backend()}")
    suites = bench.ALL_SUITES if a.suite == "all" else (a.suite,)
    dtype = a.dtype
    if dtype == "auto":
        dtype = "bfloat16" if on_accelerator() or suites == ("device",) else "float32"
    given = argv if argv is not None else sys.argv[1:]
    command = "python scripts/bench.py " + " ".join(shlex.quote(x) for x in given)
    try:
        json_path, md_path = bench.run(
            suites, out, tiny=a.tiny, dtype=dtype, command=command.strip(), settings=_settings(a)
        )
    except ValueError as e:
        if a.verbose:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {json_path} and {md_path}")
    return 0
