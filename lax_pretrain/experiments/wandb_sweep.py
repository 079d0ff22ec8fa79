"""A sweep's runs as a W&B grid sweep spec, to train them with `wandb agent` instead of the runner.

W&B grids are products of per-parameter value lists: `config` takes every recipe + compact argument (so the
dense-has-no-crossing rule survives), and every other override becomes a `config.<key>` parameter with its
values. Runs that are not that product (a zip of overrides, or per-suite shared settings) cannot be expressed:
export them in parts (`--only`).
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def spec(
    runs: Sequence[Any],
    sweep_name: str,
    workdir: str | Path,
    extra: dict[str, Any] | None = None,
    *,
    project: str = "lax-pretrain",
) -> dict[str, Any]:
    """The grid of `runs` (`sweep.Run`s). Each agent run trains in `<workdir>/<W&B run id>`: the command goes
    through `bash -c` for that, since W&B's command macros have no per-run name."""
    overrides = [r.all_overrides(extra) for r in runs]
    configs = list(dict.fromkeys(r.config for r in runs))
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    values: dict[str, list[Any]] = {}
    for key in keys:
        missing = [r.name for r, o in zip(runs, overrides) if key not in o]
        if missing:
            raise ValueError(
                f"override {key!r} is not set in every run (missing in {missing[:3]}): a W&B grid "
                "cannot express that; set it in every run or in SHARED"
            )
        values[key] = list(dict.fromkeys(o[key] for o in overrides))
    grid = {
        (c, *(_hashable(v) for v in combo))
        for c in configs
        for combo in itertools.product(*(values[k] for k in keys))
    }
    actual = {(r.config, *(_hashable(o[k]) for k in keys)) for r, o in zip(runs, overrides)}
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


def write(grid: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# W&B grid sweep exported by lax-sweep (scripts/sweep.py). Use it with:\n"
        f"#   wandb sweep {path.name}  &&  wandb agent ENTITY/{grid['project']}/SWEEP_ID\n"
    )
    path.write_text(header + yaml.safe_dump(grid, sort_keys=False, width=120))
    return path
