"""The device suite's measured peak memory beside the target-compiled plan of the same config: the plan's error.

    python scripts/plan_vs_measured.py --bench=OUT/bench.json [--out=OUT] [--target=h100x1] [--max_rows=N]

For every measured train-step row of a device-suite bench.json (`scripts/device_check.sh`: preset, variant,
compute dtype, batch, sequence length, one device), runs `lax-plan --target=<GPU>x1 --json` for that config
(the target from the row's device kind, or --target) and prints measured peak, planned peak and their ratio
(measured / plan: the plan's error), beside the peak of the same step compiled on the device itself. Writes
OUT/plan_vs_measured.json and .md. The plan compiles in the plan venv ($LAX_PLAN_PYTHON: device_check.sh points
it at the GPU machine's own python, whose CUDA plugin compiles deviceless with JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lax_pretrain.bench.models import TINY  # noqa: E402  (after the path: runs from a checkout)

GIB = 2**30
TARGET_BY_DEVICE_KIND = {
    "NVIDIA H100 80GB HBM3": "h100x1",
    "NVIDIA H200": "h200x1",
    "NVIDIA A100-SXM4-80GB": "a100-80gbx1",
}


def step_rows(tree) -> list[dict]:
    """Every measured train-step row of the device suite, wherever bench.json nests it."""
    if isinstance(tree, dict):
        if tree.get("row") == "step" and tree.get("status") == "ok":
            return [tree]
        return [r for v in tree.values() for r in step_rows(v)]
    if isinstance(tree, list):
        return [r for v in tree for r in step_rows(v)]
    return []


def plan_args(row: dict, target: str) -> list[str]:
    """lax-plan's arguments for the config the row measured (a shrunk dry-run model: its sizes and rank)."""
    compact = f"{row['preset']},kind={row['kind']},lax={row['crossing']},dtype={row['dtype']}"
    overrides = []
    if row.get("shrunk"):
        compact += f",rank={TINY['rank']}"
        sizes = {
            k: v
            for k, v in TINY.items()
            if k in ("d_model", "num_layers", "num_heads", "num_kv_heads", "ffn_dim")
        }
        # (its 256-token head is not planned: lax-plan validates the vocabulary against the data's tokenizer)
        overrides = [f"--config.model.{k}={v}" for k, v in sizes.items()]
    return [
        f"--config=configs/llama.py:{compact}",
        f"--target={target}",
        "--mesh=1,1,1",
        f"--config.train.batch_size={row['batch_size']}",
        f"--config.data.seq_len={row['seq_len']}",
        "--config.train.grad_accum=1",
        *overrides,
        "--json",
    ]


def compare(row: dict, target: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "lax_pretrain.plan", *plan_args(row, target)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    plan = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None
    planned = plan["memory"].get("peak") if plan else None
    measured = row.get("measured_peak_bytes")
    return {
        "preset": row["preset"],
        "variant": row["name"],
        "batch_size": row["batch_size"],
        "seq_len": row["seq_len"],
        "device_kind": row.get("device_kind"),
        "target": target,
        "measured_peak_bytes": measured,
        "plan_peak_bytes": planned,
        "measured_over_plan": measured / planned if measured and planned else None,
        "device_compiled_peak_bytes": row.get("planner_peak_bytes"),
        "plan_error": None if plan else (proc.stderr.strip().splitlines() or ["no output"])[-1],
    }


def _gib(b) -> str:
    return "-" if b is None else f"{b / GIB:.2f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| preset | variant | batch | measured peak GiB | target plan GiB | measured / plan | compiled on the device GiB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "-" if r["measured_over_plan"] is None else f"{r['measured_over_plan']:.2f}"
        plan = _gib(r["plan_peak_bytes"]) if r["plan_error"] is None else f"({r['plan_error'][:60]})"
        lines.append(
            f"| {r['preset']} | {r['variant']} | {r['batch_size']}x{r['seq_len']} | {_gib(r['measured_peak_bytes'])} | "
            f"{plan} | {ratio} | {_gib(r['device_compiled_peak_bytes'])} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True)
    p.add_argument("--out", default=None, help="default: the bench.json's folder")
    p.add_argument("--target", default=None, help="default: from each row's device kind (h100x1 off a GPU)")
    p.add_argument("--max_rows", type=int, default=0, help="compare only the first N rows (0: all)")
    a = p.parse_args()
    bench = Path(a.bench)
    rows = step_rows(json.loads(bench.read_text()))
    if a.max_rows:
        rows = rows[: a.max_rows]
    out = Path(a.out) if a.out else bench.parent
    results = [
        compare(r, a.target or TARGET_BY_DEVICE_KIND.get(r.get("device_kind"), "h100x1")) for r in rows
    ]
    (out / "plan_vs_measured.json").write_text(json.dumps(results, indent=1))
    md = markdown(results)
    (out / "plan_vs_measured.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
