"""The one writer of experiment reports: markdown tables and the number formats they share, and the matplotlib
figures of runs. `experiments.compare` (and through it scripts/reproduce.py) and the benchmark report
(`lax_pretrain.bench.report`) all write through it; the machine line they print is
`lax_pretrain.machine.machine_line`.

Figures are drawn by Agg without pyplot: no global backend switch, so a notebook's own plotting is left alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from lax_pretrain.experiments.results import seed_groups
from lax_pretrain.models.tasks import TASKS, Task

# How a headline metric is shown: (scale, format, unit of a value, unit of a difference of two); top-1 is
# stored as a fraction, shown in percent, and a difference of two percentages in points.
METRIC_FORMATS = {"eval_ppl": (1.0, ".2f", "", ""), "eval_top1": (100.0, ".2f", "%", " pts")}
CROSSING_COLOURS = {"none": "tab:blue", "kron": "tab:orange", "identity": "tab:green", "dense": "tab:red"}
KIND_MARKERS = {"dense": "s", "svd": "^", "cola": "o", "tt": "D"}
PARAM_LABELS = {"params": "parameters (total)", "non_embedding_params": "non-embedding parameters"}

# ------------------------------------------------------------------------------------------- markdown


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A markdown table; `align` holds one 'l' or 'r' per column (default: all left). A '|' in a cell is
    escaped, so free text (errors, details) cannot break the table."""
    rule = ["---:" if a == "r" else "---" for a in (align or "l" * len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def num(x: float | None, spec: str = ".2f", none: str = "-") -> str:
    """`x` formatted, `none` where it is missing or not finite."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def percent(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else num(100 * x, spec) + "%"


def count(n: int | float | None) -> str:
    """4000 -> '4.00K', 3_300_000 -> '3.30M'."""
    if n is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def metric(value: float | None, key: str | None, *, signed: bool = False, difference: bool = False) -> str:
    """A headline metric value, or (`difference`; `signed` implies it) a difference of two, as METRIC_FORMATS
    shows it."""
    scale, spec, unit, difference_unit = METRIC_FORMATS.get(key, (1.0, ".4f", "", ""))
    if value is None:
        return "-"
    return num(scale * value, ("+" if signed else "") + spec) + (
        difference_unit if signed or difference else unit
    )


# ---------------------------------------------------------------------------------------------- figures


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


def short_labels(names: Sequence[str]) -> list[str]:
    """The names without the prefix they all share up to a '_' ('llama-nano_kind=cola' -> 'kind=cola')."""
    prefix = os.path.commonprefix(list(names)) if len(names) > 1 else ""
    cut = prefix.rfind("_") + 1
    return [n[cut:] or n for n in names]


def _panels(runs: Sequence[Any]) -> tuple[Figure, list, list[tuple[Task, list[tuple[int, Any]]]]]:
    """A figure with one panel per model family among `runs` (in the task registry's order), and for each its
    task and its (index, run) members."""
    members: dict[str, list[tuple[int, Any]]] = {}
    for i, r in enumerate(runs):
        members.setdefault(r.family, []).append((i, r))
    families = [f for f in TASKS if f in members] or list(TASKS)[:1]
    fig = Figure(figsize=(7.5 * len(families), 5))
    axes = list(fig.subplots(1, len(families), squeeze=False)[0])
    return fig, axes, [(TASKS[f], members.get(f, [])) for f in families]


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def plot_loss_curves(runs: Sequence[Any], path: str | Path) -> Path:
    """Train loss (solid) and validation loss (dashed, markers) per run (`results.RunResult`s); one panel per
    model family, the legend in the runs' names."""
    fig, axes, panels = _panels(runs)
    colours = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"]
    for ax, (task, family_runs) in zip(axes, panels):
        members = [(i, r) for i, r in family_runs if r.train_curve or r.val_curve]
        for (i, r), label in zip(members, short_labels([r.name for _, r in members])):
            colour, label = colours(i % colours.N), f"{label} ({r.status})"
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
        ax.set_title(f"{task.model_class.__name__}: train (solid) and validation (dashed, o) loss")
        ax.grid(alpha=0.3)
        if members:
            ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def plot_metric_vs_params(
    runs: Sequence[Any], path: str | Path, *, x: str = "params", y: str = "best_metric"
) -> Path:
    """`metric_vs_params_figure` saved to `path`."""
    return _save(metric_vs_params_figure(runs, x=x, y=y), path)


def metric_vs_params_figure(runs: Sequence[Any], *, x: str = "params", y: str = "best_metric") -> Figure:
    """The headline metric (attribute `y` of each run: best_metric or final_metric) against parameters
    (attribute `x`: params or non_embedding_params): colour = crossing, marker = kind, unfinished runs hollow,
    the runs of one setting at several seeds joined by a line (their spread) and labelled once, at their mean,
    by their variant's name where it is unique in the panel;
    the Pareto front (fewer parameters and a better metric) as a line; one panel per model family."""
    fig, axes, panels = _panels(runs)
    for ax, (task, family_runs) in zip(axes, panels):
        scale = METRIC_FORMATS.get(task.headline, (1.0,))[0]
        pts = [r for _, r in family_runs if getattr(r, x) and getattr(r, y) is not None]
        groups = seed_groups(pts)
        # The variant's name (as the per-variant table has it) where it is unique in the panel.
        variants = [g[0].variant for g in groups.values()]
        labels = [
            g[0].variant if variants.count(g[0].variant) == 1 else short
            for g, short in zip(groups.values(), short_labels(list(groups)))
        ]
        for group, label in zip(groups.values(), labels):
            colour = CROSSING_COLOURS.get(group[0].crossing or "none", "tab:gray")
            xs = [getattr(r, x) for r in group]
            ys = [scale * getattr(r, y) for r in group]
            ax.scatter(
                xs,
                ys,
                s=60,
                marker=KIND_MARKERS.get(group[0].kind or "", "o"),
                facecolors=[colour if r.status == "finished" else "none" for r in group],
                edgecolors=colour,
                linewidths=1.5,
                zorder=3,
            )
            if len(group) > 1:
                ax.plot(xs, ys, color=colour, lw=1, alpha=0.6, zorder=2)
            seeds = f" ({len(group)} seeds)" if len(group) > 1 else ""
            ax.annotate(
                label + seeds,
                (sum(xs) / len(xs), sum(ys) / len(ys)),
                fontsize=7,
                xytext=(6, -3),
                textcoords="offset points",
            )
        if pts:
            front = pareto_front(
                [(getattr(r, x), getattr(r, y)) for r in pts], maximize=task.higher_is_better
            )
            ax.plot(
                [getattr(pts[i], x) for i in front],
                [scale * getattr(pts[i], y) for i in front],
                "k-",
                lw=1,
                alpha=0.6,
                zorder=2,
                label="Pareto front",
            )
            ax.set_xscale("log")
            ticks = FuncFormatter(lambda v, _: count(int(round(v))))
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
        which = y.removesuffix("_metric")
        unit = METRIC_FORMATS.get(task.headline, (1.0, "", ""))[2]
        ax.set_xlabel(PARAM_LABELS[x])
        ax.set_ylabel(f"{which} {task.headline_label}" + (f" ({unit})" if unit else ""))
        hollow = " (hollow: not finished)" if any(r.status != "finished" for r in pts) else ""
        ax.set_title(f"{task.model_class.__name__}: {which} {task.headline_label} vs parameters{hollow}")
        ax.grid(alpha=0.3, which="both")
        if pts:
            ax.legend(fontsize=7, loc="best")
    return fig
