"""Fine-tune adapters (LoRA, LaX-LoRA, EigenLoRAx) on a frozen base model with the one training loop.

    python -m lax_pretrain.finetune --config=configs/llama.py:nano --base=runs/nano --adapter=lora \
        --workdir=runs/nano_lora [--rank=8 --alpha=16 --targets='q|v' --config.train.steps=300 ...]
    python -m lax_pretrain.finetune --config=configs/llama.py:nano --base=runs/nano --adapter=lax_lora \
        --gate=identity --workdir=runs/nano_laxlora
    python -m lax_pretrain.finetune --config=configs/llama.py:nano --base=runs/nano --adapter=eigenlorax \
        --basis=basis.safetensors [--augment=8] --workdir=runs/nano_eigen

--base is a workdir (config.json + checkpoints/, newest checkpoint: a training run or an import made by
`lax-convert import`) or a Hugging Face directory (LlamaForCausalLM, CoLA or LaX). The model
section of the run config is the base's (`--config` supplies data, train, optim, wandb, mesh); the adapter
settings are recorded in the run config under `adapter`. Data for the new task come from `config.data`.

Only adapter variables train (`trainable=ADAPTER_PARAMS`): the base's parameters are frozen inputs of
the train step and have no optimizer state. The run resumes like any training run; at the end the adapter
is written to WORKDIR/adapter.safetensors (EigenLoRAx also WORKDIR/loadings.safetensors, the task's
loadings alone, for many-task serving from one basis).

--dropout: adapter dropout acts in the train step only (`model(x, train=True)`); evaluation, sampling and the
returned model run without it.

The base's parameters reach `train` as `init_values`: each is placed straight into its sharding, never traced
into a jit as a constant, so multi-GB bases cost no compile time.

`main(argv)` is the command line, importable: bad input (a flag, a config key, a file) prints one line
`error: ...` on stderr and returns 2; `--verbose` re-raises it with its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import flags
from flax import nnx
from ml_collections import config_flags

from lax_pretrain import cli
from lax_pretrain.adapters.eigenlorax import INIT_SCALE, Basis, Loadings, augment
from lax_pretrain.adapters.inject import (
    ADAPTER_KINDS,
    EIGEN_INITS,
    AdapterSpec,
    adapters,
    add_adapters,
    base_values_in,
    check_unrolled,
    exact_targets,
    loadings_state,
    save_adapter,
)
from lax_pretrain.adapters.io import load_basis, save_loadings
from lax_pretrain.adapters.lora import ADAPTER_PARAMS, LAX_GATES, LAX_LATENTS, LORA_INITS
from lax_pretrain.models import build
from lax_pretrain.parallel.distributed import maybe_initialize_distributed

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
LOADINGS_FILE = "loadings.safetensors"


def load_base(base: str | Path) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """(model, config.model) of a workdir (a training run or an import: one loader) or a Hugging Face
    directory."""
    base = Path(base)
    config_json = base / "config.json"
    if (base / "checkpoints").is_dir() and config_json.exists():
        if "adapter" in json.loads(config_json.read_text()):
            raise ValueError(
                f"--base={base} is a fine-tuning run (its config has an 'adapter' section); pass the "
                "base model it was fine-tuned from (config.adapter.base) and load the adapter with "
                "load_adapter"
            )
        from lax_pretrain.train.checkpoint import load_trained_model

        model, config, step = load_trained_model(base)
        log.info("base: %s at step %d", base, step)
        return model, config.model
    if config_json.exists() and (
        any(base.glob("*.safetensors")) or (base / "model.safetensors.index.json").exists()
    ):
        from lax_pretrain.convert import load_checkpoint

        model, model_cfg, _ = load_checkpoint(base)  # LlamaForCausalLM, CoLA or LaX (by model_type)
        return model, model_cfg
    raise FileNotFoundError(
        f"--base={base} is neither a workdir (config.json + checkpoints/: a training run or an import) "
        "nor a Hugging Face directory (config.json + *.safetensors)"
    )


def adapter_factory(
    model_cfg: Any, spec: AdapterSpec, *, basis: Basis | None = None, loadings: Loadings | None = None
):
    """`rngs -> adapted model`: the base architecture (freshly initialised: the base's values come separately,
    see `base_values_in`) with adapters per `spec` on top."""

    def make(rngs: nnx.Rngs) -> nnx.Module:
        return add_adapters(build(model_cfg, rngs=rngs), spec, rngs=rngs, basis=basis, loadings=loadings)

    return make


def finetune(
    config: ml_collections.ConfigDict,
    base: str | Path | tuple[nnx.Module, Any],
    spec: AdapterSpec,
    workdir: str | Path,
    *,
    basis: Basis | None = None,
    loadings: Loadings | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains `spec`'s adapters on `base` (a path for `load_base`, or (model, config.model)) with `train`.

    Returns train's summary plus 'model' (the adapted model with the final adapter) and 'adapter_path'.
    """
    from lax_pretrain.train import train  # the loop pulls in orbax, wandb, grain: import when used

    workdir = Path(workdir)
    base_model, model_cfg = load_base(base) if isinstance(base, (str, Path)) else base
    check_unrolled(base_model)  # before anything compiles
    base_params = jax.device_get(nnx.state(base_model, nnx.Param))
    del base_model
    if spec.kind == "eigenlorax" and basis is None:
        raise ValueError(
            "--adapter=eigenlorax needs --basis=PATH.safetensors (a basis from fit_basis/save_basis)"
        )
    config = ml_collections.ConfigDict(config.to_dict())
    config.model = ml_collections.ConfigDict(
        model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg
    )
    config.adapter = dict(
        spec.to_dict(),
        base=str(base) if isinstance(base, (str, Path)) else "",
        **{k: v for k, v in (meta or {}).items() if isinstance(v, (str, int, float, bool))},
    )
    factory = adapter_factory(config.model, spec, basis=basis, loadings=loadings)
    base_values = base_values_in(nnx.eval_shape(lambda: factory(nnx.Rngs(0))), base_params)
    summary = train(config, workdir, model_factory=factory, trainable=ADAPTER_PARAMS, init_values=base_values)

    seed = config.train.seed
    model = factory(nnx.Rngs(params=seed, dropout=seed))
    nnx.update(model, nnx.from_flat_state(list(base_values.items())), summary["final_params"])
    summary["model"] = model
    if jax.process_index() == 0:
        summary["adapter_path"] = workdir / ADAPTER_FILE
        file_meta = {"base": config.adapter.base, **(meta or {})}
        save_adapter(summary["adapter_path"], model, spec, meta=file_meta)
        if spec.kind == "eigenlorax":
            save_loadings(workdir / LOADINGS_FILE, loadings_state(model), meta=file_meta)
    return summary


