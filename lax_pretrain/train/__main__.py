"""Pretrain a model from a recipe: checkpoints, metrics.jsonl, config.json in the workdir (resumes if there).

lax-train --config=configs/llama.py:nano,kind=cola,lax=kron --workdir=runs/x [--config.a.b=v]
python -m lax_pretrain.train ...   (the same)
"""

from __future__ import annotations

import logging
import sys

from absl import flags
from ml_collections import config_flags

from lax_pretrain import cli
from lax_pretrain.parallel.distributed import maybe_initialize_distributed
from lax_pretrain.train import train

FLAGS = cli.new_flags()
config_flags.DEFINE_config_file(
    "config", None, "Recipe file and compact argument, e.g. configs/llama.py:nano", flag_values=FLAGS
)
flags.DEFINE_string(
    "workdir",
    None,
    "Run directory: checkpoints, metrics.jsonl, config.json (resumes if present).",
    flag_values=FLAGS,
)
flags.mark_flags_as_required(["config", "workdir"], flag_values=FLAGS)


def _run(fv: flags.FlagValues) -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    logging.getLogger("lax_pretrain").setLevel(logging.INFO)
    config = fv.config
    maybe_initialize_distributed(config.distributed)
    summary = train(config, fv.workdir)
    print(f"{summary['status']} at step {summary['step']}")


def main(argv: list[str] | None = None) -> int:
    return cli.run(_run, FLAGS, argv)


if __name__ == "__main__":
    sys.exit(main())
