"""Benchmarks of lax-pretrain on whatever backend JAX finds: layers, models (train step), memory.

    from lax_pretrain import bench
    bench.run(["layers", "models", "memory"], "docs/benchmarks/cpu")   # writes bench.json + bench.md
    python scripts/bench.py --suite=all --out=docs/benchmarks/cpu [--tiny] [--dtype=bfloat16]

Suites (each module's docstring has the details):
  layers   forward + backward time per token of one d -> d projection per kind / crossing / TT order
           (`bench.layers.run_layers`), with analytic FLOPs and measured-vs-FLOP-predicted ratios to dense.
  models   the real jitted train step of LLaMA / ViT in every kind +- LaX (`bench.models.run_models`):
           step time, tokens/s or images/s, TFLOP/s, MFU (accelerators), ratios to dense and to no-LaX.
  memory   `compiled.memory_analysis()` of the train step, compile only (`bench.memory.run_memory`).
  reference  our train step side by side with a plain-JAX x @ W and an eager PyTorch implementation of the same
           model and step, optionally under XLA:CPU compile options (`bench.reference.run_reference`).
  loop     `train()` itself against its bare compiled step, steady state (`bench.loop.run_loop`).
  device   the paper presets on one accelerator in bf16 at the largest batch that fits, planner vs measured peak
           memory (`bench.device.run_device`; scripts/device_check.sh; not part of `all`).
Timing methodology (`lax_pretrain.timing`): AOT compile, warm-up, block_until_ready, repeats interleaved round-robin
across the candidates of one table, medians with min/max/IQR; machine, CPU count and load average recorded.
`bench.report` writes OUT/bench.json and OUT/bench.md with a targets section.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lax_pretrain.bench import device, layers, loop, memory, models, reference, report
from lax_pretrain.machine import machine_info
from lax_pretrain.timing import fast_compile

SUITES = report.SUITES
ALL_SUITES = report.ALL_SUITES


def tiny_settings() -> dict[str, dict[str, Any]]:
    """The seconds-long smoke versions of the suites."""
    return {
        "layers": dict(widths=(64,), tokens=64, repeats=2, warmup=1, min_sample_s=0.0),
        "models": dict(cases=models.default_cases(tiny=True), repeats=2, warmup=1, min_sample_s=0.0),
        "memory": dict(presets=("60m",), batch_size=2, seq_len=32, tiny=True),
        "reference": dict(cases=reference.default_cases(tiny=True), repeats=2, warmup=1, min_sample_s=0.0),
        "loop": dict(tiny=True),
        "device": dict(tiny=True, repeats=2, warmup=1, min_sample_s=0.0),
    }


def run(
    suites: Iterable[str],
    out_dir: str | Path,
    *,
    tiny: bool = False,
    dtype: str = "float32",
    command: str = "",
    settings: dict[str, dict[str, Any]] | None = None,
    log=print,
) -> tuple[Path, Path]:
    """Runs `suites` in order, writing OUT/bench.json and bench.md after each; returns their paths.

    settings: per-suite keyword overrides of `run_layers` / `run_models` / `run_memory`."""
    suites = list(suites)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    runners = {
        "layers": layers.run_layers,
        "models": models.run_models,
        "memory": memory.run_memory,
        "reference": reference.run_reference,
        "loop": loop.run_loop,
        "device": device.run_device,
    }
    base = tiny_settings() if tiny else {}
    paths = None
    for name in suites:
        kwargs = {**base.get(name, {}), **(settings or {}).get(name, {})}
        start = time.perf_counter()
        info = machine_info()

        def finished(result, name=name, start=start, info=info):
            result.update(machine=info, command=command, tiny=tiny, wall_s=time.perf_counter() - start)
            return report.write(out_dir, {name: result})

        if "progress" in inspect.signature(runners[name]).parameters:
            kwargs["progress"] = finished  # a long suite writes what it has after each part
        with fast_compile(tiny):
            result = runners[name](dtype=dtype, log=log, **kwargs)
        paths = finished(result)
        log(f"[{name}] done in {result['wall_s']:.0f}s -> {paths[0]}, {paths[1]}")
    if paths is None:
        raise ValueError("no suite to run")
    return paths


__all__ = [
    "ALL_SUITES",
    "SUITES",
    "device",
    "fast_compile",
    "layers",
    "loop",
    "machine_info",
    "memory",
    "models",
    "reference",
    "report",
    "run",
    "tiny_settings",
]
