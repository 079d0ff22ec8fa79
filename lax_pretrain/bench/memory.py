"""Memory suite: per-device memory of the train step from XLA's buffer assignment, compile only (nothing runs).

For each scale, the real train step (`train.program.build_program`, the loop's own program; parameters and
optimizer state donated) is lowered with abstract inputs (`ShapeDtypeStruct`s: no parameter is allocated) and compiled for the local
backend; `compiled.memory_analysis()` gives
    temp      activations and other intermediates (what remat trades for recomputation),
    argument  parameters + optimizer state + batch,
    output    updated parameters + optimizer state + metrics (aliased to the donated arguments: `alias`).
`total = temp + argument + output` (as asked) and `peak_estimate = total - alias` (donated outputs reuse the
argument buffers) are both reported. Variants: dense, CoLA (low rank), CoLA + CoLA-M remat (`remat=cola_m`:
only the latents and the residual stream are saved), CoLA + full remat, and optionally more (`--memory_variants`).

CPU caveat, handled: XLA:CPU strips remat (`train/preflight.py` says how). So on CPU this suite compiles with
`train.preflight.compiler_options()` (`{'xla_disable_hlo_passes': 'cse_barrier_expander'}`, recorded in the
JSON), which gives the buffer assignment the remat policy asks for; `keep_remat_on_cpu=False` measures XLA:CPU
as it is.
"""

from __future__ import annotations

import time
from typing import Any

import jax

from lax_pretrain.bench.models import TINY, model_config, step_program
from lax_pretrain.layers.variants import variant_name
from lax_pretrain.machine import loadavg
from lax_pretrain.models.stats import model_stats
from lax_pretrain.train.preflight import compiler_options

# (kind, crossing, remat)
MEMORY_VARIANTS = (
    ("dense", "none", "none"),
    ("cola", "none", "none"),
    ("cola", "none", "cola_m"),
    ("cola", "none", "full"),
)
EXTRA_VARIANTS = (("dense", "none", "full"), ("cola", "kron", "none"), ("cola", "kron", "cola_m"))


def parse_variants(text: str) -> tuple[tuple[str, str, str], ...]:
    """'cola:kron:cola_m,dense:none:full' -> ((kind, crossing, remat), ...)."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"memory variant {item!r}: expected KIND:CROSSING:REMAT")
        out.append(tuple(parts))
    return tuple(out)


def compiled_memory(
    config, batch_size: int, seq_len: int, *, options: dict | None = None
) -> tuple[dict[str, int], float]:
    """({temp, argument, output, alias, generated_code, total, peak_estimate} bytes, compile seconds)."""
    lowered = step_program(config, batch_size, seq_len, abstract=True).lower_train_step()
    t0 = time.perf_counter()
    compiled = lowered.compile(compiler_options=options or None)
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    if ma is None:
        raise RuntimeError(f"{jax.default_backend()} gives no memory_analysis() for compiled programs")
    m = {
        "temp": int(ma.temp_size_in_bytes),
        "argument": int(ma.argument_size_in_bytes),
        "output": int(ma.output_size_in_bytes),
        "alias": int(ma.alias_size_in_bytes),
        "generated_code": int(ma.generated_code_size_in_bytes),
    }
    m["total"] = m["temp"] + m["argument"] + m["output"]
    m["peak_estimate"] = m["total"] - m["alias"]
    return m, compile_s


def _twin(rows: list[dict], r: dict, **fields) -> dict | None:
    """The row of the same preset that differs from `r` only in `fields`."""
    keys = ("preset", "kind", "crossing", "remat", "precision")
    want = {k: fields.get(k, r[k]) for k in keys}
    return next((x for x in rows if all(x[k] == v for k, v in want.items())), None)


def run_memory(
    *,
    presets: tuple[str, ...] = ("60m", "130m"),
    batch_size: int = 16,
    seq_len: int = 256,
    variants=MEMORY_VARIANTS,
    dtype: str = "float32",
    precisions: tuple[str, ...] = ("fp32",),
    tiny: bool = False,
    keep_remat_on_cpu: bool = True,
    log=print,
) -> dict[str, Any]:
    """Compiles every (preset, variant, precision); returns the JSON-ready result {'suite', 'settings', 'rows',
    'load'}. precision 'bf16' is the CoLA code's pure-bf16 mode (bf16 parameters, gradients and moments)."""
    shrink = TINY if tiny else None
    options = compiler_options(keep_remat_on_cpu)
    load_before = loadavg()
    rows = []
    for preset in presets:
        for precision in precisions:
            for kind, crossing, remat in variants:
                name = variant_name(kind, crossing, remat) + (" bf16" if precision == "bf16" else "")
                compute = "bfloat16" if precision == "bf16" else dtype
                config = model_config(
                    "llama",
                    preset,
                    kind,
                    crossing,
                    dtype=compute,
                    extra=dict(remat=remat, precision=precision),
                    shrink=shrink,
                )
                stats = model_stats(config.model, seq_len)
                mem, compile_s = compiled_memory(config, batch_size, seq_len, options=options)
                rows.append(
                    {
                        "preset": preset,
                        "shrunk": bool(shrink),
                        "name": name,
                        "kind": kind,
                        "crossing": crossing,
                        "remat": remat,
                        "dtype": compute,
                        "precision": precision,
                        "batch_size": batch_size,
                        "seq_len": seq_len,
                        "params": stats.total_params,
                        "non_embedding_params": stats.non_embedding_params,
                        "bytes": mem,
                        "compile_s": compile_s,
                    }
                )
                log(
                    f"[memory] {preset} {name}: temp {mem['temp'] / 2**20:.1f} MiB, argument "
                    f"{mem['argument'] / 2**20:.1f} MiB, output {mem['output'] / 2**20:.1f} MiB "
                    f"(compiled in {compile_s:.1f}s)"
                )
    for r in rows:
        no_remat, dense = (
            _twin(rows, r, remat="none"),
            _twin(rows, r, kind="dense", crossing="none", remat="none"),
        )
        if r["remat"] != "none" and no_remat:
            r["temp_reduction_vs_no_remat"] = no_remat["bytes"]["temp"] / max(r["bytes"]["temp"], 1)
        if dense:
            r["temp_ratio_vs_dense"] = r["bytes"]["temp"] / max(dense["bytes"]["temp"], 1)
            r["total_ratio_vs_dense"] = r["bytes"]["total"] / max(dense["bytes"]["total"], 1)
        fp32 = _twin(rows, r, precision="fp32")
        if r["precision"] != "fp32" and fp32:
            # argument = parameters + optimizer state + batch: what the pure-bf16 mode is meant to halve.
            r["argument_ratio_vs_fp32"] = r["bytes"]["argument"] / max(fp32["bytes"]["argument"], 1)
    return {
        "suite": "memory",
        "settings": dict(
            presets=list(presets),
            batch_size=batch_size,
            seq_len=seq_len,
            dtype=dtype,
            precisions=list(precisions),
            variants=[variant_name(*v) for v in variants],
            shrunk=shrink,
            compiler_options=options,
            unit="bytes per device from compiled.memory_analysis() of the jitted train step "
            "(compile only), batch_size per device",
        ),
        "load": {"before": load_before, "after": loadavg()},
        "rows": rows,
    }
