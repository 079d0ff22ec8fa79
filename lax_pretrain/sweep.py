"""Sweeps: expand a sweep file into named runs, tell which are finished, build their commands and run them.

A sweep file (configs/sweeps/*.py) defines `get_sweep()`, the list of runs as override dicts:

    {"config": "configs/llama.py:60m,kind=cola,lax=kron", "optim.lr": 1e-3}

`config` is the recipe and its compact argument; every other key is a dotted config path, passed to the
trainer as `--config.<key>=<value>`. A sweep file may also define `SHARED`, overrides applied to every run and
kept out of the run names (e.g. the step budget of a CPU grid). `axis`, `product`, `zip_`, `variants` and
`recipes` build the lists.

Run name (stable: the same overrides always give the same name, whatever else is in the sweep):
`<recipe file stem>-<preset>`, then `_key=value` for each compact option in the order written, then
`_key=value` for each other override of the run, sorted by key; characters other than letters, digits and
`._=+-` become '-'. E.g. `llama-60m_kind=cola_lax=kron`, `vit-tiny_kind=tt_lax=kron_rank=16_optim.lr=0.001`.

Finished: a run is finished when its workdir (`<sweep workdir>/<run name>`) holds both
  (a) a train record (a metrics.jsonl line with `loss`) at step == its `train.steps`, and
  (b) a committed checkpoint of that step: `checkpoints/<train.steps>/_CHECKPOINT_METADATA` (orbax writes
      a step into a temporary directory and renames it once complete, so a killed save never counts),
where `train.steps` is resolved as the trainer resolves it: the recipe's default, then `SHARED`, then the
run's overrides, then the command line's `--set`. Anything else is re-run, and training resumes from the
newest checkpoint by itself. A preempted run (SIGTERM: saved, exit 0) is therefore not finished and resumes
next time.

Per run the sweep writes `sweep_status.json` into the run's workdir (status, exit code, the command, the last
lines of stderr) and appends the run's output to `sweep_stdout.log` / `sweep_stderr.log` there.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUS_FILE = "sweep_status.json"
STDOUT_LOG = "sweep_stdout.log"
STDERR_LOG = "sweep_stderr.log"
LAUNCHERS = {"local": None, "tpu": "scripts/launch_tpu_pod.sh", "slurm": "scripts/launch_slurm.sh"}
STDERR_TAIL_LINES = 25
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._=+\-]")

# ------------------------------------------------------------------------------------- building sweeps


def axis(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
    """One swept key: axis('optim.lr', [1e-3, 3e-3]) -> [{'optim.lr': 1e-3}, {'optim.lr': 3e-3}]."""
    return [{key: v} for v in values]


def product(*axes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cartesian product of lists of partial override dicts, merged left to right (first axis outermost)."""
    return [_merge(combo) for combo in itertools.product(*axes)]


