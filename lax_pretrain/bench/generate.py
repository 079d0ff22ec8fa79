"""Generation speed: KV-cached decoding (lax_pretrain.models.generate) vs the uncached recompute.

    python scripts/bench_generate.py [--new_tokens=256 --prompt_len=32 --repeats=5 --out=docs/benchmarks/generate]

The model is `llama_config(preset, kind, lax)` at float32 with random weights, batch 1. Uncached is what
`lax-sample` did before the cache: one jitted forward over a fixed window of prompt + new tokens per new
token (greedy). Cached is `generate(...)`: one prefill and a jitted `while_loop` of one-token steps. Both are
compiled before timing; the repeats interleave the two (alternating order) and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lax_pretrain.bench.timing import machine_info
from lax_pretrain.config import llama_config
from lax_pretrain.models.generate import generate
from lax_pretrain.models.llama import Llama


def uncached_greedy(model: Llama, ids: list[int], new_tokens: int) -> list[int]:
    window = len(ids) + new_tokens
    graphdef, state = nnx.split(model)  # a pure jitted forward: no per-call graph traversal in the baseline
    fwd = jax.jit(lambda st, t, pos: jnp.argmax(nnx.merge(graphdef, st)(t)[0, pos]))
    buffer = np.zeros((1, window), np.int32)
    buffer[0, : len(ids)] = ids
    n = len(ids)
    for _ in range(new_tokens):
        buffer[0, n] = int(fwd(state, jnp.asarray(buffer), n - 1))
        n += 1
    return buffer[0, len(ids) :].tolist()


def run(
    *, preset: str = "nano", kind: str = "cola", lax: str = "kron", new_tokens: int = 256, prompt_len: int = 32,
    repeats: int = 5,
) -> dict:  # fmt: skip
    cfg = llama_config(preset, kind=kind, lax=lax).model
    cfg.dtype, cfg.param_dtype = "float32", "float32"
    model = Llama(cfg, rngs=nnx.Rngs(0))
    ids = np.random.default_rng(0).integers(1, cfg.vocab_size, size=prompt_len).tolist()
    fns = {
        "uncached": lambda: uncached_greedy(model, ids, new_tokens),
        "cached": lambda: generate(model, np.asarray([ids]), max_new_tokens=new_tokens)[0][0].tolist(),
    }
    outputs = {name: fn() for name, fn in fns.items()}  # compile both
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(s) for name, s in samples.items()}
    return {
        "model": {
            "preset": preset,
            "kind": kind,
            "lax": lax,
            "dtype": "float32",
            "scan_layers": cfg.scan_layers,
        },
        "batch": 1,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "seconds": samples,
        "median_s": med,
        "tokens_per_s": {name: new_tokens / s for name, s in med.items()},
        "speedup": med["uncached"] / med["cached"],
        "same_tokens": outputs["uncached"] == outputs["cached"],
        "machine": machine_info(),
        "command": " ".join(shlex.quote(a) for a in ["python", "scripts/bench_generate.py", *sys.argv[1:]]),
    }


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(result, indent=2) + "\n")
    m, mach = result["model"], result["machine"]
    lines = [
        "# Generation: KV cache vs uncached recompute",
        "",
        f"`{result['command']}`",
        "",
        f"Model: LLaMA `{m['preset']}`, kind `{m['kind']}`, LaX `{m['lax']}`, {m['dtype']}, random weights; "
        f"batch {result['batch']}, prompt {result['prompt_len']} tokens, {result['new_tokens']} new tokens "
        f"(greedy), median of {result['repeats']} interleaved repeats after compilation.",
        "",
        "| path | median s | tokens/s |",
        "|---|---:|---:|",
        *(
            f"| {name} | {result['median_s'][name]:.3f} | {result['tokens_per_s'][name]:.1f} |"
            for name in ("uncached", "cached")
        ),
        "",
        f"Speedup: **{result['speedup']:.1f}x**. Same tokens: {result['same_tokens']}.",
        "",
        f"Machine: {mach['cpu_model']}, {mach['cpu_affinity']} usable of {mach['cpu_count']} CPUs, backend "
        f"{mach['backend']}, jax {mach['jax']}, flax {mach['flax']}, {mach['platform_string']}, "
        f"load average {mach['loadavg']}, {mach['time_utc']}.",
        "",
    ]
    (out / "generate.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="nano")
    p.add_argument("--kind", default="cola")
    p.add_argument("--lax", default="kron")
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="docs/benchmarks/generate")
    a = p.parse_args(argv)
    result = run(
        preset=a.preset,
        kind=a.kind,
        lax=a.lax,
        new_tokens=a.new_tokens,
        prompt_len=a.prompt_len,
        repeats=a.repeats,
    )
    write(result, Path(a.out))
    print(f"uncached {result['median_s']['uncached']:.3f}s  cached {result['median_s']['cached']:.3f}s  "
          f"speedup {result['speedup']:.1f}x  same tokens {result['same_tokens']}")  # fmt: skip
    return 0
