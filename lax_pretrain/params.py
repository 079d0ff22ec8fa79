"""Parameter and FLOP accounting from an abstract (eval_shape) model: the 7B preset costs no memory.

    lax-params --config=configs/llama.py:60m,kind=cola,lax=kron [--json] [--recipe]
    python -m lax_pretrain.params ...   (the same)

Prints one row per projection type (summed over blocks) and the totals: all parameters, non-embedding
parameters (embedding, head, patch/position/cls and classifier excluded), LaX overhead (gates and latent
norms) and forward FLOPs per token (matmuls; attention scores included; x3 for a training step).
"""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
from absl import flags
from ml_collections import config_flags

from lax_pretrain import cli
from lax_pretrain.models.stats import format_table, model_stats
from lax_pretrain.recipe import flatten_overrides, format_recipe, recipe_rows

FLAGS = cli.new_flags()
config_flags.DEFINE_config_file(
    "config", None, "Recipe file and compact argument, e.g. configs/llama.py:60m", flag_values=FLAGS
)
flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.", flag_values=FLAGS)
flags.DEFINE_bool(
    "recipe", False, "Print every training hyperparameter with the source it follows.", flag_values=FLAGS
)
flags.mark_flags_as_required(["config"], flag_values=FLAGS)


def _run(fv: flags.FlagValues) -> None:
    config = fv.config
    if fv.recipe:
        overridden = flatten_overrides(config_flags.get_override_values(fv["config"]))
        rows = recipe_rows(config, overridden)
        if fv.json:
            print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        else:
            print(format_recipe(rows))
        return
    seq_len = config.data.get("seq_len", 256)
    stats = model_stats(config.model, seq_len)
    if fv.json:
        print(json.dumps(stats.to_json(), indent=2))
    else:
        print(format_table(stats))


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        # This process is the command: abstract shapes need no accelerator, so never start one.
        jax.config.update("jax_platforms", "cpu")
    return cli.run(_run, FLAGS, argv)


if __name__ == "__main__":
    sys.exit(main())
