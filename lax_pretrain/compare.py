"""Compare training runs: load them (local workdirs, or W&B runs), tabulate, plot, write a markdown report.

    runs = load_runs(["runs/sweep_cpu"])            # run dirs, sweep dirs (their run sub-dirs) or globs
    write_report(runs, "reports/sweep_cpu")         # report.md, loss_curves.png, val_vs_params.png

A local run is read from its workdir: metrics.jsonl (the source of truth), config.json (kind, crossing, batch
size, target steps) and, for runs started by scripts/sweep.py, sweep_status.json (name, failure, liveness).
Status is `lax_pretrain.sweep.run_status`: finished, running, stopped (interrupted, resumable), failed or
pending. Runs without metrics (failed, pending) are listed with their status and left out of the plots.

Column definitions (report.md repeats them):
  params / non-emb params / FLOPs/token   the step-0 record (analytic forward FLOPs per token)
  final train loss                        the last train record
  best val                                lowest validation loss; lowest perplexity (LM), highest top-1 (ViT)
  tokens/s (images/s)                     median over the train records (the first window includes compiling)
  MFU                                     median; '-' where the device's peak is unknown (CPUs)
  wall time                               the training loop's own time, summed over resumed segments (each
                                          record's window: steps x batch / throughput), so downtime between a
                                          kill and the resume is not counted
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from lax_pretrain import sweep

log = logging.getLogger(__name__)
LOSS_CURVES = "loss_curves.png"
VAL_VS_PARAMS = "val_vs_params.png"
REPORT = "report.md"
FAMILY_NAMES = {"llama": "LLaMA", "vit": "ViT"}
CROSSING_COLOURS = {"none": "tab:blue", "kron": "tab:orange", "identity": "tab:green", "dense": "tab:red"}
KIND_MARKERS = {"dense": "s", "svd": "^", "cola": "o", "tt": "D"}


@dataclass
class RunResult:
    name: str
    source: str  # workdir, or W&B run path
    status: str
    family: str | None = None  # 'llama' | 'vit'
    kind: str | None = None
    crossing: str | None = None
    params: int | None = None
    non_embedding_params: int | None = None
    flops_per_token: int | None = None
    final_train_loss: float | None = None
    best_val_loss: float | None = None
    best_val_ppl: float | None = None
    best_val_top1: float | None = None
    throughput: float | None = None  # tokens/s (llama) or images/s (vit)
    mfu: float | None = None
    wall_time_s: float | None = None
    step: int = 0  # the last step with a train record
    target_steps: int | None = None
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    error: str = ""  # the last stderr lines of a failed sweep run

    @property
    def val_metric(self) -> float | None:
        """The plotted validation metric: perplexity for language models, top-1 for classifiers."""
        return self.best_val_top1 if self.family == "vit" else self.best_val_ppl


# ------------------------------------------------------------------------------------------- summarizing


def _by_step(records: Iterable[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of the records holding `key`, one per step (a resumed run repeats steps: the later
    record wins), sorted by step."""
    latest = {int(r["step"]): float(r[key]) for r in records if r.get(key) is not None and "step" in r}
    return sorted(latest.items())