# ----------------------------------------------------------------------------------------------- command line

FLAGS = cli.new_flags()  # private: importing this module defines no flag in absl's global FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Recipe and compact argument (data/train/optim), e.g. "
    "configs/llama.py:nano; the model section comes from --base.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "base", None, "A workdir (training run or import) or a Hugging Face directory.", flag_values=FLAGS
)
flags.DEFINE_enum("adapter", "lora", list(ADAPTER_KINDS), "Adapter kind.", flag_values=FLAGS)
flags.DEFINE_string(
    "workdir", None, "Run directory (resumes if present); adapter.safetensors goes here.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "rank", None, "LoRA rank r (default 8; eigenlorax: the basis's rank).", flag_values=FLAGS
)
flags.DEFINE_float(
    "alpha", None, "LoRA alpha, scale s = alpha / r (default 2 r, i.e. 16 at r = 8).", flag_values=FLAGS
)
flags.DEFINE_string(
    "targets",
    None,
    "Regex over projection paths, matched against a whole dotted tail "
    "('q|v' default, 'all', 'attn\\..*'; eigenlorax: the basis's modules).",
    flag_values=FLAGS,
)
flags.DEFINE_float("dropout", 0.0, "Dropout on the adapter input.", flag_values=FLAGS)
flags.DEFINE_enum("init", "kaiming_uniform", list(LORA_INITS), "Init of A (B = 0).", flag_values=FLAGS)
flags.DEFINE_enum("gate", "identity", list(LAX_GATES), "LaX-LoRA crossing gate.", flag_values=FLAGS)
flags.DEFINE_enum(
    "lax_latent",
    "own",
    list(LAX_LATENTS),
    "LaX-LoRA: latent passed on, x A or x A + gate(h).",
    flag_values=FLAGS,
)
flags.DEFINE_string("basis", None, "EigenLoRAx basis file (save_basis).", flag_values=FLAGS)
flags.DEFINE_integer(
    "augment",
    0,
    "EigenLoRAx: append this many random orthonormal directions to the basis.",
    flag_values=FLAGS,
)
flags.DEFINE_float(
    "init_scale", INIT_SCALE, "EigenLoRAx: fresh loadings U(-init_scale, init_scale).", flag_values=FLAGS
)
flags.DEFINE_enum(
    "eigen_init",
    "uniform",
    list(EIGEN_INITS),
    "EigenLoRAx: 'uniform' loadings (the reference's "
    "default) or alpha_B = 0 (start exactly at the base, like LoRA's B = 0).",
    flag_values=FLAGS,
)
flags.mark_flags_as_required(["config", "base", "workdir"], flag_values=FLAGS)


def spec_from_flags(f: flags.FlagValues, basis: Basis | None) -> AdapterSpec:
    rank = f.rank if f.rank is not None else (basis.rank if basis is not None else 8)
    targets = (
        f.targets if f.targets is not None else (exact_targets(basis.modules) if basis is not None else "q|v")
    )
    return AdapterSpec(
        kind=f.adapter,
        rank=rank,
        alpha=f.alpha if f.alpha is not None else 2.0 * rank,
        targets=targets,
        dropout=f.dropout,
        init=f.init,
        gate=f.gate,
        lax_latent=f.lax_latent,
        init_scale=f.init_scale,
        eigen_init=f.eigen_init,
    )


def _run(f: flags.FlagValues) -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    logging.getLogger("lax_pretrain").setLevel(logging.INFO)
    maybe_initialize_distributed(f.config.distributed)
    basis = None
    if f.adapter == "eigenlorax":
        if not f.basis:
            raise ValueError("--adapter=eigenlorax needs --basis=PATH.safetensors")
        basis = load_basis(f.basis)
        if f.augment:
            basis = augment(basis, f.augment, seed=f.config.train.seed)
    elif f.basis or f.augment:
        raise ValueError("--basis and --augment are for --adapter=eigenlorax")
    spec = spec_from_flags(f, basis)
    meta = {"basis": f.basis, "augment": f.augment} if basis is not None else {}
    summary = finetune(f.config, f.base, spec, f.workdir, basis=basis, meta=meta)
    n = sum(m.param_count for m in adapters(summary["model"]).values())
    print(
        f"{summary['status']} at step {summary['step']}; {n:,} trainable adapter parameters; "
        f"adapter: {summary.get('adapter_path')}"
    )


def main(argv: list[str] | None = None) -> int:
    """The command line (`lax-finetune`); returns the exit status (lax_pretrain/cli.py)."""
    return cli.run(_run, FLAGS, argv)


if __name__ == "__main__":
    sys.exit(main())
