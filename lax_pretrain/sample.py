"""Generate text from the newest checkpoint of a LLaMA training run.

    lax-sample --workdir=runs/x --prompt="ROMEO:" [--max_new_tokens=300 --temperature=0.8 --top_k=40]
    python -m lax_pretrain.sample ...   (the same)

Decoding re-runs the model over a fixed window of `data.seq_len` tokens (one compiled shape, no KV cache):
simple and exact for the small models this is meant for; the window slides for longer outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from lax_pretrain import cli
from lax_pretrain import data as data_lib
from lax_pretrain.models import get_task
from lax_pretrain.train.checkpoint import load_trained_model

FLAGS = cli.new_flags()
flags.DEFINE_string("workdir", None, "Training run directory.", flag_values=FLAGS)
flags.DEFINE_string("prompt", "", "Text to continue.", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate.", flag_values=FLAGS)
flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.", flag_values=FLAGS)
flags.DEFINE_integer("top_k", 40, "Sample among the k most likely tokens (0 = all).", flag_values=FLAGS)
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
) -> str:
    model, config, _ = load_trained_model(workdir)
    if get_task(config.model).data_kind != "text":
        raise ValueError(f"{workdir} holds a {config.model.family!r} model; sampling needs a language model")
    tokenizer = data_lib.get_tokenizer(config.data)
    window = config.data.seq_len
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)

    @jax.jit
    def next_token(tokens_1xL, position, key):
        logits_V = model(tokens_1xL)[0, position].astype(jnp.float32)
        if temperature <= 0:
            return jnp.argmax(logits_V)
        logits_V = logits_V / temperature
        if 0 < top_k < logits_V.shape[0]:
            kth = jax.lax.top_k(logits_V, top_k)[0][-1]
            logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
        return jax.random.categorical(key, logits_V)

    key = jax.random.key(seed)
    out: list[int] = []
    for _ in range(max_new_tokens):
        context = (ids + out)[-window:]
        buffer = np.full((1, window), tokenizer.pad_id, np.int32)
        buffer[0, : len(context)] = context
        key, sub = jax.random.split(key)
        token = int(next_token(jnp.asarray(buffer), len(context) - 1, sub))
        if token == tokenizer.eos_id:
            break
        out.append(token)
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
        )
    )


def main(argv: list[str] | None = None) -> int:
    return cli.run(_run, FLAGS, argv)


if __name__ == "__main__":
    sys.exit(main())
