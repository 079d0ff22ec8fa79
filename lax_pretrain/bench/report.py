"""Writing the benchmark results: `OUT/bench.json` (every suite, its machine and load, the targets) and
`OUT/bench.md` (one table per suite, then the targets: met / missed by how much / not measurable here).

Suites run separately into the same OUT accumulate: a new run of a suite replaces that suite's entry only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

JSON_NAME = "bench.json"
MD_NAME = "bench.md"
SUITES = ("layers", "models", "memory")

LAX_OVERHEAD_MAX = 0.05
TIME_OVER_FLOP_MAX = 1.25
COLA_M_TEMP_MIN = 1.5
DENSE_1B_MFU_MIN = 0.40
COLA_LAX_MFU_FRACTION_MIN = 0.80


# ------------------------------------------------------------------------------------------------- JSON


def load(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / JSON_NAME
    if path.exists():
        return json.loads(path.read_text())
    return {"suites": {}}


def write(out_dir: str | Path, suites: dict[str, dict[str, Any]]) -> tuple[Path, Path]:
    """Merges `suites` into OUT/bench.json, re-evaluates the targets, rewrites bench.json and bench.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load(out)
    data.setdefault("suites", {}).update(suites)
    data["targets"] = evaluate_targets(data["suites"])
    json_path, md_path = out / JSON_NAME, out / MD_NAME
    json_path.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    md_path.write_text(render_markdown(data))
    return json_path, md_path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


# ---------------------------------------------------------------------------------------------- targets


def _target(name: str, status: str, detail: str, values: Any = None) -> dict[str, Any]:
    return {"target": name, "status": status, "detail": detail, "values": values}


def _is_cpu(suite: dict) -> bool:
    return suite.get("machine", {}).get("backend") == "cpu"


def evaluate_targets(suites: dict[str, dict]) -> list[dict[str, Any]]:
    return [_lax_overhead(suites.get("models")), _flop_ratio(suites.get("models")),
            _cola_m(suites.get("memory")), *_mfu(suites.get("models"))]


def _lax_overhead(models: dict | None) -> dict:
    name = f"LaX (kron) adds <= {LAX_OVERHEAD_MAX:.0%} train-step time over the same low-rank model"
    rows = [r for r in (models or {}).get("rows", []) if r.get("lax_overhead") is not None]
    if not rows:
        return _target(name, "not measurable here", "no models suite with a low-rank model and its +kron twin")
    values = {f"{r['case']} {r['name']}": round(r["lax_overhead"], 4) for r in rows}
    worst = max(rows, key=lambda r: r["lax_overhead"])
    detail = (f"worst {worst['lax_overhead']:+.1%} ({worst['name']}, {worst['case']}; median step times); "
              f"all (median [fastest samples]): " +
              ", ".join(f"{r['name']} {r['preset']} {r['lax_overhead']:+.1%} [{r['lax_overhead_min']:+.1%}]"
                        for r in rows) + _noise_note(models))
    if worst["lax_overhead"] <= LAX_OVERHEAD_MAX:
        return _target(name, "met", detail, values)
    return _target(name, f"missed (by {(worst['lax_overhead'] - LAX_OVERHEAD_MAX) * 100:.1f} points)", detail,
                   values)


def _flop_ratio(models: dict | None) -> dict:
    name = (f"low-rank step-time ratio vs dense <= {TIME_OVER_FLOP_MAX}x its FLOP ratio (LLaMA models)")
    rows = [r for r in (models or {}).get("rows", [])
            if r["family"] == "llama" and r["kind"] != "dense" and r.get("measured_over_predicted") is not None]
    if not rows:
        return _target(name, "not measurable here", "no LLaMA rows with a dense baseline in the models suite")
    values = {f"{r['case']} {r['name']}": round(r["measured_over_predicted"], 3) for r in rows}
    worst = max(rows, key=lambda r: r["measured_over_predicted"])
    detail = (f"(t/t_dense)/(F/F_dense): worst {worst['measured_over_predicted']:.2f} ({worst['name']}, "
              f"{worst['case']}); all: " +
              ", ".join(f"{r['name']} {r['preset']} {r['measured_over_predicted']:.2f}" for r in rows)
              + _noise_note(models))
    if worst["measured_over_predicted"] <= TIME_OVER_FLOP_MAX:
        return _target(name, "met", detail, values)
    return _target(name, f"missed (worst {worst['measured_over_predicted']:.2f}x, "
                         f"{worst['measured_over_predicted'] / TIME_OVER_FLOP_MAX:.2f}x over the limit)", detail,
                   values)