def _wall_time(
    train: list[dict[str, Any]],
    batch_size: int | None,
    seq_len: int | None,
    family: str | None,
    log_every: int | None,
) -> float | None:
    """Seconds of training, from each record's window: (steps since the previous record) x batch / examples/s.
    A record whose step does not exceed the previous one starts a resumed segment: its window is log_every."""
    if not train or not batch_size:
        return None
    total, previous = 0.0, 0
    for r in train:
        step = int(r["step"])
        if family == "llama" and r.get("tokens_per_s") and seq_len:
            examples_per_s = r["tokens_per_s"] / seq_len
        elif r.get("images_per_s"):
            examples_per_s = r["images_per_s"]
        else:
            return None
        window = step - previous if step > previous else min(step, log_every or step)
        total += window * batch_size / examples_per_s
        previous = step
    return total


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def summarize(
    name: str,
    source: str,
    status: str,
    records: list[dict[str, Any]],
    config: dict[str, Any],
    *,
    error: str = "",
    wall_time_s: float | None = None,
) -> RunResult:
    """One run's row from its metric records (metrics.jsonl lines or W&B history rows) and its config."""
    family = _get(config, "model.family")
    result = RunResult(
        name=name,
        source=source,
        status=status,
        family=family,
        kind=_get(config, "model.linear.kind"),
        crossing=_get(config, "model.linear.crossing"),
        target_steps=_get(config, "train.steps"),
        error=error,
    )
    first = next((r for r in records if "params" in r), {})
    result.params = first.get("params")
    result.non_embedding_params = first.get("non_embedding_params")
    result.flops_per_token = first.get("flops_per_token")
    train = [r for r in records if r.get("loss") is not None]
    result.train_curve = _by_step(train, "loss")
    result.val_curve = _by_step(records, "eval_loss")
    if train:
        result.final_train_loss = float(train[-1]["loss"])
        result.step = int(train[-1]["step"])
    if result.val_curve:
        result.best_val_loss = min(v for _, v in result.val_curve)
    ppl = [v for _, v in _by_step(records, "eval_ppl")]
    top1 = [v for _, v in _by_step(records, "eval_top1")]
    result.best_val_ppl = min(ppl) if ppl else None
    result.best_val_top1 = max(top1) if top1 else None
    rate_key = "images_per_s" if family == "vit" else "tokens_per_s"
    steady = train[1:] if len(train) > 2 else train
    result.throughput = _median([float(r[rate_key]) for r in steady if r.get(rate_key)])
    result.mfu = _median([float(r["mfu"]) for r in steady if r.get("mfu") is not None])
    result.wall_time_s = (
        wall_time_s
        if wall_time_s is not None
        else _wall_time(
            train,
            _get(config, "train.batch_size"),
            _get(config, "data.seq_len"),
            family,
            _get(config, "train.log_every"),
        )
    )
    return result


# ------------------------------------------------------------------------------------------ local runs


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any(
        (path / f).exists() for f in ("metrics.jsonl", "config.json", sweep.STATUS_FILE)
    )


def expand(paths: Sequence[str]) -> list[Path]:
    """Run directories from run dirs, sweep dirs (their run sub-directories, sorted) and glob patterns."""
    out: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern))
        if not matches:
            log.warning("%s: no such run directory (or nothing matches the pattern); skipped", pattern)
        for m in map(Path, matches):
            if is_run_dir(m):
                out.append(m)
            elif m.is_dir():
                out += sorted(d for d in m.iterdir() if is_run_dir(d))
    return list(dict.fromkeys(out))


def _config_from_status(status: dict[str, Any]) -> dict[str, Any]:
    """What a sweep's status file tells of a run that never wrote config.json (failed before starting)."""
    if "config" not in status:
        return {}
    run = sweep.Run(status["config"])
    family = run.family if run.family in ("llama", "vit") else None
    linear = {"kind": run.options.get("kind", "dense"), "crossing": run.options.get("lax", "none")}
    return {"model": {"family": family, "linear": linear}, "train": {"steps": status.get("train_steps")}}


def load_run(workdir: str | Path) -> RunResult:
    workdir = Path(workdir)
    status_file = sweep.read_status(workdir)
    config_path = workdir / "config.json"
    try:
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
    except json.JSONDecodeError:
        config = {}
    config = config or _config_from_status(status_file)
    steps = _get(config, "train.steps")
    status = sweep.run_status(workdir, int(steps) if steps is not None else None)
    return summarize(
        status_file.get("name", workdir.name),
        str(workdir),
        status,
        sweep.read_records(workdir),
        config,
        error=status_file.get("stderr_tail", "") if status == "failed" else "",
    )


def load_runs(paths: Sequence[str]) -> list[RunResult]:
    dirs = expand(paths)
    if not dirs:
        raise FileNotFoundError(
            f"no run directories in {list(paths)} (a run dir holds metrics.jsonl, config.json "
            f"or {sweep.STATUS_FILE})"
        )
    return [load_run(d) for d in dirs]


# -------------------------------------------------------------------------- W&B runs (needs the network)

_WANDB_STATES = {
    "finished": "finished",
    "running": "running",
    "failed": "failed",
    "crashed": "failed",
    "killed": "stopped",
    "preempted": "stopped",
    "pending": "pending",
}


