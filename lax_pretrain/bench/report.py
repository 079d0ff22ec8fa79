"""Writing the benchmark results: `OUT/bench.json` (every suite, its machine and load, the targets) and
`OUT/bench.md` (one table per suite, then the targets: met / missed by how much / not measurable here).

The acceptance targets are data, not code: docs/benchmarks/targets.json holds each limit (and the models it
applies to); `evaluate_targets` reads it unless given other targets. Tables and number formats are the
experiment reports' (`lax_pretrain.experiments.report`).

Suites run separately into the same OUT accumulate: a new run of a suite replaces that suite's entry only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lax_pretrain.experiments.report import markdown_table, num, percent
from lax_pretrain.layers.variants import variant_name
from lax_pretrain.machine import machine_line
from lax_pretrain.models.tasks import get_task

JSON_NAME = "bench.json"
MD_NAME = "bench.md"
SUITES = ("layers", "models", "memory", "reference", "loop", "device")
ALL_SUITES = (
    "layers",
    "models",
    "memory",
    "reference",
    "loop",
)  # `--suite=all`; device is scripts/device_check.sh
TARGETS_FILE = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "targets.json"


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


def load_targets(path: str | Path = TARGETS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the benchmark targets live there (docs/benchmarks/ of a checkout)"
        )
    return json.loads(path.read_text())


def _target(name: str, status: str, detail: str, values: Any = None) -> dict[str, Any]:
    return {"target": name, "status": status, "detail": detail, "values": values}


def evaluate_targets(suites: dict[str, dict], targets: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    t = targets or load_targets()
    models, memory = suites.get("models"), suites.get("memory")
    return [
        _lax_overhead(models, t["lax_overhead"]),
        _flop_ratio(models, t["time_over_flop"]),
        _cola_m(memory, t["cola_m_temp"]),
        *_mfu(models, t["dense_mfu"], t["cola_lax_mfu_fraction"]),
        _dense_over_plain(suites.get("reference"), t["dense_over_plain"]),
        _loop_over_step(suites.get("loop"), t["loop_over_step"]),
        *_device(suites.get("device"), t["device"]),
    ]


def _lax_overhead(models: dict | None, target: dict) -> dict:
    default, by_preset = target["max"], target.get("max_by_preset", {})
    limits = ", ".join([f"{default:.0%}", *(f"{v:.0%} at {k}" for k, v in by_preset.items())])
    name = f"LaX (kron) adds <= {limits} train-step time over the same low-rank model"
    rows = [r for r in (models or {}).get("rows", []) if r.get("lax_overhead") is not None]
    if not rows:
        return _target(
            name, "not measurable here", "no models suite with a low-rank model and its +kron twin"
        )
    limit = lambda r: by_preset.get(r["preset"], default)  # noqa: E731
    values = {f"{r['case']} {r['name']}": round(r["lax_overhead"], 4) for r in rows}
    worst = max(rows, key=lambda r: r["lax_overhead"] - limit(r))
    detail = (
        f"worst against its limit {worst['lax_overhead']:+.1%} ({worst['name']}, {worst['case']}, limit "
        f"{limit(worst):.0%}; paired medians); all (paired median [fastest samples]): "
        + ", ".join(
            f"{r['name']} {r['preset']} {r['lax_overhead']:+.1%} [{r['lax_overhead_min']:+.1%}]" for r in rows
        )
        + _noise_note(models)
    )
    excess = worst["lax_overhead"] - limit(worst)
    if excess <= 0:
        return _target(name, "met", detail, values)
    return _target(name, f"missed (by {excess * 100:.1f} points)", detail, values)


def _dense_over_plain(reference: dict | None, target: dict) -> dict:
    limit = target["max"]
    name = f"dense train step <= {limit}x a plain-JAX x @ W step of the same model"
    rows = [
        r
        for r in (reference or {}).get("rows", [])
        if r["kind"] == "dense" and r["impl"] == "ours" and r.get("over_plain_jax") is not None
    ]
    if not rows:
        return _target(name, "not measurable here", "no reference suite with dense ours and plain_jax rows")
    values = {r["case"]: round(r["over_plain_jax"], 3) for r in rows}
    worst = max(rows, key=lambda r: r["over_plain_jax"])
    detail = ", ".join(
        f"{r['case']}: {r['over_plain_jax']:.3f}x [fastest samples {r['over_plain_jax_min']:.3f}x]"
        for r in rows
    )
    torch = [r for r in (reference or {}).get("rows", []) if r["impl"] == "ours" and r.get("over_pytorch")]
    if torch:
        detail += "; ours over PyTorch: " + ", ".join(f"{r['kind']} {r['over_pytorch']:.2f}x" for r in torch)
    if worst["over_plain_jax"] <= limit:
        return _target(name, "met", detail, values)
    return _target(name, f"missed (worst {worst['over_plain_jax']:.3f}x)", detail, values)


def _loop_over_step(loop: dict | None, target: dict) -> dict:
    limit = target["max"]
    name = f"train() loop <= {limit}x its bare compiled step (steady state, same batch)"
    rows = (loop or {}).get("rows", [])
    if not rows:
        return _target(name, "not measurable here", "no loop suite")
    values = {f"{r['case']} {row_variant_name(r)}": round(r["ratio"], 3) for r in rows}
    worst = max(rows, key=lambda r: r["ratio"])
    detail = ", ".join(
        f"{row_variant_name(r)} {r['case']}: {r['ratio']:.3f}x [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]"
        for r in rows
    )
    if worst["ratio"] <= limit:
        return _target(name, "met", detail, values)
    return _target(name, f"missed (worst {worst['ratio']:.3f}x)", detail, values)


def row_variant_name(row: dict) -> str:
    """The variant of a suite row that keeps its kind and crossing apart."""
    return variant_name(row["kind"], row["crossing"])


def _device(device: dict | None, t: dict) -> list[dict]:
    mfu_t, speed_t, lax_t = t["dense_mfu"], t["cola_lax_speedup"], t["lax_overhead"]
    names = (
        f"device: dense {mfu_t['preset']} MFU >= {mfu_t['min']:.0%} (bf16, largest batch)",
        f"device: cola+LaX {speed_t['preset']} tokens/s >= {speed_t['min']}x dense",
        f"device: LaX (kron) overhead <= {lax_t['max']:.0%}",
    )
    rows = (device or {}).get("rows", [])
    steps = {(r["preset"], r["name"]): r for r in rows if r["row"] == "step" and r.get("status") == "ok"}
    summary = {r["preset"]: r for r in rows if r["row"] == "summary"}
    on_device = (device or {}).get("settings", {}).get("accelerator")
    if not on_device:
        why = "not measurable here (no device suite run on an accelerator: scripts/device_check.sh)"
        return [_target(n, why, "needs scripts/device_check.sh on a GPU") for n in names]
    out = []
    dense = steps.get((mfu_t["preset"], "dense"))
    if dense is None or dense.get("mfu") is None:
        out.append(_target(names[0], "not measurable here", f"no dense {mfu_t['preset']} row with an MFU"))
    else:
        ok = dense["mfu"] >= mfu_t["min"]
        status = "met" if ok else f"missed (by {(mfu_t['min'] - dense['mfu']) * 100:.1f} points)"
        out.append(
            _target(names[0], status, f"{dense['mfu']:.1%} at batch {dense['batch_size']}", dense["mfu"])
        )
    speed = summary.get(speed_t["preset"], {}).get("cola_lax_speedup_vs_dense")
    if speed is None:
        out.append(
            _target(names[1], "not measurable here", f"no {speed_t['preset']} dense and cola+kron rows")
        )
    else:
        status = "met" if speed >= speed_t["min"] else f"missed (by {speed_t['min'] - speed:.2f}x)"
        out.append(_target(names[1], status, f"{speed:.2f}x", speed))
    lax = {p: r["lax_overhead"] for p, r in summary.items() if r.get("lax_overhead") is not None}
    if not lax:
        out.append(_target(names[2], "not measurable here", "no preset with cola and cola+kron rows"))
    else:
        worst = max(lax, key=lax.get)
        detail = ", ".join(f"{p}: {v:+.1%}" for p, v in lax.items())
        excess = lax[worst] - lax_t["max"]
        status = "met" if excess <= 0 else f"missed (by {excess * 100:.1f} points)"
        out.append(_target(names[2], status, detail, lax))
    return out


def _families(target: dict) -> str:
    return "/".join(get_task(f).model_class.__name__ for f in target["families"])


def _flop_ratio(models: dict | None, target: dict) -> dict:
    limit = target["max"]
    name = f"low-rank step-time ratio vs dense <= {limit}x its FLOP ratio ({_families(target)} models)"
    rows = [
        r
        for r in (models or {}).get("rows", [])
        if r["family"] in target["families"]
        and r["kind"] != "dense"
        and r.get("measured_over_predicted") is not None
    ]
    if not rows:
        return _target(
            name,
            "not measurable here",
            f"no {_families(target)} rows with a dense baseline in the models suite",
        )
    values = {f"{r['case']} {r['name']}": round(r["measured_over_predicted"], 3) for r in rows}
    worst = max(rows, key=lambda r: r["measured_over_predicted"])
    detail = (
        f"(t/t_dense)/(F/F_dense): worst {worst['measured_over_predicted']:.2f} ({worst['name']}, "
        f"{worst['case']}); all: "
        + ", ".join(f"{r['name']} {r['preset']} {r['measured_over_predicted']:.2f}" for r in rows)
        + _noise_note(models)
    )
    if worst["measured_over_predicted"] <= limit:
        return _target(name, "met", detail, values)
    return _target(
        name,
        f"missed (worst {worst['measured_over_predicted']:.2f}x, "
        f"{worst['measured_over_predicted'] / limit:.2f}x over the limit)",
        detail,
        values,
    )


def _noise_note(models: dict | None) -> str:
    """How far the timings scatter: the largest (max - min) / median of a step time, and the load."""
    rows = (models or {}).get("rows", [])
    spreads = [
        (r["step_time"]["max"] - r["step_time"]["min"]) / r["step_time_s"]
        for r in rows
        if "max" in r.get("step_time", {})
    ]
    if not spreads:
        return ""
    load = (models or {}).get("load", {}).get("before")
    tiny = " Tiny smoke settings: not meaningful." if (models or {}).get("tiny") else ""
    return (
        f". Noise: step-time spread (max-min)/median up to {max(spreads):.0%}"
        + (
            f", load average {load[0]:.1f} on {(models or {}).get('machine', {}).get('cpu_count')} CPUs"
            if load
            else ""
        )
        + "."
        + tiny
    )


def _cola_m(memory: dict | None, target: dict) -> dict:
    limit = target["min"]
    name = f"CoLA-M cuts train-step temp (activation) memory >= {limit}x vs CoLA without remat"
    rows = [
        r
        for r in (memory or {}).get("rows", [])
        if r["kind"] == "cola"
        and r["crossing"] == "none"
        and r["remat"] == "cola_m"
        and r.get("temp_reduction_vs_no_remat") is not None
    ]
    if not rows:
        return _target(name, "not measurable here", "no memory suite with cola and cola remat=cola_m")
    values = {r["preset"]: round(r["temp_reduction_vs_no_remat"], 3) for r in rows}
    worst = min(rows, key=lambda r: r["temp_reduction_vs_no_remat"])
    opts = (memory or {}).get("settings", {}).get("compiler_options") or {}
    detail = ", ".join(f"{r['preset']}: {r['temp_reduction_vs_no_remat']:.2f}x" for r in rows)
    if opts:
        detail += f" (compiled with {opts}: XLA:CPU otherwise drops remat)"
    if worst["temp_reduction_vs_no_remat"] >= limit:
        return _target(name, "met", detail, values)
    return _target(
        name,
        f"missed (worst {worst['temp_reduction_vs_no_remat']:.2f}x, short by "
        f"{limit - worst['temp_reduction_vs_no_remat']:.2f}x)",
        detail,
        values,
    )


def _mfu(models: dict | None, dense_target: dict, fraction_target: dict) -> list[dict]:
    dense_min, fraction_min = dense_target["min"], fraction_target["min"]
    preset, dtype = dense_target["preset"], dense_target["dtype"]
    t1 = f"GPU: MFU of dense {preset} >= {dense_min:.0%} in {dtype}"
    t2 = f"GPU: cola+LaX MFU >= {fraction_min:.0%} of dense MFU"
    families = set(dense_target["families"]) | set(fraction_target["families"])
    rows = [r for r in (models or {}).get("rows", []) if r["family"] in families and r.get("mfu") is not None]
    if not rows:
        backend = (models or {}).get("machine", {}).get("backend", "unknown")
        why = (
            f"not measurable here (backend {backend}: no peak FLOP/s, so no MFU)"
            if models
            else "not measurable here (no models suite)"
        )
        return [
            _target(t1, why, "needs an accelerator in train.mfu.PEAK_BF16_FLOPS"),
            _target(t2, why, "needs an accelerator in train.mfu.PEAK_BF16_FLOPS"),
        ]
    out = []
    dense = [
        r
        for r in rows
        if r["family"] in dense_target["families"]
        and r["preset"] == preset
        and r["kind"] == "dense"
        and r["dtype"] == dtype
    ]
    if dense:
        r = dense[0]
        status = "met" if r["mfu"] >= dense_min else f"missed (by {(dense_min - r['mfu']) * 100:.1f} points)"
        out.append(_target(t1, status, f"dense {preset} {dtype} MFU {r['mfu']:.1%} ({r['case']})", r["mfu"]))
    else:
        family = dense_target["families"][0]
        out.append(
            _target(
                t1,
                "not measurable here",
                f"no dense {preset} {dtype} row (run with --cases={family}:{preset}:B --dtype={dtype})",
            )
        )
    pairs = []
    for case in dict.fromkeys(r["case"] for r in rows if r["family"] in fraction_target["families"]):
        by = {(r["kind"], r["crossing"]): r for r in rows if r["case"] == case}
        dense_row, lax_row = by.get(("dense", "none")), by.get(("cola", "kron"))
        if dense_row and lax_row:
            pairs.append((case, lax_row["preset"], lax_row["mfu"] / dense_row["mfu"]))
    if not pairs:
        out.append(_target(t2, "not measurable here", "no case with both dense and cola+kron MFU"))
    else:
        at_preset = [p for p in pairs if p[1] == fraction_target["preset"]]
        worst = min(at_preset or pairs, key=lambda p: p[2])
        where = "" if at_preset else f" (no {fraction_target['preset']} case: judged on every case)"
        detail = ", ".join(f"{c}: {f:.1%}" for c, _, f in pairs) + where
        status = (
            "met" if worst[2] >= fraction_min else f"missed (by {(fraction_min - worst[2]) * 100:.1f} points)"
        )
        out.append(_target(t2, status, detail, {c: f for c, _, f in pairs}))
    return out


# --------------------------------------------------------------------------------------------- markdown


def _suite_line(suite: dict) -> str:
    return machine_line(suite.get("machine", {}), suite.get("load", {}), suite.get("command", ""))


def render_layers(suite: dict) -> list[str]:
    s = suite["settings"]
    lines = [
        "## Layers: one d -> d projection, forward + backward",
        "",
        _suite_line(suite),
        "",
        f"{s['unit']}; {s['tokens']} tokens per call, {s['dtype']}, rank {s['rank_rule']}; "
        f"{s['repeats']} interleaved repeats after {s['warmup']} warm-up call(s), median per token. "
        "FLOPs/token: the layer's analytic forward count (`flops_per_token`, gate included). "
        "meas/pred = (t/t_dense)/(F/F_dense). LaX overhead: vs the same layer without crossing.",
        "",
    ]
    for d in s["widths"]:
        rows = [r for r in suite["rows"] if r["width"] == d]
        ns = lambda seconds, r: num(seconds / r["tokens"] * 1e9, ".1f")  # noqa: E731
        lines += [
            f"### d = {d}",
            "",
            markdown_table(
                [
                    "variant",
                    "latent",
                    "params",
                    "FLOPs/token",
                    "time/token (ns)",
                    "min-max (ns)",
                    "t/t_dense",
                    "F/F_dense",
                    "meas/pred",
                    "LaX overhead",
                    "GFLOP/s",
                ],
                [
                    [
                        r["name"],
                        num(r["latent_dim"], "d"),
                        f"{r['params']:,}",
                        f"{r['flops_per_token']:,}",
                        num(r["time_per_token_s"] * 1e9, ".1f"),
                        f"{ns(r['time_per_call']['min'], r)}-{ns(r['time_per_call']['max'], r)}",
                        num(r.get("time_ratio_vs_dense")),
                        num(r.get("flop_ratio_vs_dense")),
                        num(r.get("measured_over_predicted")),
                        percent(r.get("lax_overhead"), "+.1f"),
                        num(r["gflops_per_s"], ".1f"),
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    return lines


def render_models(suite: dict) -> list[str]:
    s = suite["settings"]
    lines = [
        "## Models: train step",
        "",
        _suite_line(suite),
        "",
        f"{s['unit']}; synthetic random batches, {s['dtype']}; {s['repeats']} interleaved repeats after "
        f"{s['warmup']} warm-up step(s); median, [min, max]. FLOPs: analytic training FLOPs per token "
        "(3 x forward). meas/pred = (t/t_dense)/(F/F_dense). LaX overhead: vs the same kind without LaX "
        "(paired median over rounds; in brackets from the fastest samples).",
        "",
    ]
    lines += [f"- {n}" for n in suite.get("notes", [])] + [""]
    for case in dict.fromkeys(r["case"] for r in suite["rows"]):
        rows = [r for r in suite["rows"] if r["case"] == case]
        rate = get_task(rows[0]["family"]).throughput_key
        lines += [
            f"### {case}",
            "",
            markdown_table(
                [
                    "variant",
                    "params",
                    "non-emb params",
                    "train GFLOPs/token",
                    "step (ms)",
                    "[min, max] (ms)",
                    rate.replace("_per_s", "/s"),
                    "TFLOP/s",
                    "MFU",
                    "t/t_dense",
                    "F/F_dense",
                    "meas/pred",
                    "LaX overhead",
                ],
                [
                    [
                        r["name"],
                        f"{r['params']:,}",
                        f"{r['non_embedding_params']:,}",
                        num(r["train_flops_per_token"] / 1e9, ".4f"),
                        num(r["step_time_s"] * 1e3, ".1f"),
                        f"[{r['step_time']['min'] * 1e3:.1f}, {r['step_time']['max'] * 1e3:.1f}]",
                        num(r[rate], ",.0f"),
                        num(r["tflops_per_s"], ".4f"),
                        percent(r.get("mfu")),
                        num(r.get("time_ratio_vs_dense")),
                        num(r.get("flop_ratio_vs_dense")),
                        num(r.get("measured_over_predicted")),
                        (
                            f"{percent(r['lax_overhead'], '+.1f')} [{percent(r['lax_overhead_min'], '+.1f')}]"
                            if r.get("lax_overhead") is not None
                            else "-"
                        ),
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    return lines


def render_memory(suite: dict) -> list[str]:
    s = suite["settings"]
    mib = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    lines = [
        "## Memory: train step, compile only",
        "",
        _suite_line(suite),
        "",
        f"{s['unit']}: batch {s['batch_size']} x {s['seq_len']} tokens, {s['dtype']}"
        + (f", shrunk model {s['shrunk']}" if s.get("shrunk") else "")
        + (
            f"; compiler options {s['compiler_options']} (XLA:CPU would otherwise drop the remat)"
            if s.get("compiler_options")
            else ""
        )
        + ". MiB. total = temp + argument + output; peak est. = total - alias (donated buffers).",
        "",
    ]
    lines.append(
        markdown_table(
            [
                "preset",
                "variant",
                "params",
                "temp",
                "argument",
                "output",
                "total",
                "peak est.",
                "temp cut vs no remat",
                "temp vs dense",
                "argument vs fp32",
            ],
            [
                [
                    r["preset"] + (" (shrunk)" if r.get("shrunk") else ""),
                    r["name"],
                    f"{r['params']:,}",
                    mib(r["bytes"]["temp"]),
                    mib(r["bytes"]["argument"]),
                    mib(r["bytes"]["output"]),
                    mib(r["bytes"]["total"]),
                    mib(r["bytes"]["peak_estimate"]),
                    num(r.get("temp_reduction_vs_no_remat"), ".2f")
                    + ("x" if r.get("temp_reduction_vs_no_remat") else ""),
                    num(r.get("temp_ratio_vs_dense"), ".2f"),
                    num(r.get("argument_ratio_vs_fp32"), ".3f"),
                ]
                for r in suite["rows"]
            ],
        )
    )
    return lines + [""]


def render_reference(suite: dict) -> list[str]:
    s = suite["settings"]
    lines = [
        "## Reference: our train step vs plain JAX and PyTorch",
        "",
        _suite_line(suite),
        "",
        f"{s['unit']}; {s['repeats']} interleaved repeats after {s['warmup']} warm-up step(s); median, "
        "[min, max]. plain_jax: the same model as plain functions, every projection x @ W (or act(x A) B), same "
        "optimizer; pytorch: the same model and step in eager PyTorch "
        f"({s.get('torch_threads')} threads). ours[NAME]: our step compiled with XLA options NAME "
        f"({', '.join(f'{k}: {v}' for k, v in s['xla_options'].items() if v) or 'none'}). "
        "Ratios are step-time ratios within a kind (in brackets from the fastest samples).",
        "",
    ]
    lines += [f"- {n}" for n in suite.get("notes", [])] + [""]
    ratio = lambda r, k: (  # noqa: E731
        f"{num(r[k], '.3f')} [{num(r[k + '_min'], '.3f')}]" if r.get(k) is not None else "-"
    )
    for case in dict.fromkeys(r["case"] for r in suite["rows"]):
        rows = [r for r in suite["rows"] if r["case"] == case]
        lines += [
            f"### {case}",
            "",
            markdown_table(
                [
                    "kind",
                    "step",
                    "step (ms)",
                    "[min, max] (ms)",
                    "tokens/s",
                    "over ours",
                    "over plain_jax",
                    "over pytorch",
                ],
                [
                    [
                        r["kind"],
                        r["impl"],
                        num(r["step_time_s"] * 1e3, ".1f"),
                        f"[{r['step_time']['min'] * 1e3:.1f}, {r['step_time']['max'] * 1e3:.1f}]",
                        num(r["tokens_per_s"], ",.0f"),
                        ratio(r, "over_ours"),
                        ratio(r, "over_plain_jax"),
                        ratio(r, "over_pytorch"),
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    return lines


def render_loop(suite: dict) -> list[str]:
    s = suite["settings"]
    lines = [
        "## Loop: train() against its bare compiled step",
        "",
        _suite_line(suite),
        "",
        f"Per round (the order alternates), the step alone: the loop's program called {s['steps']} times on one "
        f"device-resident batch; the loop: `train()` in a fresh workdir, its steady-state s/step from its own "
        f"throughput records after {s['warmup_steps']} warm-up steps (logging every {s['log_every']}). "
        f"Median of {s['repeats']} rounds, [min, max] of the per-round ratio. CPU seconds (user, system) "
        "per step: the step over its timed calls, the loop over its whole run (compilation included).",
        "",
        markdown_table(
            [
                "case",
                "variant",
                "step (ms)",
                "loop (ms)",
                "loop / step",
                "[min, max]",
                "user / sys per step (s)",
            ],
            [
                [
                    r["case"],
                    row_variant_name(r),
                    num(r["step_s"] * 1e3, ".1f"),
                    num(r["loop_s"] * 1e3, ".1f"),
                    num(r["ratio"], ".3f"),
                    f"[{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]",
                    f"step {r['step_user_s']:.2f} / {r['step_sys_s']:.2f}; "
                    f"loop {r['loop_user_s']:.2f} / {r['loop_sys_s']:.2f}",
                ]
                for r in suite["rows"]
            ],
        ),
        "",
    ]
    return lines


def render_device(suite: dict) -> list[str]:
    s = suite["settings"]
    gib = lambda b: "-" if b is None else f"{b / 2**30:,.2f}"  # noqa: E731
    rows = suite["rows"]
    devices = next((r["devices"] for r in rows if r["row"] == "devices"), [])
    attn = next((r for r in rows if r["row"] == "attention"), {})
    lines = [
        "## Device: paper presets on one accelerator",
        "",
        _suite_line(suite),
        "",
        f"{s['unit']}; sequences of {s['seq_len']} tokens"
        + (" (tiny: shrunk models, dry run)" if s.get("tiny") else "")
        + f"; the largest batch that fits ({s['fill']:.0%} of the device's memory by the planner); "
        f"{s['repeats']} repeats after {s['warmup']} warm-up steps, median. Peak memory in GiB: the planner's "
        "estimate (train.preflight) and the device's peak_bytes_in_use over the variant's steps.",
        "",
        f"- jax.devices(): {', '.join(devices)}",
        f"- model.attention=auto picks {attn.get('auto_picks')}; cuDNN: {attn.get('cudnn')}"
        + (
            f" (vs XLA max |diff| {attn['max_abs_diff']:.2e}, mean {attn['mean_abs_diff']:.2e})"
            if attn.get("max_abs_diff") is not None
            else ""
        ),
        "",
        markdown_table(
            [
                "preset",
                "variant",
                "status",
                "batch",
                "step (ms)",
                "tokens/s",
                "TFLOP/s",
                "MFU",
                "planner peak",
                "measured peak",
                "measured/planner",
                "compile (s)",
            ],
            [
                [
                    r["preset"] + (" (shrunk)" if r.get("shrunk") else ""),
                    r["name"],
                    r["status"],
                    num(r.get("batch_size"), "d"),
                    num(r["step_time_s"] * 1e3, ".1f") if r.get("step_time_s") else "-",
                    num(r.get("tokens_per_s"), ",.0f"),
                    num(r.get("tflops_per_s"), ".1f"),
                    percent(r.get("mfu")),
                    gib(r.get("planner_peak_bytes")),
                    gib(r.get("measured_peak_bytes"))
                    if r.get("measured_peak_bytes")
                    else r.get("measured_note") or "-",
                    num(r.get("measured_over_planner"), ".2f"),
                    "+".join(f"{c:.0f}" for c in r.get("compile_s", [])) or "-",
                ]
                for r in rows
                if r["row"] == "step"
            ],
        ),
        "",
        markdown_table(
            [
                "preset",
                "LaX overhead (cola vs cola+kron)",
                "cola / dense tokens/s",
                "cola+kron / dense tokens/s",
            ],
            [
                [
                    r["preset"],
                    percent(r["lax_overhead"], "+.1f"),
                    num(r["cola_speedup_vs_dense"]),
                    num(r["cola_lax_speedup_vs_dense"]),
                ]
                for r in rows
                if r["row"] == "summary"
            ],
        ),
        "",
    ]
    kron = [r for r in rows if r["row"] == "kron"]
    if kron:
        lines += [
            "Kron gate implementations: one cola layer d -> d at r = d/4, forward + backward, LaX overhead "
            "(paired) over the same layer without crossing; auto = what `kron_impl=auto` picks here.",
            "",
            markdown_table(
                ["latent r", "factored", "gemm", "auto picks"],
                [
                    [
                        str(r),
                        *(
                            percent(
                                next(
                                    x["lax_overhead"]
                                    for x in kron
                                    if x["latent"] == r and x["kron_impl"] == i
                                ),
                                "+.1f",
                            )
                            for i in ("factored", "gemm")
                        ),
                        next(x["auto_picks"] for x in kron if x["latent"] == r),
                    ]
                    for r in dict.fromkeys(x["latent"] for x in kron)
                ],
            ),
            "",
        ]
    return lines


def render_targets(targets: list[dict]) -> list[str]:
    return [
        "## Targets",
        "",
        markdown_table(
            ["target", "status", "detail"], [[t["target"], t["status"], t["detail"]] for t in targets]
        ),
        "",
    ]


def render_markdown(data: dict) -> str:
    suites = data.get("suites", {})
    lines = [
        "# lax-pretrain benchmarks",
        "",
        "Written by `scripts/bench.py` (lax_pretrain.bench); the numbers of every table are in bench.json, "
        "the targets' limits in docs/benchmarks/targets.json.",
        "",
    ]
    renders = (
        ("layers", render_layers),
        ("models", render_models),
        ("memory", render_memory),
        ("reference", render_reference),
        ("loop", render_loop),
        ("device", render_device),
    )
    for name, render in renders:
        if name in suites:
            lines += render(suites[name])
    lines += render_targets(data.get("targets") or evaluate_targets(suites))
    return "\n".join(lines)
