"""Compare training runs: tabulate them, summarise runs that differ only by seed, plot, write a report.

    runs = results.load_runs(["runs/sweep_cpu"])    # run dirs, sweep dirs (their run sub-dirs) or globs
    write_report(runs, "reports/sweep_cpu")         # report.md/.json, loss_curves.png, val_vs_params.png

    python -m lax_pretrain.experiments.compare RUN_DIR_OR_GLOB... --out=REPORT_DIR [--title=...]
    python -m lax_pretrain.experiments.compare --wandb=ENTITY/PROJECT [--group=SWEEP] --out=REPORT_DIR

Runs in progress and failed runs are listed with their status and left out of the plots where they have no
metrics; the columns are defined in `experiments.results`. Runs whose names differ only in `train.seed` form
one group (one row) of the per-variant table: the mean and spread over seeds of the final headline metric,
the difference to the family's dense group and the LaX gain over the same group without a crossing
(positive = better).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lax_pretrain import cli
from lax_pretrain.experiments import report
from lax_pretrain.experiments.results import RunResult, load_runs, load_wandb_runs, seed_groups

LOSS_CURVES = "loss_curves.png"
VAL_VS_PARAMS = "val_vs_params.png"
REPORT = "report.md"


def _headers(runs: Sequence[RunResult], what: str) -> tuple[str, str]:
    """The metric and throughput column names for the families among `runs`."""
    tasks = list(dict.fromkeys(r.task for r in runs if r.task))
    labels = " / ".join(t.headline_label for t in tasks) or "val metric"
    rates = " or ".join(t.throughput_key.replace("_per_s", "/s") for t in tasks) or "throughput"
    return f"{what} {labels}", rates


def markdown_table(runs: Sequence[RunResult]) -> str:
    val_header, rate_header = _headers(runs, "best")
    header = [
        "run",
        "kind",
        "crossing",
        "params",
        "non-emb params",
        "FLOPs/token",
        "final train loss",
        "best val loss",
        val_header,
        rate_header,
        "MFU",
        "wall time",
        "status",
    ]
    rows = []
    for r in runs:
        status = (
            r.status
            if r.status != "running" or r.target_steps is None
            else f"running ({r.step}/{r.target_steps})"
        )
        rows.append(
            [
                r.name,
                r.kind or "-",
                r.crossing or "-",
                report.count(r.params),
                report.count(r.non_embedding_params),
                report.count(r.flops_per_token),
                report.num(r.final_train_loss, ".4f"),
                report.num(r.best_val_loss, ".4f"),
                report.metric(r.best_metric, r.metric),
                report.num(r.throughput, ",.0f"),
                report.percent(r.mfu),
                report.duration(r.wall_time_s),
                status,
            ]
        )
    return report.markdown_table(header, rows, align="lll" + "r" * 9 + "l")


# ------------------------------------------------------------------------------------- seeds and variants


def variant_summary(runs: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """Per seed group with a final metric, keyed by its variant name (by its group name where one variant has
    several groups): runs, mean and spread (max - min, more than one seed) of final_metric, non-embedding
    parameters, and vs the family's one dense group and the group's twin without a crossing."""
    groups = {k: g for k, g in seed_groups(runs).items() if any(r.final_metric is not None for r in g)}
    variants = [g[0].variant for g in groups.values()]
    out: dict[str, dict[str, Any]] = {}
    for key, group in groups.items():
        values = [r.final_metric for r in group if r.final_metric is not None]
        first = group[0]
        out[key] = {
            "label": first.variant if variants.count(first.variant) == 1 else key,
            "family": first.family,
            "kind": first.kind,
            "crossing": first.crossing,
            "metric": first.metric,
            "metric_label": first.task.headline_label if first.task else first.metric,
            "higher_is_better": bool(first.task and first.task.higher_is_better),
            "non_embedding_params": first.non_embedding_params,
            "flops_per_token": first.flops_per_token,
            "seeds": len(values),
            "values": values,  # one per seed, in run order
            "mean": statistics.fmean(values),
            "spread": max(values) - min(values) if len(values) > 1 else None,
        }
    dense_of: dict[str | None, list[dict[str, Any]]] = {}
    for s in out.values():
        if s["kind"] == "dense":
            dense_of.setdefault(s["family"], []).append(s)
    for key, s in out.items():
        sign = 1.0 if s["higher_is_better"] else -1.0
        dense = dense_of.get(s["family"], [])
        if len(dense) == 1 and dense[0] is not s:
            s["delta_vs_dense"] = s["mean"] - dense[0]["mean"]
            if s["non_embedding_params"] and dense[0]["non_embedding_params"]:
                s["params_vs_dense"] = dense[0]["non_embedding_params"] / s["non_embedding_params"]
        twin = (
            out.get(key.replace(f"_lax={s['crossing']}", "_lax=none"))
            if s["crossing"] not in (None, "none")
            else None
        )
        if twin is not None:
            s["lax_gain"] = (s["mean"] - twin["mean"]) * sign
    return {s.pop("label"): s for s in out.values()}


def noise(summary: dict[str, dict[str, Any]]) -> float | None:
    """The largest seed spread of a summary: differences below it are not resolved."""
    spreads = [s["spread"] for s in summary.values() if s["spread"] is not None]
    return max(spreads) if spreads else None


def in_noise_units(value: float | None, noise_level: float | None) -> str:
    """'+2.3' (value / noise); '-' where either is missing or the noise is zero."""
    return f"{value / noise_level:+.1f}" if value is not None and noise_level else "-"


def summary_table(summary: dict[str, dict[str, Any]]) -> str:
    noise_level = noise(summary)
    rows = [
        [
            label,
            str(s["seeds"]),
            ", ".join(report.metric(v, s["metric"]) for v in s["values"]),
            report.num(s["non_embedding_params"], ","),
            report.num(s.get("params_vs_dense"), ".2f") + ("x" if s.get("params_vs_dense") else ""),
            report.metric(s["mean"], s["metric"]),
            report.metric(s["spread"], s["metric"], difference=True),
            report.metric(s.get("delta_vs_dense"), s["metric"], signed=True),
            report.metric(s.get("lax_gain"), s["metric"], signed=True),
            in_noise_units(s.get("lax_gain"), noise_level),
        ]
        for label, s in summary.items()
    ]
    labels = " / ".join(dict.fromkeys(s["metric_label"] for s in summary.values()))
    header = [
        "variant",
        "seeds",
        "per seed",
        "non-emb params",
        "fewer than dense",
        f"mean final {labels}",
        "spread (max-min)",
        "vs dense",
        "LaX gain",
        "LaX gain / noise",
    ]
    return report.markdown_table(header, rows, align="l" + "r" * 9)


# ----------------------------------------------------------------------------------------------- report


def write_report(
    runs: Sequence[RunResult],
    out_dir: str | Path,
    *,
    title: str = "Run comparison",
    notes: Sequence[str] = (),
    meta: dict[str, Any] | None = None,
    stem: str = "report",
    x: str = "params",
    y: str = "best_metric",
    sections: Sequence[str] = (),
) -> Path:
    """`<stem>.md` (notes, table, per-variant table where runs repeat a seed group, `sections` (markdown lines
    given by the caller), plots, failures),
    `<stem>.json` (`meta`, every run, the per-variant summary), loss_curves.png and val_vs_params.png (`y`
    against `x`, see `report.plot_metric_vs_params`) in `out_dir`; returns the markdown's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.plot_loss_curves(runs, out / LOSS_CURVES)
    report.plot_metric_vs_params(runs, out / VAL_VS_PARAMS, x=x, y=y)
    summary = variant_summary(runs)
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines = [
        f"# {title}",
        "",
        *[f"- {n}" for n in notes],
        *([""] if notes else []),
        f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".",
        "",
        markdown_table(runs),
        "",
        "params, non-emb params, FLOPs/token: analytic, from the step-0 record (forward FLOPs per token). "
        "Best val: lowest validation loss; the best headline metric (lowest perplexity, highest top-1). "
        "Throughput, MFU: medians over the train records. Wall time: the training loop's time summed over "
        "resumed segments. Status: finished, running (step/target), stopped (interrupted; running it again "
        "resumes it), failed, pending.",
        "",
    ]
    if summary:
        lines += [
            "## Per variant (mean over seeds)",
            "",
            summary_table(summary),
            "",
            "Noise level (largest seed spread): "
            f"{report.metric(noise(summary), runs[0].metric, difference=True)}. LaX gain: the improvement "
            "over the same runs without a crossing (positive is better); differences smaller than the noise "
            "level are not resolved by this budget. LaX gain / noise: the gain in units of the noise level.",
            "",
        ]
    lines += [*sections, *([""] if sections else [])]
    lines += [
        f"![train and validation loss]({LOSS_CURVES})",
        "",
        f"![validation metric vs parameters]({VAL_VS_PARAMS})",
        "",
    ]
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        lines += ["## Failed runs", ""]
        for r in failed:
            lines += [
                f"### {r.name}",
                "",
                f"`{r.source}`",
                "",
                "```",
                r.error or "(no stderr recorded)",
                "```",
                "",
            ]
    data = {
        "title": title,
        **(meta or {}),
        "runs": [dataclasses.asdict(r) for r in runs],
        "summary": {"variants": summary, "noise": noise(summary)},
    }
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------------------------------------- the CLI


def _parser():
    p = cli.parser("lax-compare", __doc__)
    p.add_argument("paths", nargs="*", help="run directories, sweep directories or glob patterns")
    p.add_argument("--out", required=True, help="report directory (created)")
    p.add_argument(
        "--wandb", default=None, help="read the W&B runs of ENTITY/PROJECT instead (needs the network)"
    )
    p.add_argument("--group", default=None, help="with --wandb: only this group (the sweep's name)")
    p.add_argument("--title", default="Run comparison", help="report title")
    return p


def _run(a) -> int:
    if a.wandb:
        runs = load_wandb_runs(a.wandb, a.group)
    elif a.paths:
        runs = load_runs(a.paths)
    else:
        raise ValueError("give run directories (or globs), or --wandb=ENTITY/PROJECT")
    path = write_report(runs, a.out, title=a.title)
    print(markdown_table(runs))
    print(f"\nwrote {path} and its plots")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_parsed(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
