"""Generate text from the newest checkpoint of a LLaMA training run.

    lax-sample --workdir=runs/x --prompt="ROMEO:" [--max_new_tokens=300 --temperature=0.8 --top_k=40 --top_p=0.95]
    python -m lax_pretrain.sample ...   (the same)

Decoding uses a KV cache (lax_pretrain.models.generate): one prefill of the prompt (its last `data.seq_len`
tokens), then one jitted step per new token; RoPE positions run on past `data.seq_len` for longer outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import flags

from lax_pretrain import cli
from lax_pretrain import data as data_lib
from lax_pretrain.models import get_task
from lax_pretrain.models.generate import generate as generate_cached
from lax_pretrain.train.checkpoint import load_trained_model

FLAGS = cli.new_flags()
flags.DEFINE_string("workdir", None, "Training run directory.", flag_values=FLAGS)
flags.DEFINE_string("prompt", "", "Text to continue.", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate.", flag_values=FLAGS)
flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.", flag_values=FLAGS)
flags.DEFINE_integer("top_k", 40, "Sample among the k most likely tokens (0 = all).", flag_values=FLAGS)
flags.DEFINE_float(
    "top_p", 1.0, "Nucleus sampling: the smallest set of mass >= p (1 = all).", flag_values=FLAGS
)
flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=FLAGS)
flags.mark_flags_as_required(["workdir"], flag_values=FLAGS)


def generate(
    workdir: str | Path,
    prompt: str,
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int = 0,
    top_p: float = 1.0,
) -> str:
    model, config, _ = load_trained_model(workdir)
    if get_task(config.model).data_kind != "text":
        raise ValueError(f"{workdir} holds a {config.model.family!r} model; sampling needs a language model")
    tokenizer = data_lib.get_tokenizer(config.data)
    window = config.data.seq_len
    bos = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []  # T5 has no BOS
    ids = (bos + tokenizer.encode(prompt))[-window:]
    if not ids:
        raise ValueError("--prompt is empty and the tokenizer has no BOS to start from: give a prompt")
    if max_new_tokens < 1:
        return prompt
    new_1xN, n_1 = generate_cached(
        model,
        np.asarray([ids], np.int32),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
    )
    out = new_1xN[0, : n_1[0]].tolist()
    return prompt + tokenizer.decode(out)


def _run(fv: flags.FlagValues) -> None:
    print(
        generate(
            fv.workdir,
            fv.prompt,
            max_new_tokens=fv.max_new_tokens,
            temperature=fv.temperature,
            top_k=fv.top_k,
            seed=fv.seed,
            top_p=fv.top_p,
        )
    )


def main(argv: list[str] | None = None) -> int:
    return cli.run(_run, FLAGS, argv)


if __name__ == "__main__":
    sys.exit(main())
