#!/usr/bin/env python
"""KV-cached vs uncached generation timing from a checkout (see lax_pretrain/bench/generate.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lax_pretrain.bench.generate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
