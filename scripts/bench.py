#!/usr/bin/env python
"""`lax-bench` from a checkout that is not installed (see lax_pretrain/bench/cli.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lax_pretrain.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
