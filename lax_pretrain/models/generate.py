"""Generation with a KV cache for the LLaMA model (every kind, LaX crossing or not, unrolled or scanned).

    new_BxN, lengths_B = generate(model, tokens_BxL, lengths_B, max_new_tokens=N, temperature=0.8, top_k=40)

One prefill over the (left-padded) prompts fills a fixed-size cache of P + N slots; then one jitted
`lax.while_loop` decodes a token per step for every row until N tokens or every row has met EOS. Prompts of
different lengths come right-padded (the default) or left-padded; right padding is moved to the left on the
host, so each row's real tokens end at the last prompt slot. Sampling: temperature (0 = greedy), top-k,
top-p (nucleus), one seed. After a row's EOS (kept in its output) the row is `pad_id`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PADDINGS = ("right", "left")


def sample_logits(
    logits_BxV: jax.Array, key: jax.Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """Next tokens (B,) int32: argmax when temperature <= 0; else a draw from softmax(logits / temperature)
    restricted to the top_k most likely (0 = all) and to the smallest set of mass >= top_p (1 = all)."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    if temperature <= 0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV / temperature
    vocab = logits_BxV.shape[-1]
    if 0 < top_k < vocab:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if 0 < top_p < 1:
        sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)  # descending
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        keep_BxV = (jnp.cumsum(probs_BxV, axis=-1) - probs_BxV) < top_p  # the most likely is always kept
        threshold_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def left_pad(
    tokens_BxL: np.ndarray, lengths_B: np.ndarray, *, padding: str = "right", pad_id: int = 0
) -> np.ndarray:
    """The prompts left-aligned to the right edge: row b's lengths_B[b] real tokens in its last slots."""
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r} is not one of {', '.join(PADDINGS)}")
    tokens_BxL = np.asarray(tokens_BxL, np.int32)
    b, length = tokens_BxL.shape
    out_BxL = np.full((b, length), pad_id, np.int32)
    for row, n in enumerate(np.asarray(lengths_B)):
        n = int(n)
        if not 1 <= n <= length:
            raise ValueError(f"prompt length {n} of row {row} is outside 1..{length}")
        out_BxL[row, length - n :] = (
            tokens_BxL[row, :n] if padding == "right" else tokens_BxL[row, length - n :]
        )
    return out_BxL


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id"),
)
def _generate(
    graphdef: Any,
    state: Any,
    tokens_BxP: jax.Array,
    start_B: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_id: int | None,
    pad_id: int,
) -> jax.Array:
    model = nnx.merge(graphdef, state)
    b, p = tokens_BxP.shape
    sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    is_eos = (lambda t: t == eos_id) if eos_id is not None else (lambda t: jnp.zeros(t.shape, bool))
    cache = model.init_cache(b, p + max_new_tokens)
    logits_BxPxV, cache = model.decode(tokens_BxP, cache, jnp.int32(0), start_B)
    key, sub = jax.random.split(key)
    token_B = sample(logits_BxPxV[:, -1], sub)
    new_BxN = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token_B)

    def cond(carry):
        i, _, _, _, _, done_B, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def body(carry):
        i, token_B, cache, key, new_BxN, done_B, state = carry
        step_model = nnx.merge(
            graphdef, state
        )  # in the loop's own trace (nnx.scan of scanned stacks needs it)
        logits_Bx1xV, cache = step_model.decode(token_B[:, None], cache, p + i - 1, start_B)
        key, sub = jax.random.split(key)
        token_B = jnp.where(done_B, pad_id, sample(logits_Bx1xV[:, 0], sub))
        new_BxN = jax.lax.dynamic_update_slice(new_BxN, token_B[:, None], (jnp.int32(0), i))
        return i + 1, token_B, cache, key, new_BxN, done_B | is_eos(token_B), state

    carry = (jnp.int32(1), token_B, cache, key, new_BxN, is_eos(token_B), state)
    return jax.lax.while_loop(cond, body, carry)[4]


def generate(
    model: nnx.Module,
    tokens_BxL: Any,
    lengths_B: Any = None,
    *,
    max_new_tokens: int,
    padding: str = "right",
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(new_BxN int32, lengths_B): N = max_new_tokens new tokens per row (EOS included, then pad_id) and the
    count of each row's tokens before its EOS (N without one). `lengths_B` None: every prompt fills the row."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if not (hasattr(model, "decode") and hasattr(model, "init_cache")):
        raise ValueError(
            f"{type(model).__name__} has no KV-cache decode (init_cache/decode); generation needs one"
        )
    tokens_BxL = np.asarray(tokens_BxL, np.int32)
    if lengths_B is None:
        lengths_B = np.full((tokens_BxL.shape[0],), tokens_BxL.shape[1], np.int32)
    lengths_B = np.asarray(lengths_B, np.int32)
    tokens_BxP = left_pad(tokens_BxL, lengths_B, padding=padding, pad_id=pad_id)
    graphdef, state = nnx.split(model)
    new_BxN = np.asarray(
        _generate(
            graphdef,
            state,
            jnp.asarray(tokens_BxP),
            jnp.asarray(tokens_BxP.shape[1] - lengths_B, jnp.int32),
            jax.random.key(seed),
            max_new_tokens=max_new_tokens,
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
            eos_id=eos_id,
            pad_id=pad_id,
        )
    )
    if eos_id is None:
        return new_BxN, np.full((new_BxN.shape[0],), max_new_tokens, np.int32)
    hit_BxN = new_BxN == eos_id
    return new_BxN, np.where(hit_BxN.any(axis=1), hit_BxN.argmax(axis=1), max_new_tokens).astype(np.int32)


def generate_ids(model: nnx.Module, prompts: Sequence[Sequence[int]], **kwargs: Any) -> list[list[int]]:
    """`generate` for a list of token-id prompts of any lengths -> each row's new ids before its EOS."""
    lengths_B = np.asarray([len(p) for p in prompts], np.int32)
    tokens_BxL = np.full((len(prompts), int(lengths_B.max())), kwargs.get("pad_id", 0), np.int32)
    for row, p in enumerate(prompts):
        tokens_BxL[row, : len(p)] = p
    new_BxN, n_B = generate(model, tokens_BxL, lengths_B, padding="right", **kwargs)
    return [new_BxN[row, : n_B[row]].tolist() for row in range(len(prompts))]
