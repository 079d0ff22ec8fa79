"""Training runs as processes (locally, or through the TPU/SLURM launch scripts): which are finished, what
state the others are in, and running the unfinished ones, several at a time, resumably.

Finished, the one test every experiment tool uses: orbax (`CheckpointManager.latest_step()` of
`<workdir>/checkpoints`) has committed a checkpoint at or past the run's `train.steps`. Orbax writes a step
into a temporary directory and renames it once complete, and the trainer saves its final step, so a killed
save never counts and a finished run is one whose last step is safely on disk. Anything else is re-run, and
training resumes from the newest checkpoint by itself; a preempted run (SIGTERM: saved, exit 0) is therefore
not finished and resumes next time.

Per run the runner writes `sweep_status.json` into the run's workdir (status, exit code, the command, the last
lines of stderr) and appends the run's output to `sweep_stdout.log` / `sweep_stderr.log` there. A workdir may
be in a bucket (train/storage.py): a process's output can only go to a local file, so the logs are appended
in the run's local directory (`storage.local_dir(workdir, "sweep-logs")`, named in the status file) and
copied into the workdir when the process ends.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from lax_pretrain.train import storage
from lax_pretrain.train.metrics import read_metrics
from lax_pretrain.train.storage import AnyPath

STATUS_FILE = "sweep_status.json"
STDOUT_LOG = "sweep_stdout.log"
STDERR_LOG = "sweep_stderr.log"
STDERR_TAIL_LINES = 25
SKIPPED = "skipped (finished)"
# A launcher's exit 0 short of the target means the run went to a scheduler (SLURM) or was preempted.
DONE = ("finished", SKIPPED, "launched")

# ------------------------------------------------------------------------------------ finished or not


def latest_step(workdir: str | Path) -> int | None:
    """The newest step orbax has committed in `<workdir>/checkpoints`, None if there is none."""
    directory = storage.resolved(workdir) / "checkpoints"
    if not directory.is_dir():
        return None
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    try:
        return manager.latest_step()
    finally:
        manager.close()


def is_finished(workdir: str | Path, steps: int) -> bool:
    """See the module docstring: a committed checkpoint at or past `steps` (the run's train.steps)."""
    latest = latest_step(workdir)
    return latest is not None and latest >= steps


def read_status(workdir: str | Path) -> dict[str, Any]:
    try:
        return json.loads((storage.workdir_path(workdir) / STATUS_FILE).read_text())
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
    failed    the last attempt exited non-zero (sweep_status.json)
    running   a runner process is training it now, or metrics exist with no runner record saying otherwise
    stopped   started but interrupted (killed, preempted): running it again resumes it
    pending   nothing has run yet
    """
    workdir = storage.workdir_path(workdir)
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
    return "running" if read_metrics(workdir) else "pending"


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Job:
    """One run to train: its name, workdir and target step, the command and its extra environment, what to
    record in its status file, and whether the command hands the run to a scheduler (a launch script)."""

    name: str
    workdir: AnyPath
    steps: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    detaches: bool = False
    proc: subprocess.Popen | None = None
    started: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)


def shell_line(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    prefix = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    return " ".join(prefix + [shlex.quote(a) for a in argv])


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _write_status(job: Job, **fields: Any) -> None:
    job.status.update(fields)
    storage.replace_text(job.workdir / STATUS_FILE, json.dumps(job.status, indent=2) + "\n")


def log_dir(workdir: AnyPath) -> Path:
    """Where a run's process output is appended: its workdir, or a local directory of its own for one in a
    bucket (see the module docstring)."""
    return storage.local_dir(workdir, "sweep-logs")


def stderr_tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    """The last `lines` lines of a log; progress-bar redraws ('\\r') split into lines, blank ones dropped."""
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    kept = [ln.rstrip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    return "\n".join(kept[-lines:])


def _start(job: Job) -> None:
    storage.make_dirs(job.workdir)
    logs = log_dir(job.workdir)
    logs.mkdir(parents=True, exist_ok=True)
    out, err = (logs / STDOUT_LOG).open("a"), (logs / STDERR_LOG).open("a")
    for f in (out, err):
        f.write(f"\n===== {_now()} {shell_line(job.argv)}\n")
        f.flush()
    # Same process group as the runner, so killing the group kills its runs too. The run inherits an ignored
    # SIGINT (exec keeps it, Python leaves it), so Ctrl-C reaches the runner alone and it asks its runs to
    # checkpoint and stop (SIGTERM). No preexec_fn for that: the runner's process is multithreaded (JAX), and
    # a forked child of it may run nothing but exec.
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        job.proc = subprocess.Popen(job.argv, stdout=out, stderr=err, env={**os.environ, **job.env})
    finally:
        signal.signal(signal.SIGINT, handler)
        out.close()
        err.close()
    job.started = time.monotonic()
    job.status = {
        "name": job.name,
        **job.info,
        "train_steps": job.steps,
        "command": shell_line(job.argv, job.env),
        "host": socket.gethostname(),
        "pid": job.proc.pid,
        "started": _now(),
        **({"logs": str(logs)} if storage.is_bucket(job.workdir) else {}),
    }
    _write_status(job, status="running", returncode=None)


def _finish(job: Job) -> str:
    rc = job.proc.returncode
    logs = log_dir(job.workdir)
    if storage.is_bucket(job.workdir):  # the run's record: its output beside its checkpoints
        for name in (STDOUT_LOG, STDERR_LOG):
            (job.workdir / name).write_text((logs / name).read_text(errors="replace"))
    if is_finished(job.workdir, job.steps):
        state = "finished"
    elif rc != 0:
        state = "failed"
    else:  # exit 0 short of the target: preempted (SIGTERM) or handed to a scheduler by the launcher
        state = "launched" if job.detaches else "stopped"
    _write_status(
        job,
        status=state,
        returncode=rc,
        ended=_now(),
        duration_s=round(time.monotonic() - job.started, 1),
        stderr_tail=stderr_tail(logs / STDERR_LOG) if state == "failed" else "",
    )
    return state


def run_jobs(
    jobs: Sequence[Job], *, parallel: int = 1, title: str = "runs", log=print
) -> dict[str, dict[str, Any]]:
    """Runs every unfinished job (at most `parallel` at once), skipping finished ones and carrying on past
    failures. SIGTERM/SIGINT stop new launches and pass SIGTERM on (the trainer checkpoints and exits).
    Returns {run name: {'status': ..., 'returncode': ..., 'duration_s': ...}} in the jobs' order."""
    results: dict[str, dict[str, Any]] = {}
    queue: list[Job] = []
    for job in jobs:
        if is_finished(job.workdir, job.steps):
            results[job.name] = {"status": SKIPPED, "returncode": None, "duration_s": 0.0}
            continue
        queue.append(job)
        results[job.name] = {"status": "not started", "returncode": None, "duration_s": 0.0}
    log(
        f"{title}: {len(jobs)} runs, {len(jobs) - len(queue)} finished already, {len(queue)} to run "
        f"({parallel} at a time)"
    )

    active: list[Job] = []
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
                _start(job)
                active.append(job)
                log(f"[start] {job.name}")
            for job in [j for j in active if j.proc.poll() is not None]:
                active.remove(job)
                state = _finish(job)
                rc, seconds = job.proc.returncode, job.status["duration_s"]
                results[job.name] = {"status": state, "returncode": rc, "duration_s": seconds}
                log(
                    f"[{state}] {job.name} (exit {rc}, {seconds:.0f}s)"
                    + (f"\n{_indent(job.status['stderr_tail'])}" if state == "failed" else "")
                )
            if stop["requested"] and not active:
                break
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return results


def all_done(results: dict[str, dict[str, Any]]) -> bool:
    return all(r["status"] in DONE for r in results.values())


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