def zip_(*axes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Element-wise merge of equally long lists of partial override dicts."""
    lengths = {len(a) for a in axes}
    if len(lengths) > 1:
        raise ValueError(f"zip_ needs lists of equal length, got lengths {[len(a) for a in axes]}")
    return [_merge(combo) for combo in zip(*axes)]


def _merge(dicts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for d in dicts:
        clash = set(merged) & set(d)
        if clash:
            raise ValueError(f"two axes set the same key(s) {sorted(clash)}")
        merged.update(d)
    return merged


def variants(
    kinds: Sequence[str], crossings: Sequence[str] = ("none",), ranks: Sequence[int | None] = (None,)
) -> list[str]:
    """Compact options for kinds x crossings x ranks: 'kind=cola,lax=kron,rank=64'. Dense has neither a
    crossing nor a rank, so it appears once (as 'kind=dense'); rank None leaves the preset's rank."""
    out = []
    for kind in kinds:
        if kind == "dense":
            out.append("kind=dense")
            continue
        for lax, rank in itertools.product(crossings, ranks):
            out.append(f"kind={kind},lax={lax}" + (f",rank={rank}" if rank is not None else ""))
    return out


def recipes(recipe: str, presets: Sequence[str], options: Sequence[str]) -> list[dict[str, str]]:
    """{'config': 'RECIPE:PRESET,OPTIONS'} for presets x options (from `variants`), preset outermost."""
    return [{"config": f"{recipe}:{p}" + (f",{o}" if o else "")} for p in presets for o in options]


# ------------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One run of a sweep: the recipe + compact argument, its own overrides (in the name) and the sweep's
    shared ones (not in the name)."""

    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def recipe(self) -> str:
        return self.config.partition(":")[0]

    @property
    def arg(self) -> str:
        return self.config.partition(":")[2]

    @property
    def preset(self) -> str:
        return self.arg.split(",")[0]

    @property
    def options(self) -> dict[str, str]:
        """The compact options in the order written: {'kind': 'cola', 'lax': 'kron'}."""
        return dict(p.split("=", 1) for p in self.arg.split(",")[1:] if p)

    @property
    def family(self) -> str:
        return Path(self.recipe).stem

    @property
    def name(self) -> str:
        parts = [f"{self.family}-{self.preset}"]
        parts += [f"{k}={v}" for k, v in self.options.items()]
        parts += [f"{k}={_cli_value(v)}" for k, v in sorted(self.overrides.items())]
        return _NAME_UNSAFE.sub("-", "_".join(parts))

    @property
    def tags(self) -> list[str]:
        """W&B tags: the family-preset and every compact option and override, as key=value (<= 64 chars)."""
        tags = [
            f"{self.family}-{self.preset}",
            *(f"{k}={v}" for k, v in self.options.items()),
            *(f"{k}={_cli_value(v)}" for k, v in sorted(self.overrides.items())),
        ]
        return [t.replace(",", ";")[:64] for t in tags]

    def all_overrides(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Shared, then the run's own, then `extra` (the command line's --set): later ones win."""
        return {**self.shared, **self.overrides, **(extra or {})}


def make_run(spec: dict[str, Any], shared: dict[str, Any] | None = None) -> Run:
    spec = dict(spec)
    config = spec.pop("config", None)
    if not isinstance(config, str) or ":" not in config:
        raise ValueError(f"a run needs 'config': 'RECIPE.py:PRESET[,key=value...]', got {config!r} in {spec}")
    for key in spec:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", key):
            raise ValueError(
                f"override key {key!r} of run {config!r} is not a dotted config path like 'train.steps'"
            )
    return Run(config, spec, dict(shared or {}))


def load_sweep(path: str | Path) -> tuple[str, list[Run]]:
    """(sweep name = the file's stem, its runs). Raises if get_sweep() is missing or two runs share a name."""
    path = Path(path)
    module = _load_module(path)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path} defines no get_sweep()")
    runs = [make_run(spec, getattr(module, "SHARED", None)) for spec in module.get_sweep()]
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: runs with the same overrides (same name): {', '.join(duplicates)}")
    return path.stem, runs


def select(runs: Sequence[Run], only: str | None) -> list[Run]:
    """The runs whose name matches the regular expression `only` (re.search), all of them if it is empty."""
    if not only:
        return list(runs)
    pattern = re.compile(only)
    return [r for r in runs if pattern.search(r.name)]


