"""The LaX paper's comparison scaled to a 2-core CPU: dense vs SVD, CoLA and tensor-train, each with and without
LaX (kron), at the same token / image budget and seed, plus extra seeds of dense and of one low-rank variant to
show the noise level.

    python scripts/reproduce.py --suite=cpu_llama --out=runs/reproduce/cpu_llama     # about an hour
    python scripts/reproduce.py --suite=cpu_vit   --out=runs/reproduce/cpu_vit       # about an hour
    python scripts/reproduce.py --suite=cpu_llama --tiny --out=/tmp/smoke            # seconds-long smoke run

Suites (`SUITES`; sizes and budgets chosen to fit about an hour on a 2-core CPU, see `Suite.notes`):
  cpu_llama  nano LLaMA (d 256, 4 layers, byte tokenizer) on Shakespeare; validation perplexity (bytes).
  cpu_vit    tiny ViT (d 128, 6 layers, 4x4 patches) on Fashion-MNIST; test top-1.
Low-rank variants use one rank for every projection (svd/cola rank, TT latent bond) chosen so that they hold
about half the dense model's non-embedding parameters (`lax_pretrain.params.model_stats` reports the exact
ratio in the results).

Every run goes through `lax_pretrain.train.train(config, workdir)` in this process, one workdir per run under
OUT/runs/; a finished run (OUT/runs/<run>/run_info.json) is reused when the command is repeated. Checkpoints are
deleted after each run unless `keep_checkpoints`. Written to OUT: results.json, results.md, val_vs_params.png.

ViT runs train with dropout 0: at about half an epoch there is no overfitting for dropout to regularise, and
it would only add noise to a comparison of architectures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from lax_pretrain.bench.models import shrink_model
from lax_pretrain.bench.timing import loadavg, machine_info
from lax_pretrain.config import llama_config, vit_config
from lax_pretrain.params import model_stats

# (kind, crossing) in table order; 'lax' means the kron gate.
VARIANTS = (("dense", "none"), ("svd", "none"), ("svd", "kron"), ("cola", "none"), ("cola", "kron"),
            ("tt", "none"), ("tt", "kron"))
NOISE_VARIANTS = ("dense", "cola+lax")  # the variants that get seeds 0 .. seeds_noise-1
TINY_LLAMA = dict(d_model=32, num_layers=2, num_heads=2, ffn_dim=64, rank=8)
TINY_VIT = dict(d_model=32, num_layers=2, num_heads=2, mlp_dim=64, rank=8)


def variant_name(kind: str, crossing: str) -> str:
    return kind if crossing == "none" else f"{kind}+lax"


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    family: str  # 'llama' | 'vit'
    preset: str
    rank: int  # svd/cola rank and TT latent bond of every projection (~2x fewer non-embedding parameters)
    steps: int
    batch_size: int
    seq_len: int  # LLaMA only
    eval_batches: int  # batches of batch_size from the start of the validation/test split
    evals: int  # evaluations after step 0 (evenly spaced; the last at the final step)
    notes: str

    @property
    def metric(self) -> str:
        return "eval_ppl" if self.family == "llama" else "eval_top1"

    @property
    def metric_label(self) -> str:
        return "val perplexity (bytes)" if self.family == "llama" else "test top-1"

    @property
    def budget(self) -> str:
        if self.family == "llama":
            return f"{self.steps} steps x {self.batch_size} x {self.seq_len} tokens = " \
                   f"{self.steps * self.batch_size * self.seq_len:,} tokens"
        return f"{self.steps} steps x {self.batch_size} images = {self.steps * self.batch_size:,} images"


SUITES = {
    "cpu_llama": Suite(
        "cpu_llama", "llama", "nano", rank=80, steps=300, batch_size=16, seq_len=128, eval_batches=8, evals=3,
        notes="nano LLaMA (d 256, 4 layers, 4 heads, SwiGLU 688, byte vocab 259) on Shakespeare, lr 3e-3 (preset) "
              "with 10% warm-up and cosine decay to 10%, AdamW wd 0.01, clip 0.5. Budget: ~0.6M tokens per run "
              "(about 0.1 epoch of the corpus), about 6 minutes per run on an idle 2-core CPU; 9 runs with "
              "--seeds_noise=2. Perplexity over the first 8 x 16 x 128 validation tokens."),
    "cpu_vit": Suite(
        "cpu_vit", "vit", "tiny", rank=40, steps=450, batch_size=64, seq_len=0, eval_batches=40, evals=2,
        notes="tiny ViT (d 128, 6 layers, 4 heads, MLP 512, 4x4 patches: 49 + 1 tokens) on Fashion-MNIST with "
              "pad-and-crop + flip, dropout 0 (half an epoch); lr 3e-3 dense / 1e-3 low-rank (the LaX "
              "recipe), 10% warm-up, cosine to 0, wd 0.3 on matrices. Budget: 28,800 images per run (about half "
              "an epoch), about 6 minutes per run on an idle 2-core CPU; 9 runs with --seeds_noise=2. Top-1 on "
              "the first 40 x 64 = 2,560 test images."),
}


def tiny_suite(suite: Suite) -> Suite:
    return dataclasses.replace(suite, rank=TINY_LLAMA["rank"] if suite.family == "llama" else TINY_VIT["rank"],
                               steps=2, batch_size=8, seq_len=32, eval_batches=1, evals=1,
                               notes="--tiny smoke version: shrunk model, 2 steps")


def parse_variants(text: str) -> tuple[tuple[str, str], ...]:
    """'dense,cola+lax' -> (('dense', 'none'), ('cola', 'kron')), in the order of VARIANTS."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    known = {variant_name(k, c): (k, c) for k, c in VARIANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(known)}")
    return tuple(v for n, v in known.items() if n in names)


