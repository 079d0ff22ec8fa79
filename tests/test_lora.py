"""LoRA, LaX-LoRA and EigenLoRAx wrappers and model surgery: exactness at init, merging, the LaX-LoRA crossing
against numpy, EigenLoRAx in a model (trainable loadings only, zero-shot reproduction), adapter files, errors.

Tiny models (d = 32, 2-3 blocks); forwards run eagerly so that "unchanged" can mean bit-identical.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lax_pretrain.adapters import (
    ADAPTER_PARAMS,
    AdapterSpec,
    EigenLoRALinear,
    Frozen,
    LoRA,
    LoRAParam,
    adapter_state,
    adapters,
    add_adapters,
    choose_k,
    fit_basis,
    load_adapter,
    project,
    projections,
    read_adapter,
    save_adapter,
)
from lax_pretrain.adapters.inject import targets_match
from lax_pretrain.config import from_compact, vit_config
from lax_pretrain.layers import make_linear
from lax_pretrain.models import build

D, FFN, HEADS, VOCAB, LATENT = 32, 48, 4, 61, 8
PROJ = ("q", "k", "v", "o", "gate", "up", "down")


def tiny_llama(arg: str = "", layers: int = 2, d: int = D):
    c = from_compact("llama", f"nano,{arg}" if arg else "nano").model
    c.d_model, c.ffn_dim, c.num_heads, c.num_kv_heads, c.vocab_size, c.num_layers = (
        d,
        FFN,
        HEADS,
        HEADS,
        VOCAB,
        layers,
    )
    c.proj = {n: {"rank": LATENT} for n in PROJ} if c.linear.kind != "dense" else {}  # tt: LATENT is the bond
    return c


def tokens(seed: int = 0, shape=(2, 7)) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


def rand(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def randomize_b(model, seed: int = 0, scale: float = 0.3) -> None:
    """Non-zero B everywhere (a trained adapter), so the adapter actually changes the outputs."""
    for i, (_, m) in enumerate(sorted(adapters(model).items())):
        m.lora_b[...] = scale * jnp.asarray(rand(m.lora_b.shape, seed + 17 * i))


def build_adapted(cfg, spec: AdapterSpec, adapter_seed: int = 100, **kw):
    """The base model of `cfg` (always seed 0) with adapters per `spec`."""
    model = build(cfg, rngs=nnx.Rngs(0))
    return add_adapters(model, spec, rngs=nnx.Rngs(adapter_seed), **kw)


# ----------------------------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize(
    "arg, kind",
    [
        ("", "lora"),
        ("kind=tt", "lora"),
        ("kind=svd,lax=kron", "lax_lora"),
        ("kind=cola,lax=identity", "lax_lora"),
    ],
)
def test_zero_b_leaves_the_base_outputs_bit_identical(arg, kind):
    cfg = tiny_llama(arg, layers=2)
    model = build(cfg, rngs=nnx.Rngs(0))
    x = tokens()
    before = np.asarray(model(x))
    add_adapters(model, AdapterSpec(kind=kind, rank=4, targets="all", gate="kron"), rngs=nnx.Rngs(1))
    assert len(adapters(model)) == 7 * 2
    np.testing.assert_array_equal(np.asarray(model(x)), before)
    randomize_b(model)
    assert np.abs(np.asarray(model(x)) - before).max() > 1e-3  # and the adapters are live


def test_targets_pick_q_and_v_by_default_and_regexes_match_whole_path_tails():
    model = build(tiny_llama(layers=3), rngs=nnx.Rngs(0))
    add_adapters(model, AdapterSpec(), rngs=nnx.Rngs(1))
    assert sorted(adapters(model)) == sorted(
        f"blocks.{b}.attn.{p}" for b in ("first", "rest.0", "rest.1") for p in ("q", "v")
    )
    model = build(tiny_llama(layers=3), rngs=nnx.Rngs(0))
    add_adapters(model, AdapterSpec(targets=r"rest\.1\.mlp\..*|first\.attn\.o"), rngs=nnx.Rngs(1))
    assert sorted(adapters(model)) == [
        "blocks.first.attn.o",
        "blocks.rest.1.mlp.down",
        "blocks.rest.1.mlp.gate",
        "blocks.rest.1.mlp.up",
    ]
    vit_cfg = vit_config("tiny").model
    vit_cfg.update(d_model=D, mlp_dim=2 * D, num_layers=2)
    vit = nnx.eval_shape(lambda: build(vit_cfg, rngs=nnx.Rngs(0)))
    add_adapters(vit, AdapterSpec(targets="fc1|fc2"), rngs=nnx.Rngs(1))
    assert len(adapters(vit)) == 2 * vit.cfg.num_layers
    assert all(p.endswith(("fc1", "fc2")) for p in adapters(vit))


def test_a_init_and_scale():
    base = make_linear(256, 64, {"kind": "dense"}, rngs=nnx.Rngs(0))
    lora = LoRA(base, 8, alpha=16, rngs=nnx.Rngs(1))
    a = np.asarray(lora.lora_a[...])
    assert lora.scale == 2.0 and np.all(np.asarray(lora.lora_b[...]) == 0)
    assert np.abs(a).max() <= 1 / 16 and a.std() > 0.5 / 16 / np.sqrt(3)  # U(-1/sqrt(d_in), 1/sqrt(d_in))
    g = np.asarray(LoRA(base, 8, init="gaussian", rngs=nnx.Rngs(1)).lora_a[...])
    assert abs(g.std() - 1 / 8) < 0.01  # N(0, 1/r^2)
    assert isinstance(lora.lora_a, LoRAParam) and isinstance(lora.lora_a, nnx.Param)
    assert lora.param_count == 8 * (256 + 64)


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "dense", "use_bias": True},
        {"kind": "svd", "rank": 6},
        {"kind": "tt", "tt_in_modes": [4, 6], "tt_out_modes": [4, 5], "tt_ranks": [1, 4, 6, 5, 1]},
    ],
)
def test_merge_reproduces_the_adapted_outputs(spec):
    base = make_linear(24, 20, spec, rngs=nnx.Rngs(0))
    lora = LoRA(base, 4, alpha=8, rngs=nnx.Rngs(1))
    lora.lora_b[...] = jnp.asarray(rand((4, 20), 2))
    x = jnp.asarray(rand((3, 5, 24), 3))
    y, latent = lora(x)
    bias = np.asarray(base.bias[...]) if spec.get("use_bias") else 0.0
    np.testing.assert_allclose(np.asarray(x) @ np.asarray(lora.merge()) + bias, y, atol=1e-5)
    if spec["kind"] == "dense":
        assert latent is None
    else:  # plain LoRA hands the base's latent on unchanged
        np.testing.assert_array_equal(latent, base(x)[1])
    a, b = map(np.asarray, (lora.lora_a[...], lora.lora_b[...]))
    np.testing.assert_allclose(lora.merge(), np.asarray(base.materialize()) + 2.0 * a @ b, atol=1e-5)


def test_merge_refuses_maps_without_one_dense_kernel():
    cola = LoRA(make_linear(16, 16, {"kind": "cola", "rank": 4}, rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="CoLA"):
        cola.merge()
    crossed = LoRA(
        make_linear(16, 16, {"kind": "dense"}, rngs=nnx.Rngs(0)), 2, lax=True, first=False, rngs=nnx.Rngs(1)
    )
    with pytest.raises(ValueError, match="LaX-LoRA"):
        crossed.merge()


# ----------------------------------------------------------------------------------------------- LaX-LoRA


@pytest.mark.parametrize("gate", ["identity", "kron", "dense"])
@pytest.mark.parametrize("lax_latent", ["own", "crossed"])
def test_lax_lora_crossing_matches_numpy(gate, lax_latent):
    """Three blocks of one projection: y_l = x_l W_l + s (x_l A_l + gate_l(h_{l-1})) B_l."""
    d_in, d_out, r, s = 12, 10, 4, 1.5
    bases = [make_linear(d_in, d_out, {"kind": "dense"}, rngs=nnx.Rngs(i)) for i in range(3)]
    layers = [
        LoRA(
            b, r, alpha=s * r, lax=True, first=i == 0, gate=gate, lax_latent=lax_latent, rngs=nnx.Rngs(10 + i)
        )
        for i, b in enumerate(bases)
    ]
    assert layers[0].gate is None and (layers[1].gate is None) == (gate == "identity")
    for i, layer in enumerate(layers):
        layer.lora_b[...] = jnp.asarray(rand((r, d_out), 20 + i))
        if gate == "dense" and layer.gate is not None:
            layer.gate.bias[...] = jnp.asarray(rand((r,), 30 + i))
    xs = [rand((5, d_in), 40 + i) for i in range(3)]

    def np_gate(layer, h):
        if layer.gate is None:
            return h
        g = layer.gate
        if gate == "kron":  # z -> z @ kron(g1, g0)
            return h @ np.kron(np.asarray(g.g1[...], np.float64), np.asarray(g.g0[...], np.float64))
        return h @ np.asarray(g.kernel[...], np.float64) + np.asarray(g.bias[...], np.float64)

    latent, h_prev = None, None
    for i, (layer, x) in enumerate(zip(layers, xs)):
        y, latent = layer(jnp.asarray(x), latent)
        w, a, b = (
            np.asarray(v, np.float64) for v in (bases[i].kernel[...], layer.lora_a[...], layer.lora_b[...])
        )
        h = x @ a
        u = h if i == 0 else h + np_gate(layer, h_prev)
        np.testing.assert_allclose(y, x @ w + s * u @ b, rtol=1e-5, atol=1e-5)
        assert latent["base"] is None  # dense base: no base latent
        h_prev = u if lax_latent == "crossed" else h
        np.testing.assert_allclose(latent["lora"], h_prev, rtol=1e-5, atol=1e-5)


def test_lax_lora_block_1_depends_on_block_0s_a_only_through_the_crossing():
    cfg = tiny_llama(layers=2)
    x = tokens()

    def logits_after_moving_block0_a(kind):
        model = build_adapted(cfg, AdapterSpec(kind=kind, rank=4, targets="q"))
        randomize_b(model)
        first = adapters(model)["blocks.first.attn.q"]
        first.lora_b[...] = jnp.zeros_like(first.lora_b[...])  # block 0's own delta is off: only the crossing
        before = np.asarray(model(x))
        first.lora_a[...] = first.lora_a[...] + 0.5
        return before, np.asarray(model(x))

    before, after = logits_after_moving_block0_a("lax_lora")
    assert np.abs(after - before).max() > 1e-3
    before, after = logits_after_moving_block0_a("lora")
    np.testing.assert_array_equal(after, before)


def test_lax_lora_targets_must_cover_a_run_of_blocks_to_the_last():
    model = build(tiny_llama(layers=3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="contiguous run of blocks ending with the last block"):
        add_adapters(model, AdapterSpec(kind="lax_lora", targets=r"(first|rest\.0)\.attn\.q"))
    add_adapters(model, AdapterSpec(kind="lax_lora", targets=r"rest\.\d+\.attn\.q"))  # blocks 1, 2: fine
    found = adapters(model)
    assert found["blocks.rest.0.attn.q"].first and not found["blocks.rest.1.attn.q"].first
    model(tokens())


# ----------------------------------------------------------------------------------------------- EigenLoRAx


def planted_adapters(cfg, n: int, rank: int, dim: int, targets: str, seed: int = 0):
    """n adapters whose rank vectors lie in a planted `dim`-dimensional subspace per module, so the basis of
    those n adapters (K = dim) spans every one of them exactly."""
    rng = np.random.default_rng(seed)
    sig = {
        p: (m.d_in, m.d_out)
        for p, m in projections(nnx.eval_shape(lambda: build(cfg, rngs=nnx.Rngs(0)))).items()
        if targets_match(targets, p)
    }
    spans = {
        p: (np.linalg.qr(rng.normal(size=(i, dim)))[0], np.linalg.qr(rng.normal(size=(o, dim)))[0])
        for p, (i, o) in sig.items()
    }
    return [
        {
            p: (
                (pa @ rng.normal(size=(dim, rank))).astype(np.float32),
                (0.3 * (pb @ rng.normal(size=(dim, rank))).T).astype(np.float32),
            )
            for p, (pa, pb) in spans.items()
        }
        for _ in range(n)
    ]


def lora_model_with(cfg, adapter, spec: AdapterSpec):
    """The base model (seed 0) with LoRA adapters set to `adapter` (A, s B)."""
    model = build_adapted(cfg, spec)
    for p, m in adapters(model).items():
        m.lora_a[...] = jnp.asarray(adapter[p][0])
        m.lora_b[...] = jnp.asarray(adapter[p][1]) / m.scale
    return model


def test_eigenlorax_in_a_model_trains_only_loadings_and_reproduces_in_basis_adapters_zero_shot():
    cfg, rank, dim = tiny_llama("kind=svd", layers=2), 2, 5
    lora_spec = AdapterSpec(rank=rank, alpha=4)
    train_adapters = planted_adapters(cfg, n=6, rank=rank, dim=dim, targets=lora_spec.targets)
    k = choose_k(train_adapters, 0.9999)
    assert k == dim
    basis = fit_basis(train_adapters, k)

    # adapter_state of a LoRA model is EigenLoRAx's adapter format: (A, s B)
    lora_model = lora_model_with(cfg, train_adapters[3], lora_spec)
    for p, (a, sb) in adapter_state(lora_model).items():
        np.testing.assert_allclose(a, train_adapters[3][p][0])
        np.testing.assert_allclose(sb, train_adapters[3][p][1], rtol=1e-6)

    eig_spec = AdapterSpec(kind="eigenlorax", rank=rank)
    zero_shot = build_adapted(cfg, eig_spec, basis=basis, loadings=project(basis, train_adapters[3]))
    x = tokens()
    np.testing.assert_allclose(zero_shot(x), lora_model(x), atol=1e-5)

    base_logits = np.asarray(build(cfg, rngs=nnx.Rngs(0))(x))
    starts_at_base = build_adapted(
        cfg, AdapterSpec(kind="eigenlorax", rank=rank, eigen_init="zero_b"), basis=basis
    )
    np.testing.assert_array_equal(np.asarray(starts_at_base(x)), base_logits)
    fresh = build_adapted(cfg, eig_spec, basis=basis)
    assert np.abs(np.asarray(fresh(x)) - base_logits).max() > 1e-3  # the reference's U(-0.5, 0.5) loadings
    trainable = nnx.state(fresh, ADAPTER_PARAMS)
    leaves = {tuple(map(str, path)) for path, _ in nnx.to_flat_state(trainable)}
    assert {path[-2:] for path in leaves} == {("eigenlora", "alpha_A"), ("eigenlora", "alpha_B")}
    assert len(leaves) == 2 * len(basis.modules)
    assert all(var.shape == (k, rank) for _, var in nnx.to_flat_state(trainable))
    assert len(nnx.to_flat_state(nnx.state(fresh, Frozen))) == 2 * len(basis.modules)
    assert isinstance(adapters(fresh)["blocks.first.attn.q"], EigenLoRALinear)

    graphdef, params, rest = nnx.split(fresh, ADAPTER_PARAMS, ...)

    def loss(params):
        return jnp.mean(nnx.merge(graphdef, params, rest)(x) ** 2)

    grads = jax.grad(loss)(params)
    assert all(np.abs(np.asarray(g.get_value())).max() > 0 for _, g in nnx.to_flat_state(grads))


# ----------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("kind", ["lora", "lax_lora", "eigenlorax"])
def test_adapter_files_round_trip(tmp_path, kind):
    cfg = tiny_llama("kind=svd,lax=identity", layers=3)
    spec = AdapterSpec(kind=kind, rank=2, gate="kron", targets="q|v|down")
    kw = {}
    if kind == "eigenlorax":
        spec = AdapterSpec(kind=kind, rank=3, targets="q|v")
        kw["basis"] = fit_basis(planted_adapters(cfg, 4, rank=2, dim=3, targets="q|v"), 3)
    model = build_adapted(cfg, spec, **kw)
    if kind != "eigenlorax":
        randomize_b(model)
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, model, spec, meta={"task": "t"})
    read_spec, header, tensors = read_adapter(path)
    assert read_spec == spec and header["meta"] == {"task": "t"}
    x = tokens()
    fresh = build(cfg, rngs=nnx.Rngs(0))  # the same base, no adapters: they come from the file
    load_adapter(path, fresh)
    np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(model(x)))
    # into a model that already has (other) adapters of the same layout: values are replaced
    other = build_adapted(cfg, spec, adapter_seed=7, **kw)
    assert np.abs(np.asarray(other(x)) - np.asarray(model(x))).max() > 1e-4
    load_adapter(path, other)
    np.testing.assert_array_equal(np.asarray(other(x)), np.asarray(model(x)))


def test_mismatched_adapter_files_are_clear_errors(tmp_path):
    cfg = tiny_llama(layers=2)
    path = tmp_path / "qv_rank4.safetensors"
    save_adapter(path, build_adapted(cfg, AdapterSpec(rank=4)), AdapterSpec(rank=4))
    with pytest.raises(ValueError, match="rank 4.*ranks"):
        load_adapter(path, build_adapted(cfg, AdapterSpec(rank=8)))
    with pytest.raises(ValueError, match="mismatched module sets"):
        load_adapter(path, build_adapted(cfg, AdapterSpec(rank=4, targets="q")))
    with pytest.raises(ValueError, match="adapter kind"):
        load_adapter(path, build_adapted(cfg, AdapterSpec(kind="lax_lora", rank=4)))
    with pytest.raises(ValueError, match=r"does not fit this model.*\(d_in, d_out\)"):
        load_adapter(path, build(tiny_llama(layers=2, d=16), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="modules missing from the model"):
        load_adapter(path, build(tiny_llama(layers=1), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="rank 8.*ranks"):
        save_adapter(path, build_adapted(cfg, AdapterSpec(rank=4)), AdapterSpec(rank=8))
    # adapters of different module sets or ranks cannot form one basis
    qv = adapter_state(build_adapted(cfg, AdapterSpec(rank=4)))
    q_only = adapter_state(build_adapted(cfg, AdapterSpec(rank=4, targets="q")))
    rank2 = adapter_state(build_adapted(cfg, AdapterSpec(rank=2)))
    with pytest.raises(ValueError, match="missing modules"):
        fit_basis([qv, q_only], 2)
    with pytest.raises(ValueError, match="rank"):
        fit_basis([qv, rank2], 2)


def test_basis_for_another_model_is_a_signature_error():
    small = tiny_llama(layers=2)
    basis = fit_basis(planted_adapters(small, 3, rank=2, dim=3, targets="q|v"), 2)
    for other, targets in (
        (tiny_llama(layers=2, d=16), "q|v"),
        (tiny_llama(layers=3), "q|v"),
        (small, "q|k|v"),
    ):
        with pytest.raises(ValueError, match="model signature mismatch"):
            build_adapted(other, AdapterSpec(kind="eigenlorax", rank=2, targets=targets), basis=basis)
    with pytest.raises(ValueError, match="needs a basis"):
        build_adapted(small, AdapterSpec(kind="eigenlorax", rank=2))


def test_bad_models_and_specs_are_clear_errors():
    cfg = tiny_llama(layers=3)
    cfg.scan_layers = True
    with pytest.raises(ValueError, match="model.scan_layers=True"):
        build_adapted(cfg, AdapterSpec())
    cfg.scan_layers = False
    with pytest.raises(ValueError, match="selects no projection"):
        build_adapted(cfg, AdapterSpec(targets="wq"))
    model = build_adapted(cfg, AdapterSpec())
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(model, AdapterSpec())
    for bad, key in (
        ({"kind": "qlora"}, "adapter.kind"),
        ({"rank": 0}, "adapter.rank"),
        ({"gate": "mlp"}, "adapter.gate"),
        ({"targets": "("}, "adapter.targets"),
        ({"dropout": 1.0}, "adapter.dropout"),
    ):
        with pytest.raises(ValueError, match=key):
            AdapterSpec(**bad)
    with pytest.raises(ValueError, match="adapter.ranks"):
        AdapterSpec.from_dict({"ranks": 4})
    crossed = LoRA(
        make_linear(8, 8, {"kind": "dense"}, rngs=nnx.Rngs(0)), 2, lax=True, first=False, rngs=nnx.Rngs(0)
    )
    with pytest.raises(ValueError, match="needs latent_in"):
        crossed(jnp.ones((2, 8)), None)


def test_dropout_only_on_the_adapter_input():
    base = make_linear(16, 8, {"kind": "dense"}, rngs=nnx.Rngs(0))
    lora = LoRA(base, 4, dropout=0.5, rngs=nnx.Rngs(params=1, dropout=2))
    x = jnp.asarray(rand((6, 16), 0))
    np.testing.assert_array_equal(lora(x)[0], base(x)[0])  # B = 0: dropout cannot leak into the base path
    lora.lora_b[...] = jnp.asarray(rand((4, 8), 1))
    a, b = lora(x)[0], lora(x)[0]
    assert not np.allclose(a, b)  # a fresh mask per call
    lora.dropout.deterministic = True
    np.testing.assert_allclose(lora(x)[0], np.asarray(x) @ np.asarray(lora.merge()), atol=1e-5)


def test_llama_adapter_dropout_only_in_train_mode():
    """The decoder's `train` flag switches adapter dropout: off by default (eval, sampling), on in the loss."""
    model = build_adapted(tiny_llama(), AdapterSpec(kind="lora", rank=4, dropout=0.5))
    randomize_b(model)
    x = tokens()
    eval_a, eval_b = np.asarray(model(x)), np.asarray(model(x, train=False))
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a, train_b = np.asarray(model(x, train=True)), np.asarray(model(x, train=True))
    assert not np.allclose(train_a, eval_a) and not np.allclose(train_a, train_b)
    np.testing.assert_array_equal(np.asarray(model(x)), eval_a)  # and back off
