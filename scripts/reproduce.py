#!/usr/bin/env python
"""The LaX paper's comparison scaled to this machine (see lax_pretrain/reproduce.py).

    python scripts/reproduce.py --suite=cpu_llama [--out=DIR] [--tiny] [--seeds_noise=2]
    python scripts/reproduce.py --suite=cpu_vit --out=runs/reproduce/cpu_vit
    python scripts/reproduce.py --suite=cpu_llama --steps=30 --out=/tmp/reduced   # a reduced budget

Writes OUT/results.md, OUT/results.json and OUT/val_vs_params.png; one workdir per run under OUT/runs/.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lax_pretrain import reproduce  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", required=True, choices=tuple(reproduce.SUITES))
    p.add_argument("--out", default=None, help="output directory (default runs/reproduce/<suite>)")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke version (shrunk model, 2 steps)")
    p.add_argument("--seeds_noise", type=int, default=2,
                   help=f"seeds of {' and '.join(reproduce.NOISE_VARIANTS)} (every other variant: seed 0)")
    p.add_argument("--steps", type=int, default=None, help="override the suite's step budget (reduced runs)")
    p.add_argument("--data_dir", default="", help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of " + ",".join(reproduce.variant_name(*v) for v in reproduce.VARIANTS))
    p.add_argument("--keep_checkpoints", action="store_true", help="keep each run's final checkpoint")
    a = p.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.WARNING)
    out = Path(a.out or f"runs/reproduce/{a.suite}")
    command = "python scripts/reproduce.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    result = reproduce.run_suite(a.suite, out, tiny=a.tiny, seeds_noise=a.seeds_noise, steps=a.steps,
                                 data_dir=a.data_dir,
                                 variants=reproduce.parse_variants(a.variants) if a.variants else reproduce.VARIANTS,
                                 keep_checkpoints=a.keep_checkpoints, command=command.strip())
    failed = [r["run"] for r in result["rows"] if r["status"] != "done"]
    print(f"wrote {out / 'results.md'}" + (f"; failed runs: {', '.join(failed)}" if failed else ""))
    return result


if __name__ == "__main__":
    main()
