#!/usr/bin/env python
"""The LaX paper's comparison scaled to this machine (lax_pretrain/experiments/reproduce.py has the details).

    python scripts/reproduce.py --suite=cpu_llama [--out=DIR] [--tiny] [--seeds=2]
    python scripts/reproduce.py --suite=cpu_vit --out=runs/reproduce/cpu_vit
    python scripts/reproduce.py --suite=cpu_llama --steps=30 --out=/tmp/reduced   # a reduced budget

Writes OUT/results.md, OUT/results.json and OUT/val_vs_params.png; one workdir per run under OUT/runs/.
Run it again after an interruption: finished runs are skipped, the interrupted one resumes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout that is not installed

from lax_pretrain.experiments.reproduce import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