def load_wandb_runs(project: str, group: str | None = None) -> list[RunResult]:
    """The runs of W&B project 'entity/project' (optionally one group) through the public API: history rows
    carry the same keys as metrics.jsonl (the trainer logs every record with its step)."""
    import wandb

    api = wandb.Api()
    results = []
    for run in api.runs(project, filters={"group": group} if group else None):
        records = [
            {
                ("step" if k == "_step" else k): v
                for k, v in row.items()
                if v is not None and (k == "_step" or not k.startswith("_"))
            }
            for row in run.scan_history()
        ]
        config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
        results.append(
            summarize(
                run.name,
                "/".join(run.path),
                _WANDB_STATES.get(run.state, run.state),
                records,
                config,
                wall_time_s=run.summary.get("_runtime"),
            )
        )
    return results


# ------------------------------------------------------------------------------------------------ table


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def markdown_table(runs: Sequence[RunResult]) -> str:
    families = {r.family for r in runs if r.family}
    val_header = {frozenset({"llama"}): "best val ppl", frozenset({"vit"}): "best val top-1"}.get(
        frozenset(families), "best val ppl / top-1"
    )
    rate_header = {frozenset({"llama"}): "tokens/s", frozenset({"vit"}): "images/s"}.get(
        frozenset(families), "tokens/s or images/s"
    )
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
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 9 + ["---"]) + "|"]
    for r in runs:
        if r.family == "vit":
            val = _num(None if r.best_val_top1 is None else 100 * r.best_val_top1, ".2f") + (
                "%" if r.best_val_top1 is not None else ""
            )
        else:
            val = _num(r.best_val_ppl, ".2f")
        status = (
            r.status
            if r.status != "running" or r.target_steps is None
            else f"running ({r.step}/{r.target_steps})"
        )
        cells = [
            r.name,
            r.kind or "-",
            r.crossing or "-",
            _count(r.params),
            _count(r.non_embedding_params),
            _count(r.flops_per_token),
            _num(r.final_train_loss, ".4f"),
            _num(r.best_val_loss, ".4f"),
            val,
            _num(r.throughput, ",.0f"),
            _num(None if r.mfu is None else 100 * r.mfu, ".1f") + ("%" if r.mfu is not None else ""),
            _duration(r.wall_time_s),
            status,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ plots


def pareto_front(points: Sequence[tuple[float, float]], *, maximize: bool = False) -> list[int]:
    """Indices of the points no other point beats on both axes (x lower and y lower, or higher with
    `maximize`), sorted by x."""
    sign = -1.0 if maximize else 1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], sign * points[i][1]))
    front, best = [], math.inf
    for i in order:
        y = sign * points[i][1]
        if y < best:
            front.append(i)
            best = y
    return front


def _figure(panels: int):
    """A figure with one panel per family, drawn by Agg without pyplot (no global backend switch, so a
    notebook's own plotting is left alone)."""
    fig = Figure(figsize=(7.5 * panels, 5))
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _families(runs: Sequence[RunResult]) -> list[str]:
    return sorted({r.family for r in runs if r.family}, key=lambda f: (f != "llama", f)) or ["llama"]


def short_labels(names: Sequence[str]) -> list[str]:
    """The names without the prefix they all share up to a '_' ('llama-nano_kind=cola' -> 'kind=cola')."""
    prefix = os.path.commonprefix(list(names)) if len(names) > 1 else ""
    cut = prefix.rfind("_") + 1
    return [n[cut:] or n for n in names]