def _noise_note(models: dict | None) -> str:
    """How far the timings scatter: the largest (max - min) / median of a step time, and the load."""
    rows = (models or {}).get("rows", [])
    spreads = [(r["step_time"]["max"] - r["step_time"]["min"]) / r["step_time_s"] for r in rows
               if "max" in r.get("step_time", {})]
    if not spreads:
        return ""
    load = (models or {}).get("load", {}).get("before")
    tiny = " Tiny smoke settings: not meaningful." if (models or {}).get("tiny") else ""
    return (f". Noise: step-time spread (max-min)/median up to {max(spreads):.0%}"
            + (f", load average {load[0]:.1f} on {(models or {}).get('machine', {}).get('cpu_count')} CPUs"
               if load else "") + "." + tiny)


def _cola_m(memory: dict | None) -> dict:
    name = f"CoLA-M cuts train-step temp (activation) memory >= {COLA_M_TEMP_MIN}x vs CoLA without remat"
    rows = [r for r in (memory or {}).get("rows", [])
            if r["kind"] == "cola" and r["crossing"] == "none" and r["remat"] == "cola_m"
            and r.get("temp_reduction_vs_no_remat") is not None]
    if not rows:
        return _target(name, "not measurable here", "no memory suite with cola and cola remat=cola_m")
    values = {r["preset"]: round(r["temp_reduction_vs_no_remat"], 3) for r in rows}
    worst = min(rows, key=lambda r: r["temp_reduction_vs_no_remat"])
    opts = (memory or {}).get("settings", {}).get("compiler_options") or {}
    detail = ", ".join(f"{r['preset']}: {r['temp_reduction_vs_no_remat']:.2f}x" for r in rows)
    if opts:
        detail += f" (compiled with {opts}: XLA:CPU otherwise drops remat)"
    if worst["temp_reduction_vs_no_remat"] >= COLA_M_TEMP_MIN:
        return _target(name, "met", detail, values)
    return _target(name, f"missed (worst {worst['temp_reduction_vs_no_remat']:.2f}x, short by "
                         f"{COLA_M_TEMP_MIN - worst['temp_reduction_vs_no_remat']:.2f}x)", detail, values)


def _mfu(models: dict | None) -> list[dict]:
    t1 = f"GPU: MFU of dense 1b >= {DENSE_1B_MFU_MIN:.0%} in bf16"
    t2 = f"GPU: cola+LaX MFU >= {COLA_LAX_MFU_FRACTION_MIN:.0%} of dense MFU"
    rows = [r for r in (models or {}).get("rows", []) if r["family"] == "llama" and r.get("mfu") is not None]
    if not rows:
        backend = (models or {}).get("machine", {}).get("backend", "unknown")
        why = f"not measurable here (backend {backend}: no peak FLOP/s, so no MFU)" if models else \
            "not measurable here (no models suite)"
        return [_target(t1, why, "needs an accelerator in train.mfu.PEAK_BF16_FLOPS"),
                _target(t2, why, "needs an accelerator in train.mfu.PEAK_BF16_FLOPS")]
    out = []
    dense_1b = [r for r in rows if r["preset"] == "1b" and r["kind"] == "dense" and r["dtype"] == "bfloat16"]
    if dense_1b:
        r = dense_1b[0]
        status = "met" if r["mfu"] >= DENSE_1B_MFU_MIN else \
            f"missed (by {(DENSE_1B_MFU_MIN - r['mfu']) * 100:.1f} points)"
        out.append(_target(t1, status, f"dense 1b bf16 MFU {r['mfu']:.1%} ({r['case']})", r["mfu"]))
    else:
        out.append(_target(t1, "not measurable here", "no dense 1b bf16 row (run with --cases=llama:1b:B "
                                                      "--dtype=bfloat16)"))
    pairs = []
    for case in dict.fromkeys(r["case"] for r in rows):
        by = {r["name"]: r for r in rows if r["case"] == case}
        if "dense" in by and "cola+kron" in by:
            pairs.append((case, by["cola+kron"]["preset"], by["cola+kron"]["mfu"] / by["dense"]["mfu"]))
    if not pairs:
        out.append(_target(t2, "not measurable here", "no case with both dense and cola+kron MFU"))
    else:
        at_1b = [p for p in pairs if p[1] == "1b"]
        worst = min(at_1b or pairs, key=lambda p: p[2])
        where = "" if at_1b else " (no 1b case: judged on every case)"
        detail = ", ".join(f"{c}: {f:.1%}" for c, _, f in pairs) + where
        status = "met" if worst[2] >= COLA_LAX_MFU_FRACTION_MIN else \
            f"missed (by {(COLA_LAX_MFU_FRACTION_MIN - worst[2]) * 100:.1f} points)"
        out.append(_target(t2, status, detail, {c: f for c, _, f in pairs}))
    return out


