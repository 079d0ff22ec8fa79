"""Runs as results: one `RunResult` per run, from its workdir or from W&B.

    runs = load_runs(["runs/sweep_cpu"])            # run dirs, sweep dirs (their run sub-dirs) or globs

A run is read from its workdir (a local directory or a gs:// URL; run and sweep directories and globs of
either): metrics.jsonl (the source of truth, `train.metrics.read_metrics`), config.json (family, kind,
crossing, seed, batch size, target steps) and, for runs started by the runner, sweep_status.json (name,
failure, liveness). Status is `runner.run_status`: finished, running, stopped
(interrupted, resumable), failed or pending. What a family measures (headline metric, its direction, the
throughput key, tokens per example) comes from its task (`lax_pretrain.models.get_task`).

Fields:
  params / non_embedding_params / lax_params / flops_per_token   the step-0 record (analytic, forward)
  final_train_loss         the last train record
  best_val_loss            the lowest validation loss
  metric                   the task's headline (eval_ppl, eval_top1); best_metric over every evaluation (the
                           lowest, or the highest where higher is better), final_metric at train.steps (None
                           before the run gets there), initial_metric at step 0
  throughput               median of the task's throughput key (tokens/s, images/s) over the train records
                           (the first window includes compiling)
  mfu                      median; None where the device's peak is unknown (CPUs)
  wall_time_s              the training loop's own time, summed over resumed segments (each record's window:
                           steps x batch / examples per second), so downtime between a kill and the resume is
                           not counted
"""

from __future__ import annotations

import glob
import json
import logging
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import ml_collections

from lax_pretrain.experiments import runner
from lax_pretrain.experiments.sweep import Run
from lax_pretrain.layers.variants import variant_name
from lax_pretrain.models.tasks import TASKS, Task
from lax_pretrain.train import storage
from lax_pretrain.train.metrics import METRICS_FILE, read_metrics
from lax_pretrain.train.storage import AnyPath

log = logging.getLogger(__name__)
_SEED = re.compile(r"_train\.seed=[^_]*")  # a run name's seed override ("..._train.seed=1")


@dataclass
class RunResult:
    name: str
    source: str  # workdir, or W&B run path
    status: str
    family: str | None = None
    kind: str | None = None
    crossing: str | None = None
    seed: int | None = None
    params: int | None = None
    non_embedding_params: int | None = None
    lax_params: int | None = None
    flops_per_token: int | None = None
    final_train_loss: float | None = None
    best_val_loss: float | None = None
    metric: str | None = None
    best_metric: float | None = None
    final_metric: float | None = None
    initial_metric: float | None = None
    throughput: float | None = None
    throughput_key: str | None = None
    mfu: float | None = None
    wall_time_s: float | None = None
    step: int = 0  # the last step with a train record
    target_steps: int | None = None
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    error: str = ""  # the last stderr lines of a failed run

    @property
    def task(self) -> Task | None:
        return TASKS.get(self.family)

    @property
    def variant(self) -> str:
        return variant_name(self.kind or "dense", self.crossing or "none")


