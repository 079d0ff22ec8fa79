"""Model suite: the real train step (`train.program.build_program`, the program `train()` runs; parameters and
optimizer state donated) of LLaMA and ViT models in every kind, with and without LaX (kron), on synthetic
random batches.

For each case (family, preset, batch) every variant is compiled ahead of time, then all are timed side by side
(`timing.time_interleaved`: warm-up, `block_until_ready`, round-robin repeats, medians). Reported per variant:
step time (median, min/max, IQR), tokens/s (LLaMA) or images/s (ViT), TFLOP/s from the analytic training
FLOPs (`lax_pretrain.models.stats.model_stats`, 3x forward), MFU where the device's peak is known
(`train.mfu.device_peak_flops`; none on CPU), and the ratios against the dense model and against the same
low-rank model without LaX (`lax_overhead`: the paired median, `timing.paired_ratio`). `kron_impls` times
every +kron variant once per kron gate implementation ('cola+kron[gemm]').

The step is called with step index 0, where the warm-up schedule gives learning rate 0: the update is computed
in full but the parameters do not drift, so random data cannot blow the loss up while timing.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp

from lax_pretrain.config import RECIPES
from lax_pretrain.experiments.sweep import TINY_MODEL, TINY_RANK
from lax_pretrain.layers import KINDS
from lax_pretrain.layers.variants import variant_name
from lax_pretrain.machine import loadavg
from lax_pretrain.models import TASKS, get_task
from lax_pretrain.models.stats import model_stats
from lax_pretrain.parallel import make_mesh
from lax_pretrain.timing import on_accelerator, paired_ratio, time_interleaved
from lax_pretrain.train.mfu import device_peak_flops
from lax_pretrain.train.program import Program, build_program


def model_variants() -> tuple[tuple[str, str], ...]:
    """(kind, crossing): every registered kind, those with a latent with and without LaX (kron)."""
    return tuple(
        (name, crossing)
        for name, kind in KINDS.items()
        for crossing in (("none", "kron") if kind.has_latent else ("none",))
    )


@dataclasses.dataclass(frozen=True)
class Case:
    """One model size at one batch: every variant of it is timed side by side."""

    family: str  # 'llama' | 'vit'
    preset: str
    batch_size: int
    seq_len: int = 256  # LLaMA only
    shrink: dict | None = None  # tiny smoke versions: see `shrink_model`

    @property
    def label(self) -> str:
        tag = "" if not self.shrink else "-shrunk"
        shape = (
            f"{self.batch_size}x{self.seq_len}"
            if get_task(self.family).counts_tokens
            else f"{self.batch_size}"
        )
        return f"{self.family}-{self.preset}{tag} (batch {shape})"


def default_cases(tiny: bool = False) -> list[Case]:
    if tiny:
        return [Case("llama", "nano", 2, 32, shrink=TINY)]
    if on_accelerator():
        return [
            Case("llama", "nano", 64, 256),
            Case("llama", "60m", 64, 256),
            Case("llama", "130m", 32, 256),
            Case("vit", "tiny", 512),
            Case("vit", "s16", 128),
        ]
    return [Case("llama", "nano", 8, 256), Case("llama", "60m", 2, 256), Case("vit", "tiny", 32)]


TINY = {**TINY_MODEL, "rank": TINY_RANK}  # the smoke size of every tiny run (experiments.sweep)


def parse_cases(text: str) -> list[Case]:
    """'llama:nano:8x256,llama:60m:2x256,vit:tiny:32' -> cases (FAMILY:PRESET:BATCH[xSEQ])."""
    cases = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in TASKS:
            raise ValueError(
                f"case {item!r}: expected FAMILY:PRESET:BATCH[xSEQ] with FAMILY one of {', '.join(TASKS)}"
            )
        batch, _, seq = parts[2].partition("x")
        cases.append(Case(parts[0], parts[1], int(batch), int(seq) if seq else 256))
    return cases


def shrink_model(config, *, d_model: int, num_layers: int, num_heads: int, rank: int, **widths):
    """Shrinks a config in place (smoke tests) with one `rank` for every projection (svd/cola rank, TT latent
    bond: the spec derives the 4-core `tt_shape` for the new widths). `widths` (num_kv_heads, ffn_dim, mlp_dim,
    vocab_size) apply where the family's model has them."""
    m = config.model
    m.d_model, m.num_layers, m.num_heads = d_model, num_layers, num_heads
    widths.setdefault("num_kv_heads", num_heads)  # plain multi-head attention unless asked otherwise
    m.update({k: v for k, v in widths.items() if v and k in m})
    # What the kind sets for a preset's rank (svd/cola rank, TT latent bond: the spec derives the TT shape per
    # width), keeping the preset's intra-layer LaX choice.
    overrides = KINDS.get(m.linear.kind, key="model.linear.kind").overrides
    for name in list(m.proj):
        old = m.proj[name]
        intra = (bool(old.get("intra", False)), bool(old.get("intra_gate", False)))
        m.proj[name] = overrides(rank, name, intra=intra)
    return config


