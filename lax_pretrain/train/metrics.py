"""The one metrics path: every record goes to JSON lines in the workdir (the source of truth for comparisons),
to the console, and to Weights & Biases on process 0 (online, offline by default, or disabled).

One history per run, however often it is killed and resumed:
- metrics.jsonl: a run resumed from the checkpoint at step s first drops every record after s (the records of
  the steps it trains again) into metrics.discarded.jsonl, each wrapped with the step it resumed from, and
  rewrites metrics.jsonl atomically. A fresh start (s = 0) drops everything: it writes step 0 again.
- W&B, one row per step, committed with all of that step's records. Offline, each start is one complete
  offline run: it logs every record metrics.jsonl keeps, then the new ones, and the earlier offline runs of
  this workdir move to wandb_superseded/ (a killed run's .wandb file also lacks whatever W&B had not flushed
  yet, up to ~15 s of data). So `wandb sync <workdir>/wandb` uploads each step once. Online, a resumed run
  rewinds the W&B run to step s (`resume_from`); where the server refuses a rewind, it continues the run
  (`resume="allow"`) and logs only the steps the server does not hold yet.

A workdir in a bucket (train/storage.py): metrics.jsonl is one object, rewritten whole (an object cannot be
appended to) at most once a second, and at once for a step a checkpoint is saved at, so a checkpoint never
exists without the records of its steps. W&B writes to a local directory (its files are not written through
fsspec): `$WANDB_DIR/<run id>` if WANDB_DIR is set, else ~/.cache/lax-pretrain/wandb/<run id>.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax

from lax_pretrain.train.storage import Appender, is_bucket, local_dir, path_id, replace_text, workdir_path

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")
METRICS_FILE = "metrics.jsonl"
DISCARDED_FILE = "metrics.discarded.jsonl"
SUPERSEDED_WANDB_DIR = "wandb_superseded"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


class MetricWriter:
    """Writes the records of a run that starts (or resumes) after step `resume_step` (0: a fresh start)."""

    def __init__(self, workdir: str | os.PathLike, config: Any, *, run_name: str, resume_step: int):
        self.is_main = jax.process_index() == 0
        self.path = workdir_path(workdir) / METRICS_FILE
        self.wandb_run = None
        self.out: Appender | None = None
        # The steps a checkpoint is saved at: their records go to storage at once (a bucket holds back others).
        self.checkpoint_every, self.last_step = int(config.train.checkpoint_every), int(config.train.steps)
        mode = config.wandb.mode
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode={mode!r} is not one of {', '.join(WANDB_MODES)}")
        if not self.is_main:
            return
        kept = truncate_history(workdir, resume_step)
        self.out = Appender(self.path)
        if mode != "disabled":
            self.wandb_run = _start_wandb(workdir, config, run_name, resume_step)
            # W&B gets the kept records it does not hold yet (offline: all of them), one row per step.
            rows: dict[int, list[dict]] = {}
            for record in kept:
                rows.setdefault(record["step"], []).append(record)
            for step in sorted(rows):
                self._log_wandb(rows[step])

    def write(self, *records: dict[str, Any]) -> None:
        """All records of one step: one line each in metrics.jsonl, one committed row in W&B."""
        if not self.is_main or not records:
            return
        records = [{k: _plain(v) for k, v in r.items() if v is not None} for r in records]
        durable = any(r["step"] % self.checkpoint_every == 0 or r["step"] >= self.last_step for r in records)
        self.out.append("".join(json.dumps(r) + "\n" for r in records), durable=durable)
        if self.wandb_run is not None:
            self._log_wandb(records)

    def _log_wandb(self, records: list[dict]) -> None:
        step = records[0]["step"]
        if step < self.wandb_run.starting_step:  # the W&B run holds it already
            return
        row = {k: v for r in records for k, v in r.items() if k != "step" and not isinstance(v, str)}
        self.wandb_run.log(row, step=step, commit=True)

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def truncate_history(workdir: str | os.PathLike, resume_step: int) -> list[dict]:
    """Keeps the records of steps up to `resume_step` (none for a fresh start, which writes step 0 again) in
    metrics.jsonl and moves every other line, a line cut short by a kill included, to metrics.discarded.jsonl.
    Returns the kept records. The discarded lines are appended first and metrics.jsonl is replaced atomically,
    so a crash in between leaves a duplicate in the side file, never a lost record."""
    path = workdir_path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    text = path.read_text()
    kept_lines, kept, discarded = [], [], []
    for line in text.splitlines():
        record = _parse(line)
        if record is not None and 0 < resume_step and record["step"] <= resume_step:
            kept_lines.append(line)
            kept.append(record)
        elif line.strip():
            discarded.append({"record": record} if record is not None else {"line": line})
    if not discarded and (not text or text.endswith("\n")):
        return kept
    if discarded:
        side = Appender(path.with_name(DISCARDED_FILE))
        stamp = {"resumed_from_step": resume_step, "time": time.time()}
        side.append("".join(json.dumps({**stamp, **d}) + "\n" for d in discarded), durable=True)
    replace_text(path, "".join(line + "\n" for line in kept_lines))
    log.info(
        "metrics.jsonl: %d record(s) after step %d moved to %s", len(discarded), resume_step, DISCARDED_FILE
    )
    return kept


def _parse(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def wandb_run_id(workdir: str | os.PathLike) -> str:
    """Derived from the workdir, so that every start of a run continues the same W&B run."""
    return path_id(workdir)


def wandb_dir(workdir: str | os.PathLike) -> Path:
    """Where W&B writes a run's files: the workdir itself, or for a workdir in a bucket a local directory of
    this run's own (W&B writes with plain file I/O): $WANDB_DIR/<run id>, else
    ~/.cache/lax-pretrain/wandb/<run id>."""
    return local_dir(workdir, "wandb", os.environ.get("WANDB_DIR") or None)


def _start_wandb(workdir: str | os.PathLike, config: Any, run_name: str, resume_step: int):
    import wandb

    wb = config.wandb
    run_id = wandb_run_id(workdir)
    local_dir = wandb_dir(workdir)
    if is_bucket(workdir):
        local_dir.mkdir(parents=True, exist_ok=True)
        log.info("W&B files of %s are written to %s (a local directory)", workdir, local_dir)
    os.environ.setdefault("WANDB_SILENT", "true")
    init = dict(
        project=wb.project,
        entity=wb.entity or None,
        group=wb.group or None,
        tags=list(wb.tags) or None,
        name=wb.name or run_name,
        mode=wb.mode,
        dir=str(local_dir),
        config=json.loads(config.to_json_best_effort()),
        settings=wandb.Settings(console="off"),
    )
    if wb.mode == "offline":
        _supersede_offline_runs(local_dir, run_id)
        return wandb.init(id=run_id, **init)
    if resume_step > 0:
        try:
            return wandb.init(resume_from=f"{run_id}?_step={resume_step}", **init)
        except wandb.Error as e:
            log.warning(
                "W&B could not rewind run %s to step %d (%s); continuing it instead: steps the server already "
                "holds keep their first values",
                run_id,
                resume_step,
                str(e).splitlines()[0][:200] if str(e) else type(e).__name__,
            )
    return wandb.init(id=run_id, resume="allow", **init)


def _supersede_offline_runs(workdir: Path, run_id: str) -> None:
    """Moves this run's earlier offline W&B runs out of `<workdir>/wandb`: the new one holds the whole history."""
    for log_file in sorted((workdir / "wandb").glob(f"offline-run-*/run-{run_id}.wandb")):
        target = workdir / SUPERSEDED_WANDB_DIR
        target.mkdir(exist_ok=True)
        shutil.move(str(log_file.parent), str(target / log_file.parent.name))


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of `<workdir>/metrics.jsonl`, [] if there is none. The writer appends one JSON object per
    line, so a kill mid-write can leave a last line cut short (a resumed run moves it aside first): a line that
    is not one JSON object is skipped."""
    path = workdir_path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
