"""Hugging Face import/export on the command line (the workdir layout is the hand-over to training and back;
see convert/workdir.py):

    lax-convert import --hf_dir=HF_DIR --out=WORKDIR [--to_kind=svd|tt --rank=R] [--scan_layers]
    lax-convert export --workdir=WORKDIR --out=HF_DIR [--format=auto|hf_llama|cola|lax]
    python -m lax_pretrain.convert.hf_llama import|export ...   (the same)

`import` reads LlamaForCausalLM, the authors' ColaForCausalLM and our LaxLlamaForCausalLM directories (by
config.json "model_type": llama, cola, lax_llama) and writes a normal workdir (config.json, checkpoints/0 with
the parameters, the source hf_config.json); with --to_kind (dense LLaMA sources) it first re-initialises every
projection from the dense weights (convert/low_rank.py). `export` reads any workdir, an import or a training
run (its newest checkpoint), and writes the format --format names; auto: dense/svd/tt -> LlamaForCausalLM
(materialized), CoLA -> the authors' CoLA format, LaX-crossed svd/cola -> the LaX format (with its PyTorch
modeling file for `trust_remote_code=True`). A model the format cannot hold is refused naming the config key,
before the checkpoint is read; --out is replaced only when complete, and only if empty or an earlier export.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path

import jax
from absl import flags
from absl import logging as absl_logging
from flax import nnx

from lax_pretrain import cli
from lax_pretrain.convert.export_dir import check_replaceable
from lax_pretrain.convert.formats import export_checkpoint, load_checkpoint
from lax_pretrain.convert.hf_checkpoint import read_config
from lax_pretrain.convert.low_rank import to_low_rank
from lax_pretrain.convert.representable import FORMATS, choose_format
from lax_pretrain.convert.workdir import check_import_location, load_imported, save_imported, source_hf_config
from lax_pretrain.models.llama import PROJECTIONS
from lax_pretrain.train.checkpoint import load_config

FLAGS = cli.new_flags()
flags.DEFINE_string(
    "hf_dir", None, "import: a Hugging Face directory (LLaMA, CoLA or LaX).", flag_values=FLAGS
)
flags.DEFINE_string(
    "out", None, "import: the workdir to write the import into; export: the HF directory.", flag_values=FLAGS
)
flags.DEFINE_string("workdir", None, "export: a workdir (an import or a training run).", flag_values=FLAGS)
flags.DEFINE_enum(
    "to_kind",
    "dense",
    ["dense", "svd", "tt"],
    "import: re-initialise the projections as this kind.",
    flag_values=FLAGS,
)
flags.DEFINE_integer("rank", None, "import: svd rank / middle TT rank for --to_kind.", flag_values=FLAGS)
flags.DEFINE_bool("scan_layers", False, "import: stack blocks 1..L-1 for nnx.scan.", flag_values=FLAGS)
flags.DEFINE_enum(
    "format",
    "auto",
    ["auto", *FORMATS],
    "export: hf_llama (LlamaForCausalLM), cola (the authors' ColaForCausalLM), lax (LaxLlamaForCausalLM); "
    "auto picks the first of these that holds the model.",
    flag_values=FLAGS,
)


def _report_lines(report: Mapping[tuple[int, str], float]) -> list[str]:
    lines = ["projection  mean rel. error  max rel. error"]
    for name in PROJECTIONS:
        errors = [e for (_, n), e in report.items() if n == name]
        lines.append(f"{name:<10}  {sum(errors) / len(errors):>15.4f}  {max(errors):>14.4f}")
    return lines


def _import(fv: flags.FlagValues) -> None:
    if not fv.hf_dir or not fv.out:
        raise ValueError("import needs --hf_dir and --out")
    if fv.to_kind != "dense" and not fv.rank:
        raise ValueError(f"--to_kind={fv.to_kind} needs --rank")
    check_import_location(fv.out)
    model, model_cfg, fmt = load_checkpoint(fv.hf_dir, scan_layers=fv.scan_layers)
    if fv.to_kind != "dense":
        if fmt != "hf_llama":
            raise ValueError(f"--to_kind factorizes dense weights; {fv.hf_dir} is a {fmt} checkpoint")
        model, model_cfg, report = to_low_rank(model, model_cfg, kind=fv.to_kind, rank=fv.rank)
        print("\n".join(_report_lines(report)))
    root = save_imported(model, model_cfg, fv.out, read_config(fv.hf_dir))
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"imported {fv.hf_dir} ({fmt}: {params:,} parameters, kind {model_cfg.linear.kind}) -> {root}")


def _export(fv: flags.FlagValues) -> None:
    if not fv.workdir or not fv.out:
        raise ValueError("export needs --workdir and --out")
    # Refused before the checkpoint is read: a format that cannot hold the model, an --out we may not replace.
    fmt = choose_format(load_config(fv.workdir).model, fv.format)
    check_replaceable(Path(fv.out).absolute())
    model, model_cfg = load_imported(fv.workdir)
    base = source_hf_config(fv.workdir)
    _, out = export_checkpoint(model, model_cfg, fv.out, format=fmt, base_config=base)
    print(f"exported {fv.workdir} -> {out} ({fmt})")


COMMANDS = {"import": _import, "export": _export}


def _run(fv: flags.FlagValues, command: str) -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save and restore step at INFO
    COMMANDS[command](fv)


def main(argv: list[str] | None = None) -> int:
    return cli.run(_run, FLAGS, argv, commands=tuple(COMMANDS))


if __name__ == "__main__":
    sys.exit(main())