def model_config(
    family: str,
    preset: str,
    kind: str,
    crossing: str,
    *,
    dtype: str = "float32",
    extra: dict | None = None,
    shrink: dict | None = None,
):
    """The recipe config of one variant (`lax_pretrain.config.RECIPES`, extra keywords of the compact grammar
    in `extra`), optionally shrunk."""
    options = dict(kind=kind, lax=crossing, dtype=dtype, **(extra or {}))
    config = RECIPES[family](preset, **options)
    if shrink:
        shrink_model(config, **shrink)
    return config


def step_program(config, batch_size: int, seq_len: int, *, seed: int = 0, abstract: bool = False) -> Program:
    """The train step exactly as `train()` builds it (`train.program.build_program`), on one device so every
    number is per device; `abstract=True` allocates nothing (compile-only memory analysis)."""
    config = copy.deepcopy(config)
    config.mesh.update(data=1, fsdp=1, tensor=1, num_devices=1)
    config.train.update(batch_size=batch_size, seed=seed, grad_accum=1)
    config.data.seq_len = seq_len
    return build_program(config, make_mesh(config.mesh), abstract=abstract)


class Stepper:
    """One train step per call, carrying the donated state."""

    def __init__(self, compiled, trainable, opt_state, frozen, batch):
        self.compiled, self.trainable, self.opt_state, self.frozen, self.batch = (
            compiled,
            trainable,
            opt_state,
            frozen,
            batch,
        )
        self.index = jnp.zeros((), jnp.int32)

    def __call__(self):
        self.trainable, self.opt_state, metrics = self.compiled(
            self.trainable, self.opt_state, self.frozen, self.batch, self.index
        )
        return self.trainable, metrics


def expand_kron_impls(variants, kron_impls: tuple[str, ...]) -> list[tuple[str, str, str | None]]:
    """(kind, crossing, kron_impl): every +kron variant once per implementation (None: the config's default)."""
    out = []
    for kind, crossing in variants:
        impls = kron_impls if crossing == "kron" and tuple(kron_impls) != ("auto",) else (None,)
        out += [(kind, crossing, None if impl == "auto" else impl) for impl in impls]
    return out