def seed_groups(runs: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """Runs keyed by their name without its `train.seed` override (the runs of one setting at several seeds),
    in order."""
    groups: dict[str, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(_SEED.sub("", r.name), []).append(r)
    return groups


# ------------------------------------------------------------------------------------------- summarizing


def _by_step(records: Iterable[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of the records holding `key`, one per step (a resumed run repeats steps: the later
    record wins), sorted by step."""
    latest = {int(r["step"]): float(r[key]) for r in records if r.get(key) is not None and "step" in r}
    return sorted(latest.items())


def _wall_time(
    train: list[dict[str, Any]],
    task: Task,
    batch_size: int | None,
    tokens_per_example: int | None,
    log_every: int | None,
) -> float | None:
    """Seconds of training, from each record's window: (steps since the previous record) x batch / examples/s.
    A record whose step does not exceed the previous one starts a resumed segment: its window is log_every."""
    if not train or not batch_size or (task.counts_tokens and not tokens_per_example):
        return None
    total, previous = 0.0, 0
    for r in train:
        rate = r.get(task.throughput_key)
        if not rate:
            return None
        examples_per_s = rate / tokens_per_example if task.counts_tokens else rate
        step = int(r["step"])
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
    """One run's result from its metric records (metrics.jsonl lines or W&B history rows) and its config."""
    target = _get(config, "train.steps")
    result = RunResult(
        name=name,
        source=source,
        status=status,
        family=_get(config, "model.family"),
        kind=_get(config, "model.linear.kind"),
        crossing=_get(config, "model.linear.crossing"),
        seed=_get(config, "train.seed"),
        target_steps=target,
        error=error,
    )
    first = next((r for r in records if "params" in r), {})
    for key in ("params", "non_embedding_params", "lax_params", "flops_per_token"):
        setattr(result, key, first.get(key))
    train = [r for r in records if r.get("loss") is not None]
    result.train_curve = _by_step(train, "loss")
    result.val_curve = _by_step(records, "eval_loss")
    if train:
        result.final_train_loss = float(train[-1]["loss"])
        result.step = int(train[-1]["step"])
    if result.val_curve:
        result.best_val_loss = min(v for _, v in result.val_curve)
    task = result.task
    if task is None:  # a run that never wrote its config: its status is all there is
        return result
    result.metric, result.throughput_key = task.headline, task.throughput_key
    values = dict(_by_step(records, task.headline))
    if values:
        result.best_metric = (max if task.higher_is_better else min)(values.values())
        result.initial_metric = values.get(0)
        result.final_metric = values.get(target) if target is not None else None
    steady = train[1:] if len(train) > 2 else train
    result.throughput = _median([float(r[task.throughput_key]) for r in steady if r.get(task.throughput_key)])
    result.mfu = _median([float(r["mfu"]) for r in steady if r.get("mfu") is not None])
    if wall_time_s is None and isinstance(config.get("model"), dict):
        model = ml_collections.ConfigDict(config["model"])
        seq_len = _get(config, "data.seq_len") or 0
        tokens = task.tokens_per_example(model, seq_len) if task.counts_tokens else None
        wall_time_s = _wall_time(
            train, task, _get(config, "train.batch_size"), tokens, _get(config, "train.log_every")
        )
    result.wall_time_s = wall_time_s
    return result


# ------------------------------------------------------------------------------------------ local runs


def is_run_dir(path: AnyPath) -> bool:
    return path.is_dir() and any(
        (path / f).exists() for f in (METRICS_FILE, "config.json", runner.STATUS_FILE)
    )


def _glob(pattern: str) -> list[AnyPath]:
    """The paths a pattern matches, local or in a bucket (fsspec's glob there), sorted."""
    if not storage.is_bucket(pattern):
        return [Path(m) for m in sorted(glob.glob(pattern))]
    if not glob.has_magic(pattern):
        path = storage.workdir_path(pattern)
        return [path] if path.exists() else []
    kind = storage.scheme(pattern)
    names = fsspec.filesystem(kind).glob(pattern.partition("://")[2])  # bucket/key, without the scheme
    return [storage.workdir_path(f"{kind}://{n}") for n in sorted(names)]


def expand(paths: Sequence[str]) -> list[AnyPath]:
    """Run directories from run dirs, sweep dirs (their run sub-directories, sorted) and glob patterns."""
    out: list[AnyPath] = []
    for pattern in paths:
        matches = _glob(pattern)
        if not matches:
            log.warning("%s: no such run directory (or nothing matches the pattern); skipped", pattern)
        for m in matches:
            if is_run_dir(m):
                out.append(m)
            elif m.is_dir():
                out += sorted((d for d in m.iterdir() if is_run_dir(d)), key=str)
    return list(dict.fromkeys(out))


def _config_from_status(status: dict[str, Any]) -> dict[str, Any]:
    """What a runner's status file tells of a run that never wrote config.json (failed before starting); the
    recipe file's stem is the family when it names one."""
    if "config" not in status:
        return {}
    run = Run(status["config"])
    linear = {"kind": run.options.get("kind", "dense"), "crossing": run.options.get("lax", "none")}
    family = run.stem if run.stem in TASKS else None
    return {"model": {"family": family, "linear": linear}, "train": {"steps": status.get("train_steps")}}


def load_run(workdir: str | AnyPath) -> RunResult:
    workdir = storage.workdir_path(workdir)
    status_file = runner.read_status(workdir)
    config_path = workdir / "config.json"
    try:
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
    except json.JSONDecodeError:
        config = {}
    config = config or _config_from_status(status_file)
    steps = _get(config, "train.steps")
    status = runner.run_status(workdir, int(steps) if steps is not None else None)
    return summarize(
        status_file.get("name", workdir.name),
        str(workdir),
        status,
        read_metrics(workdir),
        config,
        error=status_file.get("stderr_tail", "") if status == "failed" else "",
    )


def load_runs(paths: Sequence[str | Path]) -> list[RunResult]:
    dirs = expand([str(p) for p in paths])
    if not dirs:
        raise FileNotFoundError(
            f"no run directories in {[str(p) for p in paths]} (a run dir holds {METRICS_FILE}, config.json "
            f"or {runner.STATUS_FILE})"
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
    import wandb  # seconds to import, and only this path needs it

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
