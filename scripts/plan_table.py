"""The target-compiled plan of every preset on the systems we plan for, beside the old CPU estimate.

    python scripts/plan_table.py [--out=docs/benchmarks/plan] [--only=60m,1b] [--targets=h100x8] [--skip_cpu]
    python scripts/plan_table.py --report=lax      # item: LaX as the accelerator compiler sees it

Each row runs `lax-plan --json` twice, as a user would: with `--target=SYSTEM` (the target's compiler, in the
plan venv) and with `--devices=N` on fake CPU devices (the estimate lax-plan gave before targets; skipped above
64 devices, where the CPU compile takes minutes; OUT/cpu_estimates.json, the estimates of the table lax-plan
gave before it compiled for targets, is shown where it has the row). Results go to OUT/<row>.json as they finish (a rerun skips
rows that have one), then OUT/table.md (and OUT/lax.md for --report=lax) is written from every JSON in OUT.
Settings: each recipe's batch (LLaMA 512 x 256 tokens, ViT 1024 images), `precision=bf16`, no remat,
grad_accum 1, FSDP over every device (`--mesh=1,N,1`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
TARGETS = {"h100x8": 8, "v5p:4x4x4": 64, "h100x64": 64, "v5e:16x16": 256}
CPU_ACCELERATOR = {"v5p:4x4x4": "v5p", "v5e:16x16": "v5e", "h100x8": "h100", "h100x64": "h100"}
LLAMA = ("60m", "130m", "350m", "1b", "7b")
MODELS = [
    *((f"llama-{p}", f"configs/llama.py:{p},precision=bf16") for p in LLAMA),
    *((f"llama-{p}-cola-lax", f"configs/llama.py:{p},kind=cola,lax=kron,precision=bf16") for p in LLAMA),
    ("vit-b16", "configs/vit.py:b16,precision=bf16"),
    ("vit-l16", "configs/vit.py:l16,precision=bf16"),
]
# LaX as the compiler sees it: each low-rank kind without and with the kron crossing, on one GPU node and one
# TPU slice, at batch 64 x 256 (8 sequences per device); 60m scanned like 1b (scan=1) to keep compiles short.
LAX_TARGETS = ("h100x8", "v5p:2x2x2")
LAX_MODELS = [
    (
        f"lax-{p}-{kind}{'-lax' if lax else ''}",
        f"configs/llama.py:{p},kind={kind}{',lax=kron' if lax else ''},precision=bf16,scan=1",
    )
    for p in ("60m", "1b")
    for kind in ("cola", "svd", "tt")
    for lax in (False, True)
]
LAX_BATCH = "--config.train.batch_size=64"


def lax_plan(args: list[str]) -> tuple[dict | None, str, float]:
    """(the --json report or None, stderr's last line, wall seconds) of one lax-plan process."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lax_pretrain.plan", *args, "--json"], capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - t0
    try:
        return json.loads(proc.stdout), "", wall
    except json.JSONDecodeError:
        return None, (proc.stderr.strip().splitlines() or ["no output"])[-1], wall


def run_row(
    name: str,
    config: str,
    target: str,
    n: int,
    out: Path,
    skip_cpu: bool,
    mesh: str | None,
    extra: tuple = (),
) -> None:
    path = out / f"{name}@{target.replace(':', '-')}.json"
    if path.exists():
        return
    mesh = mesh or f"1,{n},1"
    row: dict = {"model": name, "config": config, "target": target, "mesh": mesh}
    report, error, wall = lax_plan([f"--config={config}", f"--target={target}", f"--mesh={mesh}", *extra])
    row.update(target_report=report, target_error=error, target_wall_s=wall)
    if not skip_cpu and n <= 64:
        acc = CPU_ACCELERATOR.get(target, "h100")
        cpu, cpu_error, cpu_wall = lax_plan(
            [f"--config={config}", f"--devices={n}", f"--mesh={mesh}", f"--accelerator={acc}"]
        )
        row.update(cpu_report=cpu, cpu_error=cpu_error, cpu_wall_s=cpu_wall)
    path.write_text(json.dumps(row, indent=1))
    print(f"{path.name}: {wall:.0f} s", error, flush=True)


def _gib(b) -> str:
    return "-" if b is None else f"{b / GIB:.2f}"


def _largest(memory: dict) -> str:
    terms = {
        "temporaries": memory.get("temporaries"),
        "optimizer": memory.get("optimizer_state"),
        "parameters": memory.get("parameters"),
        "code": memory.get("generated_code"),
    }
    ranked = sorted(((k, v) for k, v in terms.items() if v), key=lambda kv: -kv[1])[:2]
    return ", ".join(f"{k} {v / GIB:.2f}" for k, v in ranked)


def old_cpu_estimate(row: dict, estimates: dict) -> float | None:
    """Peak bytes lax-plan estimated on fake CPU devices before targets (cpu_estimates.json), else this run's."""
    gib = estimates.get(row["model"], {}).get(row["mesh"])
    if gib is not None:
        return gib * GIB
    return row["cpu_report"]["memory"]["peak"] if row.get("cpu_report") else None


def table(rows: list[dict], estimates: dict) -> str:
    lines = [
        "| model | target | mesh | fits | peak GiB/device (target) | CPU estimate GiB | CPU / target | "
        "biggest terms (GiB) | compile s | attention, kron |",
        "|---|---|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        t = r.get("target_report")
        if t is None:
            lines.append(
                f"| {r['model']} | {r['target']} | {r['mesh']} | error: {r['target_error'][:80]} |||||||"
            )
            continue
        fits = all(a["fits"] for a in t["accelerators"])
        m = t["memory"]
        cpu_peak = old_cpu_estimate(r, estimates)
        if "out_of_memory" in t:
            oom = t["out_of_memory"]
            peak = f"> {_gib(oom['available_bytes'])} ({oom['what']} {_gib(oom['required_bytes'])})"
            ratio, terms = "-", "compiler: " + oom["what"]
        else:
            peak = _gib(m["peak"])
            ratio = f"{cpu_peak / m['peak']:.2f}" if cpu_peak else "-"
            terms = _largest(m)
        attention = t.get("attention_compiled") or "/".join(t["choices"]["attention"])
        choices = f"{attention}, {'/'.join(t['choices']['kron_impl']) or '-'}"
        lines.append(
            f"| {r['model']} | {r['target']} | {r['mesh']} | {'yes' if fits else 'NO'} | {peak} | "
            f"{_gib(cpu_peak)} | {ratio} | {terms} | {t['compile_s']['compile']:.0f} | {choices} |"
        )
    return "\n".join(lines)


def lax_table(rows: list[dict]) -> str:
    lines = [
        "| model | target | kernels/step | fusions | custom calls | with the gate | with the latent norm | with both | "
        "TFLOP compiled (analytic) | HBM GiB | collective GiB | peak GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r.get("target_report")
        if t is None or "kernels" not in t:
            why = r.get("target_error") or "does not fit"
            lines.append(f"| {r['model']} | {r['target']} | {why[:60]} ||||||||||")
            continue
        k, f, lk = t["kernels"], t["flops"], t["lax_kernels"]
        lines.append(
            f"| {r['model']} | {r['target']} | {k['total']:,} | {k.get('fusion', 0):,} | "
            f"{k.get('custom-call', 0):,} | {lk['gate']:,} | {lk['latent_norm']:,} | {lk['gate_and_latent_norm']:,} | "
            f"{f['compiled'] / 1e12:.2f} ({f['analytic'] / 1e12:.2f}) | {t['hbm_bytes']['compiled'] / GIB:.1f} | "
            f"{t['total_collective_bytes'] / GIB:.2f} | {_gib(t['memory']['peak'])} |"
        )
    return "\n".join(lines)


DOCS = ("README.md", "docs/plan.md")


def fill_docs(md: str, report: str) -> None:
    """Puts the `report` table ('table' or 'lax') between its markers in README.md and docs/plan.md."""
    start, end = f"<!-- {report}: scripts/plan_table.py --fill_docs -->", f"<!-- /{report} -->"
    for name in DOCS:
        path = ROOT / name
        text = path.read_text()
        if start not in text:
            continue
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        path.write_text(f"{head}{start}\n{md}\n{end}{tail}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs/benchmarks/plan"))
    p.add_argument("--only", default="", help="comma-separated substrings of model names")
    p.add_argument("--targets", default="", help="comma-separated targets (default: all)")
    p.add_argument("--skip_cpu", action="store_true", help="no CPU estimates")
    p.add_argument("--report", choices=("table", "lax"), default="table")
    p.add_argument("--write_only", action="store_true", help="only (re)write the markdown from OUT's JSON")
    p.add_argument("--fill_docs", action="store_true", help="and put the table in README.md and docs/plan.md")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    only = [s for s in a.only.split(",") if s]
    if a.report == "table":
        models, targets = (
            MODELS,
            {t: n for t, n in TARGETS.items() if not a.targets or t in a.targets.split(",")},
        )
    else:
        models, targets = LAX_MODELS, {t: 8 for t in LAX_TARGETS}
    if not a.write_only:
        for (
            target,
            n,
        ) in targets.items():  # every model on one target before the next: a partial run is usable
            for name, config in models:
                if not only or any(s in name for s in only):
                    lax = a.report == "lax"
                    run_row(
                        name, config, target, n, out, a.skip_cpu or lax, None, (LAX_BATCH,) if lax else ()
                    )
    prefix = "lax-" if a.report == "lax" else ""
    rows = [json.loads(f.read_text()) for f in sorted(out.glob("*@*.json"))]
    estimates_file = out / "cpu_estimates.json"
    estimates = json.loads(estimates_file.read_text())["peak_gib"] if estimates_file.exists() else {}
    rows = [r for r in rows if r["model"].startswith("lax-") == bool(prefix)]
    order = {name: i for i, (name, _) in enumerate(models)}
    rows.sort(
        key=lambda r: (
            list(targets).index(r["target"]) if r["target"] in targets else 99,
            order.get(r["model"], 99),
        )
    )
    md = lax_table(rows) if a.report == "lax" else table(rows, estimates)
    (out / ("lax.md" if a.report == "lax" else "table.md")).write_text(md + "\n")
    if a.fill_docs:
        fill_docs(md, a.report)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
