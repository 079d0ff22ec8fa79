"""Device suite: the paper's LLaMA presets on one accelerator in bf16 compute (`scripts/device_check.sh`).

For each preset (1b first, where the targets are judged, then 60m and 350m while the time budget lasts) and
variant (dense, cola, cola+kron), on one device, with float32 parameters and AdamW state and bfloat16 compute:

  batch     the largest batch of `seq_len`-token sequences that fits: compiled at the preset's start batch, the
            planner's peak (`train.preflight.step_memory`) extrapolated linearly in the batch to `fill` x the
            device's `bytes_limit` and rounded down to a power of two, compiled there (halved while it does not
            fit). Without a memory limit (CPU) the start batch.
  time      the real train step (`train.program.build_program`, state donated; the models suite's stepper):
            warm-up, then `repeats` samples of at least `min_sample_s` (`timing.time_interleaved`); each variant
            alone on the device, one after another.
  rates     tokens/s, TFLOP/s from the analytic training FLOPs (`models.stats.model_stats`), MFU against the
            bf16 peak (`train.mfu`).
  memory    the planner's peak estimate vs the device's `peak_bytes_in_use` over the variant's steps. The
            counter only grows, so each preset runs in a fresh process (`isolate`) and its variants in
            increasing order of estimate; a variant whose peak stays below an earlier one's reads 'masked'.

Per preset: the LaX overhead (cola tokens/s over cola+kron tokens/s - 1) and the speedups of cola and cola+kron
over dense (tokens/s). Once: `jax.devices()`, the attention check (`model.attention`: what auto picks, and
cuDNN vs XLA on one causal bf16 call where cuDNN runs), and, while the budget lasts, the kron gate's two
implementations in one cola layer at latent widths 128..1024 (the layers suite: the data behind
`layers.crossing.KRON_GEMM_MAX_WIDTH` for this backend).

`tiny=True` (device_check.sh --dry_run) runs the same code on shrunk models at batch 2 x 32 (CPU, seconds).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import math
import multiprocessing
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lax_pretrain.bench.layers import run_layers
from lax_pretrain.bench.models import TINY, Stepper, model_config, step_program
from lax_pretrain.layers.crossing import kron_impl_for
from lax_pretrain.layers.variants import variant_name
from lax_pretrain.machine import loadavg
from lax_pretrain.models.attention import attend, attention_impl, cudnn_unavailable
from lax_pretrain.models.llama import head_dim
from lax_pretrain.models.stats import model_stats
from lax_pretrain.timing import fast_compile, on_accelerator, time_interleaved
from lax_pretrain.train.checkpoint import abstract_like
from lax_pretrain.train.mfu import device_peak_flops
from lax_pretrain.train.preflight import step_memory
from lax_pretrain.train.program import global_batch_spec

PRESETS = ("1b", "60m", "350m")  # the order they run in: the targets are judged at 1b
VARIANTS = (("dense", "none"), ("cola", "none"), ("cola", "kron"))
# At equal batch dense holds the most state and cola+kron a little more than cola (gates, latent norms): run
# in increasing order so the device's growing peak counter is each variant's own.
RUN_ORDER = (("cola", "none"), ("cola", "kron"), ("dense", "none"))
START_BATCH = {"60m": 128, "350m": 64, "1b": 32}  # sequences; the search moves from here
MAX_BATCH = 1024
FILL = 0.9  # of bytes_limit: headroom for the allocator and what the planner does not see
TINY_BATCH, TINY_SEQ = 2, 32
KRON_WIDTHS = (512, 1024, 2048, 4096)  # d -> d layers at r = d/4: latent widths 128 .. 1024
KRON_TOKENS = 16384


@dataclasses.dataclass(frozen=True)
class DeviceSettings:
    presets: tuple[str, ...] = PRESETS
    variants: tuple[tuple[str, str], ...] = RUN_ORDER
    seq_len: int = 256
    dtype: str = "bfloat16"
    repeats: int = 5
    warmup: int = 2
    min_sample_s: float = 0.5
    budget_s: float = 420.0  # for the whole suite; a preset that would not fit in what is left is skipped
    deadline: float = math.inf  # time.time() past which no further variant starts (set from budget_s)
    fill: float = FILL
    tiny: bool = False
    isolate: bool = True  # each preset in a fresh process (a clean peak-memory counter; not in the dry run)
    seed: int = 0


TINY_SHRINK = {**TINY, "vocab_size": 256}  # the dry run's models (a 32000-token head would dominate them)


def _config(preset: str, kind: str, crossing: str, s: DeviceSettings):
    return model_config(
        "llama", preset, kind, crossing, dtype=s.dtype, shrink=TINY_SHRINK if s.tiny else None
    )


def _compile_at(program, batch_size: int):
    """The program's train step compiled for `batch_size` sequences (the state does not depend on it)."""
    config = program.config.copy_and_resolve_references()
    config.train.batch_size = batch_size
    spec = global_batch_spec(program.task, config, program.mesh, program.rules)
    with program.context():
        lowered = program.train_step.lower(
            abstract_like(program.params),
            abstract_like(program.opt_state),
            abstract_like(program.frozen),
            spec,
            jax.ShapeDtypeStruct((), jnp.int32),
        )
    return lowered.compile(), spec


