"""The one metrics path: every record goes to JSON lines in the workdir (the source of truth for comparisons),
to the console, and to Weights & Biases on process 0 (online, offline by default, or disabled)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax

WANDB_MODES = ("online", "offline", "disabled")
METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


class MetricWriter:
    def __init__(self, workdir: str | Path, config: Any, *, run_name: str):
        self.is_main = jax.process_index() == 0
        self.path = Path(workdir) / METRICS_FILE
        self.wandb_run = None
        mode = config.wandb.mode
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode={mode!r} is not one of {', '.join(WANDB_MODES)}")
        if self.is_main and mode != "disabled":
            self.wandb_run = _start_wandb(workdir, config, run_name)

    def write(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = {k: _plain(v) for k, v in record.items() if v is not None}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(
                {k: v for k, v in record.items() if k != "step" and not isinstance(v, str)},
                step=record["step"],
            )

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _start_wandb(workdir: str | Path, config: Any, run_name: str):
    import wandb

    wb = config.wandb
    # The run id is derived from the workdir so a resumed run continues the same W&B run.
    run_id = "".join(c if c.isalnum() else "-" for c in str(Path(workdir).resolve()))[-64:].strip("-")
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        project=wb.project,
        entity=wb.entity or None,
        group=wb.group or None,
        tags=list(wb.tags) or None,
        name=wb.name or run_name,
        mode=wb.mode,
        dir=str(workdir),
        id=run_id,
        resume="allow",
        config=json.loads(config.to_json_best_effort()),
        settings=wandb.Settings(console="off"),
    )


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The records of `<workdir>/metrics.jsonl`, [] if there is none. The writer appends one JSON object per
    line, so a kill mid-write leaves a line cut short (and a resumed run appends its next record right after
    it): a line that is not one JSON object is skipped."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
