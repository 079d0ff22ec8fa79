#!/usr/bin/env python
"""Run (or print) every run of a sweep file: `lax-sweep` (lax_pretrain/experiments/sweep.py has the options).

python scripts/sweep.py --sweep=configs/sweeps/cpu.py --workdir=runs/sweep_cpu [--dry_run] [--only=REGEX]
    [--parallel=N] [--launcher=local|tpu|slurm] [--launcher_args='...'] [--set=train.steps=150 ...]
    [--wandb_spec=sweep.yaml]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout that is not installed

from lax_pretrain.experiments.sweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