def _bytes_limit() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def _peak_in_use() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def largest_batch(
    estimate_at: Any, start: int, limit: int | None, fill: float
) -> tuple[int, Any, Any, list[int]]:
    """(batch, its StepMemory, what `estimate_at` returned with it, the batches tried), where
    `estimate_at(b) -> (StepMemory, payload)` compiles at batch b.

    One compile at `start`; the peak's batch-dependent part (peak minus the state: parameters, optimizer state,
    frozen variables) scaled to `fill * limit` and rounded down to a power of two; compiled there and halved
    while the planner says it does not fit. Without a limit (CPU): `start`."""
    memory, payload = estimate_at(start)
    tried = [start]
    if limit is None:
        return start, memory, payload, tried
    budget = fill * limit
    state = memory.arguments - memory.batch
    per_sequence = max((memory.peak - state) / start, 1.0)
    batch = 2 ** int(math.log2(max(1, min(MAX_BATCH, (budget - state) // per_sequence))))
    while True:
        if batch != tried[-1]:
            tried.append(batch)
            memory, payload = estimate_at(batch)
        if memory.peak <= budget:
            return batch, memory, payload, tried
        if batch == 1:
            raise ValueError(f"not even batch 1 fits in {fill:.0%} of {limit / 2**30:.1f} GiB")
        batch //= 2


def _variant(preset: str, kind: str, crossing: str, s: DeviceSettings, log) -> dict[str, Any]:
    config = _config(preset, kind, crossing, s)
    seq_len = s.seq_len
    start = TINY_BATCH if s.tiny else START_BATCH.get(preset, 32)
    program = step_program(config, start, seq_len, seed=s.seed)
    compile_s = []

    def estimate_at(b):
        t0 = time.perf_counter()
        compiled, spec = _compile_at(program, b)
        compile_s.append(time.perf_counter() - t0)
        return step_memory(compiled), (compiled, spec)

    batch, memory, (compiled, spec), tried = largest_batch(estimate_at, start, _bytes_limit(), s.fill)
    host = program.task.batch(config.model, batch, seq_len, s.seed)
    stepper = Stepper(
        compiled,
        program.params,
        program.opt_state,
        program.frozen,
        jax.device_put(host, {k: v.sharding for k, v in spec.items()}),
    )
    before = _peak_in_use()
    timing = time_interleaved(
        {"step": stepper}, repeats=s.repeats, warmup=s.warmup, min_sample_s=s.min_sample_s
    )
    st = timing["step"]
    after = _peak_in_use()
    stats = model_stats(config.model, seq_len)
    peak_flops, device_kind = device_peak_flops()
    tokens_per_s = batch * seq_len / st.median
    tflops = stats.train_flops_per_token * tokens_per_s / 1e12
    measured = after if after is not None and (before is None or after > before) else None
    row = {
        "row": "step",
        "preset": preset,
        "shrunk": s.tiny,
        "name": variant_name(kind, crossing),
        "kind": kind,
        "crossing": crossing,
        "dtype": s.dtype,
        "attention": attention_impl(config.model, head_dim(config.model)),
        "batch_size": batch,
        "seq_len": seq_len,
        "batches_tried": tried,
        "params": stats.total_params,
        "train_flops_per_token": stats.train_flops_per_token,
        "step_time": st.to_json(),
        "step_time_s": st.median,
        "tokens_per_s": tokens_per_s,
        "tflops_per_s": tflops,
        "mfu": tflops * 1e12 / peak_flops if peak_flops else None,
        "device_kind": device_kind,
        "planner_peak_bytes": memory.peak,
        "planner": memory.to_json(),
        "measured_peak_bytes": measured,
        "measured_note": None if measured is not None or after is None else "masked by an earlier variant",
        "measured_over_planner": measured / memory.peak if measured else None,
        "compile_s": compile_s,
        "status": "ok",
    }
    log(
        f"[device] {preset} {row['name']}: batch {batch}x{seq_len} {st.median * 1e3:.1f} ms, "
        f"{tokens_per_s:,.0f} tokens/s" + (f", MFU {row['mfu']:.1%}" if row["mfu"] else "")
    )
    return row


def run_preset(preset: str, s: DeviceSettings, log=print) -> list[dict[str, Any]]:
    """The variants of one preset in `s.variants` order (increasing peak at equal batch); rows in `VARIANTS`
    order."""
    rows = []
    for kind, crossing in s.variants:
        if time.time() > s.deadline:  # the whole check has a wall-clock limit (device_check.sh: 8 minutes)
            rows.append(_skipped(preset, (kind, crossing), s, "skipped: time budget spent"))
            continue
        try:
            with fast_compile(s.tiny):  # again here: a spawned process starts with jax's defaults
                rows.append(_variant(preset, kind, crossing, s, log))
        except Exception as e:  # one variant that cannot run (memory, a kernel) leaves the others
            why = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
            rows.append(_skipped(preset, (kind, crossing), s, why))
            log(f"[device] {preset} {variant_name(kind, crossing)}: {rows[-1]['status']}")
        gc.collect()  # the variant's state and executable go before the next is built
    return sorted(rows, key=_variant_order)


def _variant_order(row: dict) -> int:
    return [variant_name(*v) for v in VARIANTS].index(row["name"])


def _run_preset_isolated(preset: str, s: DeviceSettings) -> list[dict[str, Any]]:
    """`run_preset` in a fresh process; one that dies (a CUDA abort, the OOM killer) fails its rows only."""
    ctx = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            return pool.submit(run_preset, preset, s).result()
    except concurrent.futures.process.BrokenProcessPool as e:
        return [_skipped(preset, v, s, f"failed: the process died ({e})") for v in s.variants]


def _ratio(rate: dict[str, float], a: str, b: str) -> float | None:
    return rate[a] / rate[b] if a in rate and b in rate else None


def summaries(rows: list[dict]) -> list[dict[str, Any]]:
    """Per preset: LaX overhead (cola vs cola+kron) and speedups over dense, from tokens/s."""
    out = []
    for preset in dict.fromkeys(r["preset"] for r in rows):
        rate = {
            r["name"]: r["tokens_per_s"] for r in rows if r["preset"] == preset and r.get("status") == "ok"
        }
        lax = _ratio(rate, "cola", "cola+kron")
        out.append(
            {
                "row": "summary",
                "preset": preset,
                "lax_overhead": None if lax is None else lax - 1,
                "cola_speedup_vs_dense": _ratio(rate, "cola", "dense"),
                "cola_lax_speedup_vs_dense": _ratio(rate, "cola+kron", "dense"),
            }
        )
    return out


def attention_check(dtype: str, seed: int = 0) -> dict[str, Any]:
    """What `model.attention=auto` picks for a head dim of 64, and cuDNN vs XLA on one causal call."""
    head_dim = 64
    why_not = cudnn_unavailable(dtype, head_dim)
    row = {"row": "attention", "dtype": dtype, "auto_picks": "xla" if why_not else "cudnn", "cudnn": why_not}
    if why_not:
        return row
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((4, 1024, 16, head_dim)), dtype) for _ in range(3))
    run = lambda impl: jax.jit(lambda q, k, v: attend(q, k, v, impl=impl, causal=True))(q, k, v)  # noqa: E731
    try:
        outs = {impl: run(impl).astype(jnp.float32) for impl in ("xla", "cudnn")}
    except Exception as e:  # cuDNN too old for flash attention, an unsupported GPU: say which
        return row | {"cudnn": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"}
    diff = jnp.abs(outs["xla"] - outs["cudnn"])
    row.update(cudnn="ran", max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
    return row


def kron_rows(s: DeviceSettings, log=print) -> list[dict[str, Any]]:
    """A cola layer (d -> d, r = d/4) with and without the kron gate, each implementation, fwd + bwd."""
    result = run_layers(
        widths=(64,) if s.tiny else KRON_WIDTHS,
        tokens=64 if s.tiny else KRON_TOKENS,
        repeats=s.repeats,
        warmup=s.warmup,
        min_sample_s=s.min_sample_s,
        dtype=s.dtype,
        kinds=("cola",),
        crossings=("none", "kron"),
        kron_impls=("factored", "gemm"),
        log=log,
    )
    return [
        {
            "row": "kron",
            "width": r["width"],
            "latent": r["latent_dim"],
            "kron_impl": r["kron_impl"],
            "auto_picks": kron_impl_for(r["latent_dim"]),
            "time_per_token_s": r["time_per_token_s"],
            "lax_overhead": r["lax_overhead_paired"],
        }
        for r in result["rows"]
        if r["crossing"] == "kron"
    ]


def run_device(
    *,
    presets: tuple[str, ...] = PRESETS,
    seq_len: int = 256,
    repeats: int = 5,
    warmup: int = 2,
    min_sample_s: float = 0.5,
    budget_s: float = 420.0,
    dtype: str = "bfloat16",
    tiny: bool = False,
    isolate: bool | None = None,
    variants: tuple[tuple[str, str], ...] = RUN_ORDER,
    seed: int = 0,
    log=print,
    progress=None,
) -> dict[str, Any]:
    """Runs the presets in order while the budget lasts; the JSON-ready result of the suite, also handed to
    `progress(result)` after each preset (so a run cut short keeps what it measured)."""
    s = DeviceSettings(
        presets=tuple(presets),
        seq_len=TINY_SEQ if tiny else seq_len,
        dtype=dtype,
        repeats=repeats,
        warmup=warmup,
        min_sample_s=min_sample_s,
        budget_s=budget_s,
        deadline=time.time() + budget_s,
        tiny=tiny,
        isolate=not tiny if isolate is None else isolate,
        variants=tuple(variants),
        seed=seed,
    )
    start, load_before = time.perf_counter(), loadavg()
    rows: list[dict[str, Any]] = [{"row": "devices", "devices": [str(d) for d in jax.devices()]}]
    rows.append(attention_check(dtype, seed))
    spent: list[float] = []
    for preset in s.presets:
        elapsed = time.perf_counter() - start
        # The first preset (1b) is the largest; later ones are guessed to cost what it did.
        if spent and elapsed + max(spent) > s.budget_s:
            why = f"skipped: time budget ({elapsed:.0f} of {s.budget_s:.0f} s spent)"
            rows += sorted((_skipped(preset, v, s, why) for v in s.variants), key=_variant_order)
            log(f"[device] {preset}: skipped, {elapsed:.0f} of {s.budget_s:.0f} s spent")
            continue
        t0 = time.perf_counter()
        rows += _run_preset_isolated(preset, s) if s.isolate else run_preset(preset, s, log)
        spent.append(time.perf_counter() - t0)
        log(f"[device] {preset} done in {spent[-1]:.0f}s")
        if progress is not None:
            progress(_result(rows, s, load_before))
    if time.time() < s.deadline - (0 if s.tiny else 60):  # the kron rows take about a minute
        rows += kron_rows(s, log)
    return _result(rows, s, load_before)


def _result(rows: list[dict], s: DeviceSettings, load_before) -> dict[str, Any]:
    steps = [r for r in rows if r["row"] == "step"]
    rows = (
        [r for r in rows if r["row"] != "kron"] + summaries(steps) + [r for r in rows if r["row"] == "kron"]
    )
    return {
        "suite": "device",
        "settings": dataclasses.asdict(s)
        | {
            "accelerator": on_accelerator(),
            "unit": f"one train step, float32 parameters and AdamW state, {s.dtype} compute, one device",
        },
        "load": {"before": load_before, "after": loadavg()},
        "rows": rows,
    }


def _skipped(preset: str, variant: tuple[str, str], s: DeviceSettings, why: str) -> dict[str, Any]:
    kind, crossing = variant
    name = variant_name(kind, crossing)
    return {
        "row": "step",
        "preset": preset,
        "shrunk": s.tiny,
        "name": name,
        "kind": kind,
        "crossing": crossing,
        "status": why,
    }
