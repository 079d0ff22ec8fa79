#!/usr/bin/env python
"""Compare runs: `lax-compare` (lax_pretrain/experiments/compare.py has the options and the columns).

python scripts/compare.py RUN_DIR_OR_GLOB... --out=REPORT_DIR [--title=...]
python scripts/compare.py runs/sweep_cpu --out=reports/sweep_cpu          # every run of a sweep directory
python scripts/compare.py --wandb=ENTITY/PROJECT [--group=SWEEP] --out=REPORT_DIR   # needs the network
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout that is not installed

from lax_pretrain.experiments.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