def run_case(
    case: Case,
    *,
    variants: tuple[tuple[str, str], ...] | None = None,
    kron_impls: tuple[str, ...] = ("auto",),
    repeats: int = 3,
    warmup: int = 1,
    min_sample_s: float = 0.0,
    dtype: str = "float32",
    seed: int = 0,
    log=print,
) -> list[dict[str, Any]]:
    peak, device_kind = device_peak_flops()
    n_dev = 1  # one device runs the step (no mesh): per-device numbers
    steppers, meta = {}, {}
    for kind, crossing, kron_impl in expand_kron_impls(variants or model_variants(), kron_impls):
        name = variant_name(kind, crossing, kron_impl=kron_impl)
        config = model_config(case.family, case.preset, kind, crossing, dtype=dtype, shrink=case.shrink)
        if kron_impl is not None:
            config.model.linear.kron_impl = kron_impl
        stats = model_stats(config.model, case.seq_len)
        program = step_program(config, case.batch_size, case.seq_len, seed=seed)
        batch = jax.device_put(
            program.task.batch(config.model, case.batch_size, case.seq_len, seed), program.batch_shardings
        )
        t0 = time.perf_counter()
        compiled = program.lower_train_step().compile()
        compile_s = time.perf_counter() - t0
        steppers[name] = Stepper(compiled, program.params, program.opt_state, program.frozen, batch)
        meta[name] = dict(kind=kind, crossing=crossing, kron_impl=kron_impl, stats=stats, compile_s=compile_s)
        log(f"[models] {case.label} {name}: compiled in {compile_s:.1f}s")
    timings = time_interleaved(steppers, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
    rows = []
    for name, st in timings.items():
        m, stats = meta[name], meta[name]["stats"]
        tokens_per_example = stats.seq_len  # LLaMA: seq_len; ViT: patches + cls
        examples_per_s = case.batch_size / st.median
        tokens_per_s = examples_per_s * tokens_per_example
        tflops = stats.train_flops_per_token * tokens_per_s / 1e12
        rows.append(
            {
                "case": case.label,
                "family": case.family,
                "preset": case.preset,
                "shrunk": bool(case.shrink),
                "name": name,
                "kind": m["kind"],
                "crossing": m["crossing"],
                "kron_impl": m["kron_impl"],
                "dtype": dtype,
                "batch_size": case.batch_size,
                "tokens_per_example": tokens_per_example,
                "params": stats.total_params,
                "non_embedding_params": stats.non_embedding_params,
                "lax_params": stats.lax_params,
                "flops_per_token": stats.flops_per_token,
                "train_flops_per_token": stats.train_flops_per_token,
                "train_flops_per_step": stats.train_flops_per_token * tokens_per_example * case.batch_size,
                "step_time": st.to_json(),
                "step_time_s": st.median,
                "tokens_per_s": tokens_per_s,
                "images_per_s": None if get_task(case.family).counts_tokens else examples_per_s,
                "tflops_per_s": tflops,
                "mfu": tflops * 1e12 / (peak * n_dev) if peak else None,
                "peak_flops": peak,
                "device_kind": device_kind,
                "compile_s": m["compile_s"],
            }
        )
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        dense = by_name.get("dense")
        if dense is not None:
            r["time_ratio_vs_dense"] = r["step_time_s"] / dense["step_time_s"]
            r["flop_ratio_vs_dense"] = r["train_flops_per_token"] / dense["train_flops_per_token"]
            r["measured_over_predicted"] = r["time_ratio_vs_dense"] / r["flop_ratio_vs_dense"]
        base = by_name.get(r["kind"]) if r["crossing"] != "none" else None
        if base is not None:
            # Paired: the median over rounds of (step time / the same round's base step time), which cancels
            # load that lasts a round; also as a ratio of medians and from the fastest samples.
            r["lax_overhead"] = paired_ratio(timings[r["name"]], timings[base["name"]]) - 1.0
            r["lax_overhead_median"] = r["step_time_s"] / base["step_time_s"] - 1.0
            r["lax_overhead_min"] = r["step_time"]["min"] / base["step_time"]["min"] - 1.0
    log(f"[models] {case.label}: " + ", ".join(f"{r['name']} {r['step_time_s'] * 1e3:.0f}ms" for r in rows))
    return rows


def run_models(
    *,
    cases: list[Case] | None = None,
    variants: tuple[tuple[str, str], ...] | None = None,
    kron_impls: tuple[str, ...] = ("auto",),
    repeats: int = 3,
    warmup: int = 1,
    min_sample_s: float = 0.0,
    dtype: str = "float32",
    seed: int = 0,
    tiny: bool = False,
    log=print,
) -> dict[str, Any]:
    """Runs every case; returns the JSON-ready result {'suite', 'settings', 'rows', 'notes', 'load'}."""
    cases = cases if cases is not None else default_cases(tiny)
    load_before = loadavg()
    rows = []
    for case in cases:
        rows += run_case(
            case,
            variants=variants,
            kron_impls=kron_impls,
            repeats=repeats,
            warmup=warmup,
            min_sample_s=min_sample_s,
            dtype=dtype,
            seed=seed,
            log=log,
        )
    peak, device_kind = device_peak_flops()
    notes = []
    if peak is None:
        notes.append(
            f"MFU omitted: no peak FLOP/s known for device kind {device_kind!r} "
            "(lax_pretrain.train.mfu.PEAK_BF16_FLOPS; CPUs have none)."
        )
    elif dtype != "bfloat16":
        notes.append(f"MFU is against the bf16 peak ({peak / 1e12:.0f} TFLOP/s) while computing in {dtype}.")
    notes.append(
        "FLOPs: analytic (models.stats.model_stats), training = 3 x forward, attention counted unmasked."
    )
    return {
        "suite": "models",
        "settings": dict(
            cases=[dataclasses.asdict(c) | {"label": c.label} for c in cases],
            variants=[
                variant_name(k, c, kron_impl=i)
                for k, c, i in expand_kron_impls(variants or model_variants(), kron_impls)
            ],
            repeats=repeats,
            warmup=warmup,
            min_sample_s=min_sample_s,
            dtype=dtype,
            seed=seed,
            unit="one train step (forward, backward, clip, AdamW update) of the jitted real step",
        ),
        "notes": notes,
        "load": {"before": load_before, "after": loadavg()},
        "rows": rows,
    }