# --------------------------------------------------------------------------------------------- markdown


def _f(x: Any, fmt: str = ".2f", none: str = "-") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _machine_line(suite: dict) -> str:
    m = suite.get("machine", {})
    load = suite.get("load", {})
    return (f"Machine: {m.get('device_kind')} ({m.get('backend')}, {m.get('device_count')} device(s)), "
            f"{m.get('cpu_count')} CPUs ({m.get('cpu_model', '')}), jax {m.get('jax')}; load average "
            f"(1/5/15 min) before {_load(load.get('before'))}, after {_load(load.get('after'))}; "
            f"{m.get('time_utc', '')}. Command: `{suite.get('command', '')}`")


def _load(v: list | None) -> str:
    return "/".join(f"{x:.1f}" for x in v) if v else "n/a"


def render_layers(suite: dict) -> list[str]:
    s = suite["settings"]
    lines = ["## Layers: one d -> d projection, forward + backward", "", _machine_line(suite), "",
             f"{s['unit']}; {s['tokens']} tokens per call, {s['dtype']}, rank {s['rank_rule']}; "
             f"{s['repeats']} interleaved repeats after {s['warmup']} warm-up call(s), median per token. "
             "FLOPs/token: the layer's analytic forward count (`flops_per_token`, gate included). "
             "meas/pred = (t/t_dense)/(F/F_dense). LaX overhead: vs the same layer without crossing.", ""]
    for d in s["widths"]:
        rows = [r for r in suite["rows"] if r["width"] == d]
        lines += [f"### d = {d}", ""]
        lines += _table(
            ["variant", "latent", "params", "FLOPs/token", "time/token (ns)", "min-max (ns)", "t/t_dense",
             "F/F_dense", "meas/pred", "LaX overhead", "GFLOP/s"],
            [[r["name"], _f(r["latent_dim"], "d"), f"{r['params']:,}", f"{r['flops_per_token']:,}",
              _f(r["time_per_token_s"] * 1e9, ".1f"),
              f"{r['time_per_call']['min'] / r['tokens'] * 1e9:.1f}-{r['time_per_call']['max'] / r['tokens'] * 1e9:.1f}",
              _f(r.get("time_ratio_vs_dense")), _f(r.get("flop_ratio_vs_dense")),
              _f(r.get("measured_over_predicted")), _f(_pct(r.get("lax_overhead")), "+.1f") + ("%" if r.get(
                  "lax_overhead") is not None else ""), _f(r["gflops_per_s"], ".1f")] for r in rows])
        lines.append("")
    return lines


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def render_models(suite: dict) -> list[str]:
    s = suite["settings"]
    lines = ["## Models: train step", "", _machine_line(suite), "",
             f"{s['unit']}; synthetic random batches, {s['dtype']}; {s['repeats']} interleaved repeats after "
             f"{s['warmup']} warm-up step(s); median, [min, max]. FLOPs: analytic training FLOPs per token "
             "(3 x forward). meas/pred = (t/t_dense)/(F/F_dense). LaX overhead: vs the same kind without LaX "
             "(median; in brackets from the fastest samples).", ""]
    lines += [f"- {n}" for n in suite.get("notes", [])] + [""]
    for case in dict.fromkeys(r["case"] for r in suite["rows"]):
        rows = [r for r in suite["rows"] if r["case"] == case]
        vit = rows[0]["family"] == "vit"
        lines += [f"### {case}", ""]
        lines += _table(
            ["variant", "params", "non-emb params", "train GFLOPs/token", "step (ms)", "[min, max] (ms)",
             "images/s" if vit else "tokens/s", "TFLOP/s", "MFU", "t/t_dense", "F/F_dense", "meas/pred",
             "LaX overhead"],
            [[r["name"], f"{r['params']:,}", f"{r['non_embedding_params']:,}",
              _f(r["train_flops_per_token"] / 1e9, ".4f"), _f(r["step_time_s"] * 1e3, ".1f"),
              f"[{r['step_time']['min'] * 1e3:.1f}, {r['step_time']['max'] * 1e3:.1f}]",
              _f(r["images_per_s"] if vit else r["tokens_per_s"], ",.0f"), _f(r["tflops_per_s"], ".4f"),
              _f(_pct(r.get("mfu")), ".1f") + ("%" if r.get("mfu") is not None else ""),
              _f(r.get("time_ratio_vs_dense")), _f(r.get("flop_ratio_vs_dense")),
              _f(r.get("measured_over_predicted")),
              (f"{r['lax_overhead'] * 100:+.1f}% [{r['lax_overhead_min'] * 100:+.1f}%]"
               if r.get("lax_overhead") is not None else "-")] for r in rows])
        lines.append("")
    return lines