def plot_loss_curves(runs: Sequence[RunResult], path: str | Path) -> Path:
    """Train loss (solid) and validation loss (dashed, markers) per run; one panel per model family."""
    families = _families(runs)
    fig, axes = _figure(len(families))
    colours = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"]
    for ax, family in zip(axes, families):
        members = [
            (i, r) for i, r in enumerate(runs) if r.family == family and (r.train_curve or r.val_curve)
        ]
        labels = short_labels([r.name for _, r in members])
        for (i, r), label in zip(members, labels):
            colour = colours(i % colours.N)
            label = f"{label} ({r.status})"
            if r.train_curve:
                ax.plot(
                    *zip(*r.train_curve),
                    color=colour,
                    lw=1.2,
                    alpha=0.8,
                    label=label,
                    marker="." if len(r.train_curve) == 1 else None,
                )
            if r.val_curve:
                ax.plot(
                    *zip(*r.val_curve),
                    "o--",
                    color=colour,
                    lw=1.2,
                    ms=4,
                    label=None if r.train_curve else label,
                )
        if not members:
            ax.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy loss")
        ax.set_title(f"{FAMILY_NAMES.get(family, family)}: train (solid) and validation (dashed, o) loss")
        ax.grid(alpha=0.3)
        if members:
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def plot_val_vs_params(runs: Sequence[RunResult], path: str | Path) -> Path:
    """Best validation metric vs total parameters: colour = crossing, marker = kind, running runs hollow,
    the Pareto front (fewer parameters and a better metric) as a line."""
    families = _families(runs)
    fig, axes = _figure(len(families))
    for ax, family in zip(axes, families):
        pts = [r for r in runs if r.family == family and r.params and r.val_metric is not None]
        maximize = family == "vit"
        scale = 100.0 if maximize else 1.0
        for r, label in zip(pts, short_labels([r.name for r in pts])):
            colour = CROSSING_COLOURS.get(r.crossing or "none", "tab:gray")
            ax.scatter(
                r.params,
                scale * r.val_metric,
                s=60,
                marker=KIND_MARKERS.get(r.kind or "", "o"),
                facecolors=colour if r.status == "finished" else "none",
                edgecolors=colour,
                linewidths=1.5,
                zorder=3,
            )
            ax.annotate(
                label, (r.params, scale * r.val_metric), fontsize=7, xytext=(4, 3), textcoords="offset points"
            )
        if pts:
            front = pareto_front([(r.params, r.val_metric) for r in pts], maximize=maximize)
            ax.plot(
                [pts[i].params for i in front],
                [scale * pts[i].val_metric for i in front],
                "k-",
                lw=1,
                alpha=0.6,
                zorder=2,
                label="Pareto front",
            )
            ax.set_xscale("log")
            ticks = FuncFormatter(lambda v, _: _count(int(round(v))))
            ax.xaxis.set_major_formatter(ticks)
            ax.xaxis.set_minor_formatter(ticks)
            ax.tick_params(axis="x", which="minor", labelsize=7)
        else:
            ax.text(0.5, 0.5, "no validation results yet", ha="center", va="center", transform=ax.transAxes)
        for crossing, colour in CROSSING_COLOURS.items():
            if any((r.crossing or "none") == crossing for r in pts):
                ax.scatter([], [], color=colour, label=f"crossing: {crossing}")
        for kind, marker in KIND_MARKERS.items():
            if any(r.kind == kind for r in pts):
                ax.scatter([], [], marker=marker, color="gray", label=f"kind: {kind}")
        ax.set_xlabel("parameters (total)")
        ax.set_ylabel("best validation top-1 (%)" if maximize else "best validation perplexity")
        metric = "top-1" if maximize else "perplexity"
        hollow = " (hollow: not finished)" if any(r.status != "finished" for r in pts) else ""
        ax.set_title(f"{FAMILY_NAMES.get(family, family)}: best validation {metric} vs parameters{hollow}")
        ax.grid(alpha=0.3, which="both")
        if pts:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------------------------- report


def write_report(runs: Sequence[RunResult], out_dir: str | Path, *, title: str = "Run comparison") -> Path:
    """report.md (table, plots, failures) plus loss_curves.png and val_vs_params.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_loss_curves(runs, out / LOSS_CURVES)
    plot_val_vs_params(runs, out / VAL_VS_PARAMS)
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines = [
        f"# {title}",
        "",
        f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".",
        "",
        markdown_table(runs),
        "",
        "params, non-emb params, FLOPs/token: analytic, from the step-0 record (forward FLOPs per token). "
        "Best val: lowest validation loss; lowest perplexity (LM) or highest top-1 (ViT). Throughput, MFU: "
        "medians over the train records. Wall time: the training loop's time summed over resumed segments. "
        "Status: finished, running (step/target), stopped (interrupted; re-running the sweep resumes it), "
        "failed, pending.",
        "",
        f"![train and validation loss]({LOSS_CURVES})",
        "",
        f"![best validation metric vs parameters]({VAL_VS_PARAMS})",
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
    path = out / REPORT
    path.write_text("\n".join(lines))
    return path
