"""python -m lax_pretrain.train --config=configs/llama.py:nano,kind=cola,lax=kron --workdir=runs/x [--config.a.b=v]"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from lax_pretrain.parallel.distributed import maybe_initialize_distributed

config_flags.DEFINE_config_file("config", None, "Recipe file and compact argument, e.g. configs/llama.py:nano")
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, config.json (resumes if present).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    logging.getLogger("lax_pretrain").setLevel(logging.INFO)
    config = flags.FLAGS.config
    maybe_initialize_distributed(config.distributed)
    from lax_pretrain.train import train

    summary = train(config, flags.FLAGS.workdir)
    print(f"{summary['status']} at step {summary['step']}")


if __name__ == "__main__":
    app.run(main)
