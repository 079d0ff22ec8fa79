"""KV-cached generation (lax_pretrain.models.generate) against the uncached forward.

Small float32 models from `llama_config('nano', kind=..., lax=...)` shrunk with `shrink_model` (d=32, 2
layers, 4 heads, rank 8, vocab 61). Tolerance of cached logits vs the full forward: 2e-4 absolute (float32,
a different but mathematically equal attention: masked einsum over the cache vs the causal kernel).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lax_pretrain.bench.models import shrink_model
from lax_pretrain.config import llama_config
from lax_pretrain.models import generate as gen
from lax_pretrain.models.llama import Llama

VOCAB = 61
CASES = {  # name: (kind, lax, num_kv_heads, scan)
    "dense": ("dense", "none", 4, False),
    "svd_kron_gqa": ("svd", "kron", 2, False),
    "cola_kron": ("cola", "kron", 4, False),
    "tt_kron": ("tt", "kron", 4, False),
    "cola_kron_gqa_scan": ("cola", "kron", 1, True),
}


def small_model(kind: str, lax: str, kv_heads: int, scan: bool, *, layers: int = 3) -> Llama:
    cfg = llama_config("nano", kind=kind, lax=lax)
    shrink_model(cfg, d_model=32, num_layers=layers, num_heads=4, rank=8, num_kv_heads=kv_heads, ffn_dim=48)
    m = cfg.model
    m.vocab_size, m.dtype, m.param_dtype, m.scan_layers = VOCAB, "float32", "float32", scan
    return Llama(m, rngs=nnx.Rngs(0))


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, VOCAB, size=n).tolist()


def uncached_greedy(model: Llama, ids: list[int], n: int) -> list[int]:
    fwd = nnx.jit(lambda m, t: m(t)[0, -1])
    out = list(ids)
    for _ in range(n):
        out.append(int(jnp.argmax(fwd(model, jnp.asarray([out], jnp.int32)))))
    return out[len(ids) :]


@pytest.mark.parametrize("case", list(CASES))
def test_cached_greedy_equals_uncached(case):
    model = small_model(*CASES[case])
    ids = prompt(7, 1)
    want = uncached_greedy(model, ids, 12)
    got, n = gen.generate(model, np.asarray([ids]), max_new_tokens=12)
    assert n.tolist() == [12]
    assert got[0].tolist() == want


@pytest.mark.parametrize("case", ["svd_kron_gqa", "cola_kron_gqa_scan"])
def test_cached_logits_equal_full_forward(case):
    model = small_model(*CASES[case])
    ids = jnp.asarray([prompt(9, 2), prompt(9, 3)], jnp.int32)
    full_BxLxV = model(ids)
    cache = model.init_cache(2, 12)
    start = jnp.zeros((2,), jnp.int32)
    pre_BxTxV, cache = model.decode(ids[:, :5], cache, 0, start)
    np.testing.assert_allclose(pre_BxTxV, full_BxLxV[:, :5], atol=2e-4, rtol=0)
    for i in range(5, 9):
        step_Bx1xV, cache = model.decode(ids[:, i : i + 1], cache, i, start)
        np.testing.assert_allclose(step_Bx1xV[:, 0], full_BxLxV[:, i], atol=2e-4, rtol=0)


@pytest.mark.parametrize("padding", gen.PADDINGS)
def test_batched_prompts_match_one_by_one(padding):
    model = small_model(*CASES["svd_kron_gqa"])
    prompts = [prompt(3, 4), prompt(8, 5), prompt(5, 6)]
    alone = [gen.generate(model, np.asarray([p]), max_new_tokens=6)[0][0].tolist() for p in prompts]
    width = max(map(len, prompts))
    tokens = np.zeros((3, width), np.int32)
    for row, p in enumerate(prompts):
        if padding == "right":
            tokens[row, : len(p)] = p
        else:
            tokens[row, width - len(p) :] = p
    got, _ = gen.generate(model, tokens, [len(p) for p in prompts], padding=padding, max_new_tokens=6)
    assert got.tolist() == alone
    assert gen.generate_ids(model, prompts, max_new_tokens=6) == alone


def test_top_k_one_is_greedy_and_seed_reproducible():
    model = small_model(*CASES["cola_kron"])
    tokens = np.asarray([prompt(6, 7), prompt(6, 8)])
    greedy, _ = gen.generate(model, tokens, max_new_tokens=8)
    top1, _ = gen.generate(model, tokens, max_new_tokens=8, temperature=1.0, top_k=1, seed=3)
    assert top1.tolist() == greedy.tolist()
    kw = dict(max_new_tokens=8, temperature=1.5, top_k=20, top_p=0.9)
    a, _ = gen.generate(model, tokens, seed=11, **kw)
    b, _ = gen.generate(model, tokens, seed=11, **kw)
    assert a.tolist() == b.tolist()
    assert ((a >= 0) & (a < VOCAB)).all()


def test_eos_stops_each_row():
    model = small_model(*CASES["dense"])
    tokens = np.asarray([prompt(5, 9), prompt(5, 10)])
    free, _ = gen.generate(model, tokens, max_new_tokens=6)
    eos = int(free[0, 2])  # row 0 meets it at step 2 (or earlier)
    got, n = gen.generate(model, tokens, max_new_tokens=6, eos_id=eos, pad_id=0)
    first = int(np.argmax(free[0] == eos))
    assert n[0] == first and got[0, first] == eos and (got[0, first + 1 :] == 0).all()
    assert got[0, :first].tolist() == free[0, :first].tolist()


def test_sample_logits_top_p_keeps_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]], jnp.float32))
    draws = {
        int(gen.sample_logits(logits, jax.random.key(s), temperature=1.0, top_p=0.7)[0]) for s in range(64)
    }
    assert draws == {0, 1}