def run_plan(seeds_noise: int, variants=VARIANTS) -> list[tuple[str, str, int]]:
    """(kind, crossing, seed) of every run: each variant at seed 0, the noise variants at more seeds."""
    plan = [(k, c, 0) for k, c in variants]
    for seed in range(1, max(seeds_noise, 1)):
        plan += [(k, c, seed) for k, c in variants if variant_name(k, c) in NOISE_VARIANTS]
    return plan


def run_name(kind: str, crossing: str, seed: int) -> str:
    return f"{variant_name(kind, crossing).replace('+', '_')}_s{seed}"


def make_config(suite: Suite, kind: str, crossing: str, seed: int, *, tiny: bool = False, data_dir: str = ""):
    arg = f"{suite.preset},kind={kind},lax={crossing}" + (f",rank={suite.rank}" if kind != "dense" else "")
    config = (llama_config if suite.family == "llama" else vit_config)(arg)
    if tiny:
        shrink_model(config, **(TINY_LLAMA if suite.family == "llama" else TINY_VIT))
    if suite.family == "llama":
        config.data.seq_len = suite.seq_len
    else:
        config.model.dropout = 0.0
    config.data.eval_batches = suite.eval_batches
    if data_dir:
        config.data.data_dir = data_dir
    steps = suite.steps
    eval_every = max(math.ceil(steps / max(suite.evals, 1)), 1)
    config.train.update(steps=steps, batch_size=suite.batch_size, seed=seed, log_every=max(steps // 20, 1),
                        eval_every=eval_every, checkpoint_every=steps, keep_checkpoints=1, grad_accum=1)
    config.optim.warmup_steps = max(steps // 10, 1)
    config.wandb.mode = "disabled"
    config.name = f"{suite.name}-{variant_name(kind, crossing)}-s{seed}"
    return config


def run_one(config, workdir: Path, *, keep_checkpoints: bool = False, log=print) -> dict[str, Any]:
    """Trains one run (or reuses a finished one) and returns its run_info."""
    from lax_pretrain.train import train

    info_path = workdir / "run_info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("status") == "done" and info.get("steps") == config.train.steps:
            log(f"[reproduce] {workdir.name}: reusing the finished run")
            return info
    if workdir.exists():  # an unfinished or different run: start over
        shutil.rmtree(workdir)
    start = time.perf_counter()
    try:
        summary = train(config, workdir)
        status = summary["status"]
    except Exception as e:  # noqa: BLE001  (one failed run must not lose the others)
        status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    info = {"status": status, "steps": config.train.steps, "wall_s": time.perf_counter() - start,
            "load_after": loadavg()}
    if not keep_checkpoints:
        shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    log(f"[reproduce] {workdir.name}: {status} in {info['wall_s']:.0f}s")
    return info


def collect(suite: Suite, config, workdir: Path, info: dict, kind: str, crossing: str, seed: int) -> dict[str, Any]:
    from lax_pretrain.train.metrics import read_metrics

    records = read_metrics(workdir)
    evals = [r for r in records if "eval_loss" in r]
    trains = [r for r in records if "loss" in r]
    stats = model_stats(config.model, suite.seq_len if suite.family == "llama" else 0)
    rate_key = "tokens_per_s" if suite.family == "llama" else "images_per_s"
    rates = [r[rate_key] for r in trains if r.get(rate_key)]
    final = evals[-1] if evals and evals[-1]["step"] == config.train.steps else None
    return {
        "run": run_name(kind, crossing, seed), "variant": variant_name(kind, crossing), "kind": kind,
        "crossing": crossing, "seed": seed, "status": info["status"],
        "rank": None if kind == "dense" else suite.rank,
        "params": stats.total_params, "non_embedding_params": stats.non_embedding_params,
        "lax_params": stats.lax_params, "flops_per_token": stats.flops_per_token,
        "train_flops_per_token": stats.train_flops_per_token,
        "metric": suite.metric, "value": final.get(suite.metric) if final else None,
        "eval_loss": final.get("eval_loss") if final else None,
        "initial_value": evals[0].get(suite.metric) if evals else None,
        "final_train_loss": trains[-1]["loss"] if trains else None,
        "steps": trains[-1]["step"] if trains else 0,
        "throughput": statistics.median(rates) if rates else None, "throughput_unit": rate_key,
        "wall_s": info["wall_s"], "workdir": str(workdir),
        "evals": [{"step": r["step"], suite.metric: r.get(suite.metric)} for r in evals],
    }


def run_suite(name: str, out_dir: str | Path, *, tiny: bool = False, seeds_noise: int = 2, steps: int | None = None,
              data_dir: str = "", variants=VARIANTS, keep_checkpoints: bool = False, command: str = "",
              log=print) -> dict[str, Any]:
    """Runs every run of suite `name` into OUT/runs/ and writes OUT/results.{json,md} and val_vs_params.png."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    suite = tiny_suite(SUITES[name]) if tiny else SUITES[name]
    if steps:
        suite = dataclasses.replace(suite, steps=steps, notes=suite.notes + f" Reduced: --steps={steps}.")
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    start = time.perf_counter()
    rows = []
    from lax_pretrain.bench import fast_compile

    for kind, crossing, seed in run_plan(seeds_noise, variants):
        config = make_config(suite, kind, crossing, seed, tiny=tiny, data_dir=data_dir)
        workdir = out / "runs" / run_name(kind, crossing, seed)
        with fast_compile(tiny):
            info = run_one(config, workdir, keep_checkpoints=keep_checkpoints, log=log)
        rows.append(collect(suite, config, workdir, info, kind, crossing, seed))
    result = {"suite": dataclasses.asdict(suite) | {"metric": suite.metric, "metric_label": suite.metric_label,
                                                     "budget": suite.budget},
              "tiny": tiny, "seeds_noise": seeds_noise, "command": command, "machine": machine,
              "load_after": loadavg(), "wall_s": time.perf_counter() - start, "rows": rows,
              "summary": summarize(suite, rows)}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(render_markdown(result))
    plot(result, out / "val_vs_params.png")
    log(f"[reproduce] {name}: {len(rows)} runs in {result['wall_s']:.0f}s -> {out / 'results.md'}")
    return result


def summarize(suite: Suite, rows: list[dict]) -> dict[str, Any]:
    """Per variant: mean over seeds, spread (max - min) where more than one seed; deltas vs dense and vs no LaX."""
    higher_better = suite.family == "vit"
    by_variant: dict[str, list[float]] = {}
    for r in rows:
        if r["value"] is not None:
            by_variant.setdefault(r["variant"], []).append(r["value"])
    out = {}
    for v, values in by_variant.items():
        out[v] = {"mean": statistics.fmean(values), "seeds": len(values),
                  "spread": max(values) - min(values) if len(values) > 1 else None}
    dense = out.get("dense", {}).get("mean")
    for v, s in out.items():
        if dense is not None:
            s["delta_vs_dense"] = s["mean"] - dense
        base = out.get(v.split("+")[0]) if v.endswith("+lax") else None
        if base is not None:
            s["lax_gain"] = (s["mean"] - base["mean"]) * (1 if higher_better else -1)
    spreads = [s["spread"] for s in out.values() if s["spread"] is not None]
    return {"variants": out, "noise": max(spreads) if spreads else None, "higher_is_better": higher_better}


def _fmt(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render_markdown(result: dict) -> str:
    s = result["suite"]
    m = result["machine"]
    vit = s["family"] == "vit"
    vfmt = ".4f" if vit else ".3f"
    lines = [f"# Reproduction: {s['name']}" + (" (--tiny smoke run)" if result["tiny"] else ""), "",
             s["notes"], "",
             f"- Budget per run: {s['budget']}; low-rank rank {s['rank']} (svd/cola rank, TT latent bond) for "
             f"every projection; seeds: 0 for every variant, 0..{max(result['seeds_noise'], 1) - 1} for "
             f"{' and '.join(NOISE_VARIANTS)}.",
             f"- Metric: {s['metric_label']} after the last step ({'higher' if vit else 'lower'} is better).",
             f"- Machine: {m['device_kind']} ({m['backend']}), {m['cpu_count']} CPUs, load average before "
             f"{'/'.join(f'{x:.1f}' for x in m['loadavg'] or [])}, after "
             f"{'/'.join(f'{x:.1f}' for x in result['load_after'] or [])}; total wall {result['wall_s'] / 60:.1f} min.",
             f"- Command: `{result['command']}`", "",
             "| run | params | non-emb params | vs dense | FLOPs/token | " + s["metric_label"] + " | start | "
             "final train loss | " + ("images/s" if vit else "tokens/s") + " | wall (s) | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    dense_ne = next((r["non_embedding_params"] for r in result["rows"] if r["variant"] == "dense"), None)
    for r in result["rows"]:
        ratio = f"{dense_ne / r['non_embedding_params']:.2f}x fewer" if dense_ne and r["variant"] != "dense" else "-"
        lines.append(
            f"| {r['variant']} (seed {r['seed']}) | {r['params']:,} | {r['non_embedding_params']:,} | {ratio} | "
            f"{r['flops_per_token']:,} | {_fmt(r['value'], vfmt)} | {_fmt(r['initial_value'], vfmt)} | "
            f"{_fmt(r['final_train_loss'], '.4f')} | {_fmt(r['throughput'], ',.0f')} | {r['wall_s']:.0f} | "
            f"{r['status']} |")
    summ = result["summary"]
    lines += ["", "## Per variant (mean over seeds)", "",
              f"| variant | seeds | mean | spread (max-min) | vs dense | LaX gain |", "|---|---|---|---|---|---|"]
    for v, x in summ["variants"].items():
        lines.append(f"| {v} | {x['seeds']} | {x['mean']:{vfmt}} | {_fmt(x['spread'], vfmt)} | "
                     f"{_fmt(x.get('delta_vs_dense'), '+' + vfmt)} | {_fmt(x.get('lax_gain'), '+' + vfmt)} |")
    lines += ["", f"Noise level (largest seed spread): {_fmt(summ['noise'], vfmt)}. LaX gain is the improvement "
                  f"of +lax over the same kind without it ({'top-1 up' if vit else 'perplexity down'} is positive); "
                  "differences smaller than the noise level are not resolved by this budget.", "",
              "![metric vs non-embedding parameters](val_vs_params.png)", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["suite"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"dense": "black", "svd": "tab:blue", "cola": "tab:green", "tt": "tab:orange"}
    labelled = set()
    for r in result["rows"]:
        if r["value"] is None:
            continue
        lax = r["crossing"] != "none"
        label = r["variant"] if r["variant"] not in labelled else None
        labelled.add(r["variant"])
        ax.scatter(r["non_embedding_params"] / 1e6, r["value"], color=colors.get(r["kind"], "gray"),
                   marker="^" if lax else "o", s=60, label=label, alpha=0.85)
    ax.set_xlabel("non-embedding parameters (M)")
    ax.set_ylabel(s["metric_label"])
    ax.set_title(f"{s['name']}: {s['budget']}")
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