def _load_module(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_lax_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ finished or not


@functools.cache
def recipe_steps(config: str) -> int:
    """train.steps of 'RECIPE.py:ARG' before any override (imports the recipe; RECIPE is relative to cwd)."""
    recipe, _, arg = config.partition(":")
    module = _load_module(Path(recipe))
    return int(module.get_config(arg or None).train.steps)


def target_steps(run: Run, extra: dict[str, Any] | None = None) -> int:
    overrides = run.all_overrides(extra)
    if "train.steps" in overrides:
        return int(overrides["train.steps"])
    return recipe_steps(run.config)


def committed_steps(workdir: str | Path) -> list[int]:
    """Checkpoint steps that orbax has committed (renamed from its temporary name, metadata written)."""
    ckpts = Path(workdir) / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(
        int(d.name) for d in ckpts.iterdir() if d.name.isdigit() and (d / "_CHECKPOINT_METADATA").exists()
    )


def read_records(workdir: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl; a line cut short by a kill is skipped (the trainer appends one JSON object per line)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def is_finished(workdir: str | Path, steps: int) -> bool:
    """See the module docstring: a train record at `steps` and a committed checkpoint of step `steps`."""
    has_record = any(r.get("step") == steps and "loss" in r for r in read_records(workdir))
    return has_record and steps in committed_steps(workdir)


def read_status(workdir: str | Path) -> dict[str, Any]:
    path = Path(workdir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _alive(status: dict[str, Any]) -> bool:
    """Whether the process of a 'running' status still exists; another host's run is taken at its word."""
    if status.get("host") != socket.gethostname():
        return True
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


def run_status(workdir: str | Path, steps: int | None) -> str:
    """One of
    finished  see `is_finished` (needs `steps`, the run's train.steps)
    failed    the last sweep attempt exited non-zero (sweep_status.json)
    running   a sweep process is training it now, or metrics exist with no sweep record saying otherwise
    stopped   started but interrupted (killed, preempted): re-running the sweep resumes it
    pending   nothing has run yet
    """
    workdir = Path(workdir)
    if steps is not None and is_finished(workdir, steps):
        return "finished"
    status = read_status(workdir)
    state = status.get("status")
    if state == "failed":
        return "failed"
    if state == "running":
        return "running" if _alive(status) else "stopped"
    if state in ("stopped", "finished", "launched"):  # 'finished' once, but not with today's train.steps
        return "stopped"
    return "running" if read_records(workdir) else "pending"


# ------------------------------------------------------------------------------------------- commands


def _cli_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_cli_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def train_args(
    run: Run, workdir: str | Path, sweep_name: str, extra: dict[str, Any] | None = None
) -> list[str]:
    """The trainer's arguments (no interpreter): --config, --workdir, overrides, the W&B group and name."""
    args = [f"--config={run.config}", f"--workdir={workdir}"]
    args += [f"--config.{k}={_cli_value(v)}" for k, v in run.all_overrides(extra).items()]
    args += [f"--config.wandb.group={sweep_name}", f"--config.wandb.name={run.name}"]
    return args


def command(
    run: Run,
    workdir: str | Path,
    sweep_name: str,
    extra: dict[str, Any] | None = None,
    *,
    launcher: str = "local",
    launcher_args: Sequence[str] = (),
) -> list[str]:
    """argv of one run: `python -m lax_pretrain.train ARGS` or `scripts/launch_X.sh [LAUNCHER ARGS] -- ARGS`
    (the launch scripts take the trainer's arguments after `--`)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher={launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    args = train_args(run, workdir, sweep_name, extra)
    if launcher == "local":
        return [sys.executable, "-m", "lax_pretrain.train", *args]
    return [LAUNCHERS[launcher], *launcher_args, "--", *args]


def tags_env(run: Run) -> dict[str, str]:
    """W&B tags travel as WANDB_TAGS: `wandb.tags` is a list in the base config, which absl config flags
    cannot override from the command line."""
    return {"WANDB_TAGS": ",".join(run.tags)}


def shell_line(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    prefix = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    return " ".join(prefix + [shlex.quote(a) for a in argv])


# ---------------------------------------------------------------------------------------------- running


@dataclass
class _Job:
    run: Run
    workdir: Path
    steps: int
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _write_status(job: _Job, **fields: Any) -> None:
    job.status.update(fields)
    path = job.workdir / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job.status, indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def stderr_tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    """The last `lines` lines of a log; progress-bar redraws ('\\r') split into lines, blank ones dropped."""
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    kept = [ln.rstrip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    return "\n".join(kept[-lines:])


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(job: _Job, launcher: str) -> None:
    job.workdir.mkdir(parents=True, exist_ok=True)
    out, err = (job.workdir / STDOUT_LOG).open("a"), (job.workdir / STDERR_LOG).open("a")
    for f in (out, err):
        f.write(f"\n===== {_now()} {shell_line(job.argv)}\n")
        f.flush()
    # Same process group as the sweep, so killing the group kills its runs too; SIGINT ignored, so Ctrl-C
    # reaches the sweep alone and it asks its runs to checkpoint and stop (SIGTERM).
    job.proc = subprocess.Popen(
        job.argv,
        stdout=out,
        stderr=err,
        env={**os.environ, **tags_env(job.run)},
        preexec_fn=_ignore_sigint,
    )
    out.close()
    err.close()
    job.started = time.monotonic()
    job.status = {
        "name": job.run.name,
        "config": job.run.config,
        "overrides": job.run.overrides,
        "shared": job.run.shared,
        "train_steps": job.steps,
        "launcher": launcher,
        "command": shell_line(job.argv, tags_env(job.run)),
        "host": socket.gethostname(),
        "pid": job.proc.pid,
        "started": _now(),
    }
    _write_status(job, status="running", returncode=None)


def _finish(job: _Job, launcher: str) -> str:
    rc = job.proc.returncode
    if is_finished(job.workdir, job.steps):
        state = "finished"
    elif rc != 0:
        state = "failed"
    else:  # exit 0 short of the target: preempted (SIGTERM) or handed to a scheduler by the launcher
        state = "launched" if launcher != "local" else "stopped"
    _write_status(
        job,
        status=state,
        returncode=rc,
        ended=_now(),
        duration_s=round(time.monotonic() - job.started, 1),
        stderr_tail=stderr_tail(job.workdir / STDERR_LOG) if state == "failed" else "",
    )
    return state


def run_sweep(
    runs: Sequence[Run],
    workdir: str | Path,
    sweep_name: str,
    *,
    extra: dict[str, Any] | None = None,
    parallel: int = 1,
    launcher: str = "local",
    launcher_args: Sequence[str] = (),
    log=print,
) -> dict[str, dict[str, Any]]:
    """Runs every unfinished run (at most `parallel` at once), skipping finished ones and carrying on past
    failures. SIGTERM/SIGINT stop new launches and pass SIGTERM on (the trainer checkpoints and exits).
    Returns {run name: {'status': ..., 'returncode': ..., 'duration_s': ...}} in sweep order."""
    workdir = Path(workdir)
    results: dict[str, dict[str, Any]] = {}
    queue: list[_Job] = []
    for run in runs:
        steps = target_steps(run, extra)
        run_dir = workdir / run.name
        if is_finished(run_dir, steps):
            results[run.name] = {"status": "skipped (finished)", "returncode": None, "duration_s": 0.0}
            continue
        argv = command(run, run_dir, sweep_name, extra, launcher=launcher, launcher_args=launcher_args)
        queue.append(_Job(run, run_dir, steps, argv))
        results[run.name] = {"status": "not started", "returncode": None, "duration_s": 0.0}
    log(
        f"sweep {sweep_name}: {len(runs)} runs, {len(runs) - len(queue)} finished already, "
        f"{len(queue)} to run ({parallel} at a time) in {workdir}"
    )

    active: list[_Job] = []
    stop = {"requested": False}

    def on_signal(signum, frame):
        stop["requested"] = True
        for job in active:
            if job.proc.poll() is None:
                job.proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while queue or active:
            while queue and len(active) < max(parallel, 1) and not stop["requested"]:
                job = queue.pop(0)
                _start(job, launcher)
                active.append(job)
                log(f"[start] {job.run.name}")
            for job in [j for j in active if j.proc.poll() is not None]:
                active.remove(job)
                state = _finish(job, launcher)
                results[job.run.name] = {
                    "status": state,
                    "returncode": job.proc.returncode,
                    "duration_s": job.status["duration_s"],
                }
                log(
                    f"[{state}] {job.run.name} (exit {job.proc.returncode}, {job.status['duration_s']:.0f}s)"
                    + (f"\n{_indent(job.status['stderr_tail'])}" if state == "failed" else "")
                )
            if stop["requested"] and not active:
                break
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return results


def _indent(text: str) -> str:
    return "\n".join("    " + ln for ln in text.splitlines()[-8:])


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    width = max([len(n) for n in results] + [3])
    lines = [f"{'run':<{width}}  {'status':<20} {'exit':>4} {'time':>8}"]
    for name, r in results.items():
        rc = "" if r["returncode"] is None else str(r["returncode"])
        lines.append(f"{name:<{width}}  {r['status']:<20} {rc:>4} {r['duration_s']:>7.0f}s")
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ W&B sweep spec


def wandb_spec(
    runs: Sequence[Run],
    sweep_name: str,
    workdir: str | Path,
    extra: dict[str, Any] | None = None,
    *,
    project: str = "lax-pretrain",
) -> dict[str, Any]:
    """A W&B grid sweep that trains the same runs with `wandb agent`.

    W&B grids are products of per-parameter value lists: `config` takes every recipe + compact argument (so
    the dense-has-no-crossing rule survives), and every other override becomes a `config.<key>` parameter
    with its values. Raises if the runs are not that product (a zip of overrides cannot be expressed).
    Each agent run trains in `<workdir>/<W&B run id>`: the command goes through `bash -c` for that, since
    W&B's command macros have no per-run name.
    """
    configs = list(dict.fromkeys(r.config for r in runs))
    keys = list(dict.fromkeys(k for r in runs for k in r.all_overrides(extra)))
    values: dict[str, list[Any]] = {}
    for key in keys:
        missing = [r.name for r in runs if key not in r.all_overrides(extra)]
        if missing:
            raise ValueError(
                f"override {key!r} is not set in every run (missing in {missing[:3]}): a W&B grid "
                "cannot express that; set it in every run or in SHARED"
            )
        values[key] = list(dict.fromkeys(r.all_overrides(extra)[key] for r in runs))
    grid = {
        (c, *(_hashable(v) for v in combo))
        for c in configs
        for combo in itertools.product(*(values[k] for k in keys))
    }
    actual = {(r.config, *(_hashable(r.all_overrides(extra)[k]) for k in keys)) for r in runs}
    if grid != actual:
        raise ValueError(
            f"the sweep's {len(actual)} runs are not the product of their values ({len(grid)} "
            "combinations): a W&B grid cannot express it; fold the coupled keys into 'config' "
            "(compact options) or export the sweep in parts with --only"
        )
    parameters: dict[str, Any] = {"config": {"values": configs}}
    for key in keys:
        vals = values[key]
        parameters[f"config.{key}"] = {"value": vals[0]} if len(vals) == 1 else {"values": vals}
    parameters["config.wandb.group"] = {"value": sweep_name}
    parameters["config.wandb.project"] = {"value": project}
    parameters["config.wandb.mode"] = {"value": "online"}  # the trainer's default is offline
    launch = f'exec "$0" -m lax_pretrain.train --workdir={shlex.quote(str(workdir))}/"$WANDB_RUN_ID" "$@"'
    return {
        "name": sweep_name,
        "project": project,
        "method": "grid",
        "program": "lax_pretrain.train",
        "command": ["${env}", "bash", "-c", launch, "${interpreter}", "${args}"],
        "parameters": parameters,
    }


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def write_wandb_spec(spec: dict[str, Any], path: str | Path) -> Path:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# W&B grid sweep exported by scripts/sweep.py. Use it with:\n"
        f"#   wandb sweep {path.name}  &&  wandb agent ENTITY/{spec['project']}/SWEEP_ID\n"
    )
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False, width=120))
    return path