def render_memory(suite: dict) -> list[str]:
    s = suite["settings"]
    mib = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    lines = ["## Memory: train step, compile only", "", _machine_line(suite), "",
             f"{s['unit']}: batch {s['batch_size']} x {s['seq_len']} tokens, {s['dtype']}"
             + (f", shrunk model {s['shrunk']}" if s.get("shrunk") else "")
             + (f"; compiler options {s['compiler_options']} (XLA:CPU would otherwise drop the remat)"
                if s.get("compiler_options") else "")
             + ". MiB. total = temp + argument + output; peak est. = total - alias (donated buffers).", ""]
    lines += _table(
        ["preset", "variant", "params", "temp", "argument", "output", "total", "peak est.", "temp cut vs no remat",
         "temp vs dense", "argument vs fp32"],
        [[r["preset"] + (" (shrunk)" if r.get("shrunk") else ""), r["name"], f"{r['params']:,}", mib(r["bytes"]["temp"]), mib(r["bytes"]["argument"]),
          mib(r["bytes"]["output"]), mib(r["bytes"]["total"]), mib(r["bytes"]["peak_estimate"]),
          _f(r.get("temp_reduction_vs_no_remat"), ".2f") + ("x" if r.get("temp_reduction_vs_no_remat") else ""),
          _f(r.get("temp_ratio_vs_dense"), ".2f"), _f(r.get("argument_ratio_vs_fp32"), ".3f")]
         for r in suite["rows"]])
    return lines + [""]


def render_targets(targets: list[dict]) -> list[str]:
    lines = ["## Targets", ""]
    lines += _table(["target", "status", "detail"], [[t["target"], t["status"], t["detail"]] for t in targets])
    return lines + [""]


def render_markdown(data: dict) -> str:
    suites = data.get("suites", {})
    lines = ["# lax-pretrain benchmarks", "",
             "Written by `scripts/bench.py` (lax_pretrain.bench); the numbers of every table are in bench.json.", ""]
    for name, render in (("layers", render_layers), ("models", render_models), ("memory", render_memory)):
        if name in suites:
            lines += render(suites[name])
    lines += render_targets(data.get("targets") or evaluate_targets(suites))
    return "\n".join(lines)
