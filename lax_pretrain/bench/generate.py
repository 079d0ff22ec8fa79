"""Generation speed: KV-cached decoding (lax_pretrain.models.generate) vs the uncached recompute.

    python scripts/bench_generate.py [--new_tokens=256 --prompt_len=32 --repeats=5 --out=docs/benchmarks/generate]

The model is `llama_config(preset, kind, lax)` at float32 with random weights, batch 1. Uncached is what
`lax-sample` did before the cache: one jitted forward over a fixed window of prompt + new tokens per new
token (greedy). Cached is `generate(...)`: one prefill and a jitted `while_loop` of one-token steps. Both are
compiled before timing; the repeats interleave the two (alternating order) and the medians are reported.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lax_pretrain import cli
from lax_pretrain.config import llama_config
from lax_pretrain.experiments.report import markdown_table
from lax_pretrain.machine import loadavg, machine_info, machine_line
from lax_pretrain.models.generate import generate
from lax_pretrain.models.llama import Llama
from lax_pretrain.timing import time_interleaved


def uncached_greedy(model: Llama, window: int) -> Callable[[list[int], int], list[int]]:
    """The recompute baseline: (prompt ids, new tokens) -> greedy tokens, one forward over a fixed window of
    `window` tokens per new token. Jitted once here, so every timed call reuses the compiled forward."""
    graphdef, state = nnx.split(model)  # a pure jitted forward: no per-call graph traversal in the baseline
    forward = jax.jit(lambda st, tokens_1xW, pos: jnp.argmax(nnx.merge(graphdef, st)(tokens_1xW)[0, pos]))

    def run(ids: list[int], new_tokens: int) -> list[int]:
        buffer_1xW = np.zeros((1, window), np.int32)
        buffer_1xW[0, : len(ids)] = ids
        n = len(ids)
        for _ in range(new_tokens):
            buffer_1xW[0, n] = int(forward(state, jnp.asarray(buffer_1xW), n - 1))
            n += 1
        return buffer_1xW[0, len(ids) :].tolist()

    return run


def run(
    *, preset: str = "nano", kind: str = "cola", lax: str = "kron", new_tokens: int = 256, prompt_len: int = 32,
    repeats: int = 5,
) -> dict:  # fmt: skip
    cfg = llama_config(preset, kind=kind, lax=lax).model
    model = Llama(cfg, rngs=nnx.Rngs(0))  # the recipe's float32 parameters and compute
    ids = np.random.default_rng(0).integers(1, cfg.vocab_size, size=prompt_len).tolist()
    recompute = uncached_greedy(model, prompt_len + new_tokens)
    fns = {
        "uncached": lambda: recompute(ids, new_tokens),
        "cached": lambda: generate(model, np.asarray([ids]), max_new_tokens=new_tokens)[0][0].tolist(),
    }
    outputs = {name: fn() for name, fn in fns.items()}  # compiles both before timing
    load_before = loadavg()
    timings = time_interleaved(fns, repeats=repeats, warmup=1)
    med = {name: t.median for name, t in timings.items()}
    return {
        "model": {
            "preset": preset,
            "kind": kind,
            "lax": lax,
            "dtype": cfg.dtype,
            "scan_layers": cfg.scan_layers,
        },
        "batch": 1,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "step_time": {name: t.to_json() for name, t in timings.items()},
        "median_s": med,
        "tokens_per_s": {name: new_tokens / s for name, s in med.items()},
        "speedup": med["uncached"] / med["cached"],
        "same_tokens": outputs["uncached"] == outputs["cached"],
        "machine": machine_info(),
        "load": {"before": load_before, "after": loadavg()},
        "command": " ".join(shlex.quote(a) for a in ["python", "scripts/bench_generate.py", *sys.argv[1:]]),
    }


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["model"]
    rows = [[name, f"{result['median_s'][name]:.3f}", f"{result['tokens_per_s'][name]:.1f}"]
            for name in ("uncached", "cached")]  # fmt: skip
    lines = [
        "# Generation: KV cache vs uncached recompute",
        "",
        f"Model: LLaMA `{m['preset']}`, kind `{m['kind']}`, LaX `{m['lax']}`, {m['dtype']}, random weights; "
        f"batch {result['batch']}, prompt {result['prompt_len']} tokens, {result['new_tokens']} new tokens "
        f"(greedy), median of {result['repeats']} interleaved repeats after compilation.",
        "",
        markdown_table(["path", "median s", "tokens/s"], rows, align="lrr"),
        "",
        f"Speedup: **{result['speedup']:.1f}x**. Same tokens: {result['same_tokens']}.",
        "",
        machine_line(result["machine"], result["load"], result["command"]),
        "",
    ]
    (out / "generate.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """The command line (scripts/bench_generate.py); bad input: one line and status 2 (lax_pretrain/cli.py)."""
    p = cli.parser("scripts/bench_generate.py", __doc__)
    p.add_argument("--preset", default="nano")
    p.add_argument("--kind", default="cola")
    p.add_argument("--lax", default="kron")
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="docs/benchmarks/generate")
    return cli.run_parsed(p, _run, argv)


def _run(a) -> None:
    result = run(preset=a.preset, kind=a.kind, lax=a.lax, new_tokens=a.new_tokens, prompt_len=a.prompt_len,
                 repeats=a.repeats)  # fmt: skip
    write(result, Path(a.out))
    print(f"uncached {result['median_s']['uncached']:.3f}s  cached {result['median_s']['cached']:.3f}s  "
          f"speedup {result['speedup']:.1f}x  same tokens {result['same_tokens']}")  # fmt: skip
