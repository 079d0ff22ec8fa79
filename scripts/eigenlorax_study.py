"""EigenLoRAx on Shakespeare, end to end on CPU: recycle 8 LoRA adapters into a basis, then compare LoRA,
LaX-LoRA and EigenLoRAx on held-out works.

    python scripts/eigenlorax_study.py --out=runs/eigenlorax_study

Measured: 10.3 min wall-clock on 2 CPU cores shared with another training job.

Steps (every training run goes through the one loop, `lax_pretrain.train.train`, via `finetune`):
 1. Pretrain a base nano LLaMA (d 128, 2 blocks, 4 heads, SwiGLU 344, byte tokenizer, dense) on the ten
    history plays, `--base_steps` steps of 16 x 128 bytes.
 2. Train one rank-8 LoRA (q, v of every block, alpha 16) per in-basis domain, `--steps` steps each, each
    with its own seed (as adapters collected from independent runs would be: no shared random A).
 3. Fit the EigenLoRAx basis of those 8 adapters; K = the smallest K explaining `--rho` of the variance of
    every module's A and B samples (`choose_k`).
 4. Zero-shot: each in-basis adapter projected onto the basis (no data, no training) vs the original LoRA.
 5. On the held-out works train, from the same base, seed and steps: LoRA, LaX-LoRA (identity crossing),
    EigenLoRAx (loadings only, K components) and EigenLoRAx + `--augment` random directions, the last two
    with the reference's loadings init (alpha_A, alpha_B ~ U(-0.5, 0.5)) and with alpha_B = 0 ('zero_b', the
    LoRA-style start at the base model). One optimizer for all: AdamW, lr 3e-3.
 6. Serving memory of 100 tasks: one basis + 100 loadings vs 100 LoRAs.
Writes OUT/study.md (tables) and OUT/study.png (validation loss vs steps per held-out work and method).

Domains are single works, so each has its own cast of characters, places and register (character names and
speaker tags dominate a byte-level model's per-domain loss) while all share Early Modern English verse and
play layout with the base. The base sees only the histories, so every domain is new to it. In-basis: four
tragedies and four comedies/romances; held out: one tragedy (Hamlet) and one comedy (Twelfth Night), so each
held-out work has relatives in the basis but is never used to fit it. Within each work the first 90% of the
text (by bytes) trains and the last 10% validates.

Each run's data is `config.data.works` (the loop's own pipeline): the named works' first 90% of bytes train,
the rest validates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np
from absl import app, flags
from flax import nnx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import lax_pretrain.data as data_lib  # noqa: E402
from lax_pretrain.adapters import (  # noqa: E402
    AdapterSpec,
    adapter_state,
    adapters,
    add_adapters,
    augment,
    choose_k,
    exact_targets,
    fit_basis,
    lora_serving_bytes,
    project,
    save_basis,
    serving_bytes,
)
from lax_pretrain.config import llama_config  # noqa: E402
from lax_pretrain.data import shakespeare  # noqa: E402
from lax_pretrain.finetune import finetune, load_base  # noqa: E402
from lax_pretrain.models import build  # noqa: E402
from lax_pretrain.models.tasks import lm_eval, lm_summary  # noqa: E402
from lax_pretrain.train import train  # noqa: E402
from lax_pretrain.train.metrics import read_metrics  # noqa: E402

_OUT = flags.DEFINE_string("out", "runs/eigenlorax_study", "Output directory (runs resume if present).")
_BASE_STEPS = flags.DEFINE_integer("base_steps", 300, "Pretraining steps of the base.")
_STEPS = flags.DEFINE_integer("steps", 100, "Steps of every adapter run.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 20, "Validation interval of the held-out runs.")
_RANK = flags.DEFINE_integer("rank", 8, "LoRA rank r (and the rank of the EigenLoRAx loadings).")
_RHO = flags.DEFINE_float("rho", 0.9, "Explained variance that chooses K.")
_AUGMENT = flags.DEFINE_integer("augment", 16, "Random directions appended for the augmented EigenLoRAx run.")
_LAYERS = flags.DEFINE_integer("layers", 2, "Blocks of the base model.")

BASE_WORKS = (
    "henry_iv_part_1,henry_iv_part_2,henry_v,henry_vi_part_1,henry_vi_part_2,henry_vi_part_3,henry_viii,"
    "john,richard_ii,richard_iii"
)
IN_BASIS = {
    "macbeth": "macbeth",
    "othello": "othello",
    "lear": "lear",
    "romeo_and_juliet": "romeo_and_juliet",
    "tempest": "tempest",
    "midsummer": "midsummer_nights_dream",
    "merchant": "merchant_of_venice",
    "much_ado": "much_ado_about_nothing",
}
HELD_OUT = {"hamlet": "hamlet", "twelfth_night": "twelfth_night"}
SEQ_LEN, BATCH, TRAIN_FRACTION = 128, 16, 0.9
TARGETS = "q|v"


# ----------------------------------------------------------------------------------------------- data


def on_works(config, works: str):
    """`config` training and validating on `works` (a copy)."""
    config = config.copy_and_resolve_references()
    config.data.update(works=works, works_train_fraction=TRAIN_FRACTION)
    return config


def work_bytes(works: str) -> tuple[int, int]:
    """(train, validation) bytes of the works: the ASCII texts cut at TRAIN_FRACTION."""
    files = shakespeare.work_files()
    lengths = [len(files[w + "_gut"].read_text("ascii")) for w in shakespeare.parse_works(works)]
    return sum(int(n * TRAIN_FRACTION) for n in lengths), sum(n - int(n * TRAIN_FRACTION) for n in lengths)


# ----------------------------------------------------------------------------------------------- runs


def run_config(steps: int, eval_every: int, lr: float, layers: int):
    config = llama_config("nano")
    config.model.update(d_model=128, num_heads=4, num_kv_heads=4, ffn_dim=344, num_layers=layers, proj={})
    config.data.seq_len = SEQ_LEN
    config.train.update(
        steps=steps, batch_size=BATCH, log_every=25, eval_every=eval_every, checkpoint_every=steps
    )
    config.optim.update(lr=lr, warmup_steps=max(steps // 10, 1), weight_decay=0.0)
    config.wandb.mode = "disabled"
    config.mesh.data = 1  # one CPU device
    return config


@nnx.jit
def _eval_sums(model: nnx.Module, batch: dict) -> dict:
    return lm_eval(model, batch)


def eval_loss(model: nnx.Module, batches: list[dict]) -> float:
    return lm_summary([jax.device_get(_eval_sums(model, b)) for b in batches])["eval_loss"]


def eval_curve(workdir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["eval_loss"]) for r in read_metrics(workdir) if "eval_loss" in r]


def trainable_count(model: nnx.Module) -> int:
    return sum(m.param_count for m in adapters(model).values())


def main(argv):
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    r, steps = _RANK.value, _STEPS.value
    lora_spec = AdapterSpec(kind="lora", rank=r, alpha=2 * r, targets=TARGETS)
    timings = {}

    # 1. the base
    train(
        on_works(run_config(_BASE_STEPS.value, _BASE_STEPS.value // 4, 3e-3, _LAYERS.value), BASE_WORKS),
        out / "base",
    )
    base_model, model_cfg = load_base(out / "base")
    base = (base_model, model_cfg)
    timings["base"] = time.perf_counter() - t0

    # 2. in-basis LoRAs
    ft_config = run_config(steps, _EVAL_EVERY.value, 3e-3, _LAYERS.value)
    ft_config.train.seed = 100  # held-out runs: one seed for every method
    recycled, lora_models = {}, {}
    for seed, name in enumerate(IN_BASIS, start=1):
        config = on_works(ft_config, IN_BASIS[name])
        config.train.seed = seed  # adapters from independent runs: their A's do not share one random init
        summary = finetune(config, base, lora_spec, out / "in_basis" / name, meta={"task": name})
        lora_models[name] = summary["model"]
        recycled[name] = {
            p: tuple(np.asarray(f) for f in ab) for p, ab in adapter_state(summary["model"]).items()
        }
    timings["in-basis LoRAs"] = time.perf_counter() - t0 - sum(timings.values())

    # 3. the basis
    adapter_list = list(recycled.values())
    k = choose_k(adapter_list, _RHO.value)
    basis = fit_basis(adapter_list, k)
    save_basis(out / "basis.safetensors", basis)
    rho = basis.explained_variance(k)
    augmented = augment(basis, _AUGMENT.value, seed=0)
    eigen_spec = AdapterSpec(kind="eigenlorax", rank=r, targets=exact_targets(basis.modules))

    # 4. zero-shot reconstruction of in-basis adapters
    zero_shot = {}
    for name in IN_BASIS:
        work_data = on_works(ft_config, IN_BASIS[name]).data
        batches = list(data_lib.make_eval_batches(work_data, global_batch_size=BATCH))
        model = build(model_cfg, rngs=nnx.Rngs(0))
        nnx.update(model, nnx.state(base_model, nnx.Param))
        base_loss = eval_loss(model, batches)
        add_adapters(model, eigen_spec, basis=basis, loadings=project(basis, recycled[name]))
        zero_shot[name] = (base_loss, eval_loss(lora_models[name], batches), eval_loss(model, batches))
    timings["basis + zero-shot"] = time.perf_counter() - t0 - sum(timings.values())

    # 5. held-out works
    lax_spec = AdapterSpec(kind="lax_lora", rank=r, alpha=2 * r, targets=TARGETS)
    zero_b_spec = dataclasses.replace(eigen_spec, eigen_init="zero_b")
    aug = f"K={k}+{_AUGMENT.value} random"
    methods = {  # label: (spec, basis, run directory)
        "LoRA": (lora_spec, None, "lora"),
        "LaX-LoRA (identity)": (lax_spec, None, "lax_lora"),
        f"EigenLoRAx (K={k})": (eigen_spec, basis, "eigenlorax"),
        f"EigenLoRAx ({aug})": (eigen_spec, augmented, "eigenlorax_augmented"),
        f"EigenLoRAx (K={k}), zero-B init": (zero_b_spec, basis, "eigenlorax_zero_b"),
        f"EigenLoRAx ({aug}), zero-B init": (zero_b_spec, augmented, "eigenlorax_augmented_zero_b"),
    }
    curves, params = {}, {}
    for name in HELD_OUT:
        for method, (spec, b, run) in methods.items():
            workdir = out / "held_out" / name / run
            config = on_works(ft_config, HELD_OUT[name])
            summary = finetune(config, base, spec, workdir, basis=b, meta={"task": name})
            curves[name, method] = eval_curve(workdir)
            params[method] = trainable_count(summary["model"])
    timings["held-out runs"] = time.perf_counter() - t0 - sum(timings.values())

    # 6. serving memory
    sig = {p: tuple(s) for p, s in basis.model_signature.items()}
    memory = {
        "LoRA": lora_serving_bytes(sig, 100, r),
        f"EigenLoRAx (K={k})": serving_bytes(basis, 100, r),
        f"EigenLoRAx ({aug})": serving_bytes(augmented, 100, r),
    }

    total = time.perf_counter() - t0
    sizes = {
        "base": work_bytes(BASE_WORKS),
        **{n: work_bytes(w) for n, w in {**IN_BASIS, **HELD_OUT}.items()},
    }
    write_report(
        out,
        k,
        rho,
        methods,
        curves,
        params,
        zero_shot,
        memory,
        sizes,
        timings,
        total,
        trainable_count(lora_models[next(iter(IN_BASIS))]),
    )
    plot(out, curves)
    print((out / "study.md").read_text())


def write_report(out, k, rho, methods, curves, params, zero_shot, memory, sizes, timings, total, lora_params):
    r, steps = _RANK.value, _STEPS.value
    lines = [
        "# EigenLoRAx study: Shakespeare, nano LLaMA on CPU",
        "",
        f"Command: `python scripts/eigenlorax_study.py --out={_OUT.value} --base_steps={_BASE_STEPS.value} "
        f"--steps={steps} --rank={r} --rho={_RHO.value} --augment={_AUGMENT.value} --layers={_LAYERS.value}`",
        "",
        f"Base: dense LLaMA d 128, {_LAYERS.value} blocks, 4 heads, SwiGLU 344, byte tokenizer (vocab 259), "
        f"{_BASE_STEPS.value} steps x {BATCH} x {SEQ_LEN} bytes on the ten histories. Adapters: {TARGETS} "
        f"of every block, r = {r}, alpha = {2 * r}, {steps} steps x {BATCH} x {SEQ_LEN} bytes, AdamW "
        "lr 3e-3 (warmup 10%, cosine), validation = the last 10% of the work.",
        "",
        "Bytes (train / validation): " + ", ".join(f"{n} {a:,} / {b:,}" for n, (a, b) in sizes.items()),
        "",
        f"Basis: {len(IN_BASIS)} LoRAs ({', '.join(IN_BASIS)}), K = {k} chosen for rho >= {_RHO.value} on every "
        f"module (rank-vector samples per module: {len(IN_BASIS) * r}). Explained variance at K, (A, B) "
        "per module: " + ", ".join(f"{p} ({a:.3f}, {b:.3f})" for p, (a, b) in rho.items()),
        "",
        "## Held-out works: validation loss (nats / byte) vs steps",
        "",
    ]
    for name in HELD_OUT:
        evals = {m: dict(curves[name, m]) for m in methods}
        step_cols = sorted({s for c in evals.values() for s in c})
        lines += [
            f"### {name}",
            "",
            "| method | trainable params | " + " | ".join(f"step {s}" for s in step_cols) + " |",
            "|---|---:|" + "---:|" * len(step_cols),
        ]
        for m in methods:
            row = " | ".join(f"{evals[m][s]:.4f}" if s in evals[m] else "" for s in step_cols)
            lines.append(f"| {m} | {params[m]:,} | {row} |")
        lines.append("")
    lines += [
        "## Zero-shot reconstruction of in-basis adapters (no data, no training)",
        "",
        f"Validation loss of the base, the original LoRA, and EigenLoRAx with loadings = projection of that "
        f"LoRA onto the K = {k} basis; recovered = (base - zero-shot) / (base - LoRA).",
        "",
        "| work | base | LoRA | EigenLoRAx zero-shot | recovered |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (b, lo, z) in zero_shot.items():
        lines.append(f"| {name} | {b:.4f} | {lo:.4f} | {z:.4f} | {(b - z) / (b - lo):.0%} |")
    lines += [
        "",
        "## Serving 100 tasks (float32 adapter values; the base is shared and not counted)",
        "",
        "| method | bytes | average per task |",
        "|---|---:|---:|",
    ]
    for m, n in memory.items():
        lines.append(f"| {m} | {n:,} | {n / 100:,.0f} |")
    lines += [
        "",
        f"LoRA trains {lora_params:,} parameters per task.",
        "",
        "Wall-clock: " + ", ".join(f"{n} {s:.0f} s" for n, s in timings.items()) + f"; total {total:.0f} s.",
        "",
    ]
    (out / "study.md").write_text("\n".join(lines))
    (out / "study.json").write_text(
        json.dumps(
            {
                "k": k,
                "curves": {f"{a}/{b}": c for (a, b), c in curves.items()},
                "params": params,
                "zero_shot": zero_shot,
                "memory": memory,
                "timings": timings,
            },
            indent=1,
        )
    )


def plot(out: Path, curves):
    names = list(HELD_OUT)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for (n, method), curve in curves.items():
            if n == name:
                ax.plot(*zip(*curve), "o-", ms=3, label=method)
        # zoom on the base's loss: the reference-init EigenLoRAx runs start far above it (see study.md)
        low = min(v for (n, _), c in curves.items() if n == name for _, v in c)
        ax.set_ylim(low - 0.01, curves[name, "LoRA"][0][1] + 0.08)
        ax.set_title(f"held-out work: {name} (y zoomed on the base's loss)")
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats / byte)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "study.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
