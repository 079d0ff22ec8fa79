"""EigenLoRAx core: basis fitting, projection/reconstruction, forwards, multi-task serving, files, errors.

Everything is checked against independent float64 numpy computations on random (never zero) inputs.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lax_pretrain.adapters import (
    Basis,
    EigenLoRA,
    Frozen,
    Loadings,
    MultiTaskEigenLoRA,
    augment,
    choose_k,
    eigenlora_delta,
    fit_basis,
    init_loadings,
    load_basis,
    load_loadings,
    lora_serving_bytes,
    project,
    reconstruct,
    save_basis,
    save_loadings,
    serve_delta,
    serving_bytes,
)

SIGNATURE = {"blocks.0.attn.q": (12, 10), "blocks.0.attn.v": (12, 14)}
RANK = 3


def random_adapter(rng: np.random.Generator, signature=SIGNATURE, rank=RANK):
    return {
        p: (
            rng.normal(size=(d_in, rank)).astype(np.float32),
            rng.normal(size=(rank, d_out)).astype(np.float32),
        )
        for p, (d_in, d_out) in signature.items()
    }


def random_adapters(n: int, seed: int = 0, **kw):
    rng = np.random.default_rng(seed)
    return [random_adapter(rng, **kw) for _ in range(n)]


def centred(m: np.ndarray) -> np.ndarray:
    return m - m.mean(axis=1, keepdims=True)


def sample_matrices(adapters, path):
    m_a = np.concatenate([np.asarray(a[path][0], np.float64) for a in adapters], 1)
    m_b = np.concatenate([np.asarray(a[path][1], np.float64).T for a in adapters], 1)
    return m_a, m_b


def assert_orthonormal(c, atol=1e-5):
    c = np.asarray(c, np.float64)
    np.testing.assert_allclose(c.T @ c, np.eye(c.shape[1]), atol=atol)


# ----------------------------------------------------------------------------------------------- fitting


def test_components_are_orthonormal_and_match_numpy_svd():
    adapters = random_adapters(4)  # N r = 12 samples, rank of centred samples 11 >= k
    basis = fit_basis(adapters, k=6)
    assert basis.k == 6 and basis.modules == tuple(SIGNATURE) and dict(basis.model_signature) == SIGNATURE
    for p in SIGNATURE:
        for c, m in zip((basis.C_A[p], basis.C_B[p]), sample_matrices(adapters, p), strict=True):
            assert c.dtype == jnp.float32 and c.shape == (m.shape[0], 6)
            assert_orthonormal(c)
            u, _, _ = np.linalg.svd(centred(m), full_matrices=False)
            signs = np.sign(np.sum(np.asarray(c) * u[:, :6], axis=0))  # components are defined up to sign
            np.testing.assert_allclose(np.asarray(c) * signs, u[:, :6], atol=1e-5)
    assert all(n == (0, 0) for n in basis.n_random.values())
    # a Basis is a pytree with hashable metadata, so it can be passed through jax.jit
    same = jax.jit(lambda b: b)(basis)
    assert same.model_signature == basis.model_signature
    np.testing.assert_array_equal(same.C_B["blocks.0.attn.v"], basis.C_B["blocks.0.attn.v"])


def test_explained_variance_is_monotone_matches_numpy_and_reaches_one():
    adapters = random_adapters(3)
    basis = fit_basis(adapters, k=4)
    for p in SIGNATURE:
        for rho, m in zip((basis.rho_A[p], basis.rho_B[p]), sample_matrices(adapters, p), strict=True):
            s = np.linalg.svd(centred(m), compute_uv=False)
            expected = np.cumsum(s**2) / np.sum(s**2)
            assert rho.shape == (min(m.shape),)  # every available k, not only the fitted one
            np.testing.assert_allclose(rho, expected, rtol=1e-6)
            assert np.all(np.diff(np.asarray(rho)) >= 0)
            assert rho[-1] == 1.0
            np.testing.assert_allclose(rho[min(m.shape[1] - 1, m.shape[0]) - 1], 1.0, atol=1e-6)  # full rank
    rho_a, rho_b = basis.explained_variance(2)[next(iter(SIGNATURE))]
    assert rho_a == pytest.approx(float(basis.rho_A[next(iter(SIGNATURE))][1]))
    assert basis.explained_variance(10_000)[next(iter(SIGNATURE))] == (1.0, 1.0)


def test_components_beyond_the_data_rank_are_a_flagged_random_extension():
    adapters = random_adapters(1)  # one adapter: N r = 3 samples, centred rank 2
    with pytest.warns(UserWarning, match="random orthonormal"):
        basis = fit_basis(adapters, k=3)
    for p in SIGNATURE:
        assert basis.n_random[p] == (1, 1)
        for c, m in zip((basis.C_A[p], basis.C_B[p]), sample_matrices(adapters, p), strict=True):
            assert_orthonormal(c)
            u, _, _ = np.linalg.svd(centred(m), full_matrices=False)
            np.testing.assert_allclose(
                np.abs(np.sum(np.asarray(c)[:, :2] * u[:, :2], axis=0)), 1.0, atol=1e-5
            )


def test_planted_subspace_is_recovered_and_choose_k_finds_its_dimension():
    rng = np.random.default_rng(1)
    rank, planted = 4, 4
    p_a, _ = np.linalg.qr(rng.normal(size=(32, planted)))
    p_b, _ = np.linalg.qr(rng.normal(size=(24, planted)))
    adapters = [
        {
            "m": (
                p_a @ rng.normal(size=(planted, rank)) + 1e-3 * rng.normal(size=(32, rank)),
                (p_b @ rng.normal(size=(planted, rank)) + 1e-3 * rng.normal(size=(24, rank))).T,
            )
        }
        for _ in range(10)
    ]
    basis = fit_basis(adapters, k=planted)
    for c, p in ((basis.C_A["m"], p_a), (basis.C_B["m"], p_b)):
        cosines = np.linalg.svd(p.T @ np.asarray(c, np.float64), compute_uv=False)  # cos of principal angles
        assert cosines.min() > 0.9999
    assert choose_k(adapters, 0.999) == planted
    assert choose_k(fit_basis(adapters, k=8), 0.999) == planted
    assert choose_k(adapters, 0.1) == 1


def test_augment_keeps_orthonormality_and_the_original_span():
    basis = fit_basis(random_adapters(3), k=4)
    bigger = augment(basis, 5, seed=0)
    assert bigger.k == 9
    for p in SIGNATURE:
        assert bigger.n_random[p] == (5, 5)
        for c, c0 in ((bigger.C_A[p], basis.C_A[p]), (bigger.C_B[p], basis.C_B[p])):
            assert_orthonormal(c)
            np.testing.assert_array_equal(c[:, :4], c0)
    again = augment(basis, 5, seed=0)
    np.testing.assert_array_equal(again.C_A["blocks.0.attn.q"], bigger.C_A["blocks.0.attn.q"])
    assert not np.allclose(augment(basis, 5, seed=1).C_A["blocks.0.attn.q"], bigger.C_A["blocks.0.attn.q"])


# ----------------------------------------------------------------------------------------------- projection


def test_adapter_in_the_span_is_reconstructed_exactly():
    rng = np.random.default_rng(2)
    basis = fit_basis(random_adapters(4), k=5)
    inside = {
        p: (
            np.asarray(basis.C_A[p]) @ rng.normal(size=(5, 2)),
            (np.asarray(basis.C_B[p]) @ rng.normal(size=(5, 2))).T,
        )
        for p in SIGNATURE
    }
    loadings = project(basis, inside)
    assert loadings.alpha_A["blocks.0.attn.q"].shape == (5, 2)  # a new task may use another rank
    for p, (a_hat, b_hat) in reconstruct(basis, loadings).items():
        np.testing.assert_allclose(a_hat, inside[p][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b_hat, inside[p][1], rtol=1e-5, atol=1e-6)


def test_reconstruction_error_is_the_residual_orthogonal_to_the_span():
    basis = fit_basis(random_adapters(4), k=5)
    adapter = random_adapters(1, seed=9)[0]
    for p, (a_hat, b_hat) in reconstruct(basis, project(basis, adapter)).items():
        a, b = (np.asarray(x, np.float64) for x in adapter[p])
        for c, target, approx in ((basis.C_A[p], a, a_hat), (basis.C_B[p], b.T, np.asarray(b_hat).T)):
            # least squares residual: the part of each rank vector the span cannot express
            _, residual_sq, _, _ = np.linalg.lstsq(np.asarray(c, np.float64), target, rcond=None)
            error = np.linalg.norm(target - np.asarray(approx, np.float64))
            np.testing.assert_allclose(error, np.sqrt(residual_sq.sum()), rtol=1e-4)


def test_unwind_basis_and_loadings():
    adapters = random_adapters(5)
    basis = fit_basis(adapters, k=3, unwind=True)
    (d_in, d_out) = SIGNATURE["blocks.0.attn.q"]
    assert basis.unwind and basis.C_A["blocks.0.attn.q"].shape == (d_in * RANK, 3)
    assert basis.C_B["blocks.0.attn.q"].shape == (RANK * d_out, 3)
    flat = np.stack([np.asarray(a["blocks.0.attn.q"][0], np.float64).reshape(-1) for a in adapters], 1)
    u, _, _ = np.linalg.svd(centred(flat), full_matrices=False)
    np.testing.assert_allclose(
        np.abs(np.sum(np.asarray(basis.C_A["blocks.0.attn.q"]) * u[:, :3], 0)), 1, atol=1e-5
    )
    # an adapter that is a combination of components comes back exactly, loadings are (K, 1)
    rng = np.random.default_rng(3)
    inside = {
        p: (
            (np.asarray(basis.C_A[p]) @ rng.normal(size=3)).reshape(d_i, RANK),
            (np.asarray(basis.C_B[p]) @ rng.normal(size=3)).reshape(RANK, d_o),
        )
        for p, (d_i, d_o) in SIGNATURE.items()
    }
    loadings = project(basis, inside)
    assert loadings.alpha_A["blocks.0.attn.q"].shape == (3, 1)
    for p, (a_hat, b_hat) in reconstruct(basis, loadings).items():
        np.testing.assert_allclose(a_hat, inside[p][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b_hat, inside[p][1], rtol=1e-5, atol=1e-6)
    # the module materialises the factors
    module = EigenLoRA.from_basis(basis, "blocks.0.attn.q", RANK, loadings=loadings)
    x = rng.normal(size=(2, 4, d_in)).astype(np.float32)
    np.testing.assert_allclose(
        module(jnp.asarray(x)),
        x @ inside["blocks.0.attn.q"][0] @ inside["blocks.0.attn.q"][1],
        rtol=1e-4,
        atol=1e-4,
    )
    assert init_loadings(basis, RANK, seed=0).alpha_B["blocks.0.attn.v"].shape == (3, 1)


# ----------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("k, r", [(6, 2), (2, 5)])  # both groupings: K >= r folds A_hat, K < r projects first
def test_eigenlora_delta_matches_dense_numpy(k, r):
    rng = np.random.default_rng(4)
    c_a, _ = np.linalg.qr(rng.normal(size=(12, k)))
    c_b, _ = np.linalg.qr(rng.normal(size=(10, k)))
    alpha_a, alpha_b = rng.uniform(-0.5, 0.5, size=(2, k, r))
    x = rng.normal(size=(2, 3, 12))
    expected = x @ (c_a @ alpha_a) @ (c_b @ alpha_b).T
    got = eigenlora_delta(*(jnp.asarray(v, jnp.float32) for v in (x, c_a, c_b, alpha_a, alpha_b)))
    assert got.shape == (2, 3, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_eigenlora_module_trains_only_the_loadings():
    basis = fit_basis(random_adapters(4), k=5)
    module = EigenLoRA.from_basis(basis, "blocks.0.attn.v", rank=2, rngs=nnx.Rngs(0))
    params = nnx.state(module, nnx.Param)
    assert set(params.keys()) == {"alpha_A", "alpha_B"}
    assert params["alpha_A"].shape == (5, 2) and params["alpha_B"].shape == (5, 2)
    assert set(nnx.state(module, Frozen).keys()) == {"C_A", "C_B"}
    a = np.asarray(module.alpha_A[...])
    assert a.min() >= -0.5 and a.max() < 0.5 and a.std() > 0.1  # U(-0.5, 0.5)

    x = jnp.asarray(np.random.default_rng(5).normal(size=(3, 12)), jnp.float32)
    np.testing.assert_allclose(
        module(x),
        eigenlora_delta(
            x,
            basis.C_A["blocks.0.attn.v"],
            basis.C_B["blocks.0.attn.v"],
            module.alpha_A[...],
            module.alpha_B[...],
        ),
        atol=1e-6,
    )
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(module)
    assert set(grads.keys()) == {"alpha_A", "alpha_B"}


def test_warm_start_from_projection_reproduces_the_reconstructed_adapter():
    basis = fit_basis(random_adapters(4), k=6)
    adapter = random_adapters(1, seed=7)[0]
    loadings = project(basis, adapter)
    a_hat, b_hat = reconstruct(basis, loadings)["blocks.0.attn.q"]
    module = EigenLoRA.from_basis(basis, "blocks.0.attn.q", RANK, loadings=loadings)
    x = jnp.asarray(np.random.default_rng(8).normal(size=(4, 12)), jnp.float32)
    np.testing.assert_allclose(module(x), x @ a_hat @ b_hat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(module.factors()[0], a_hat, atol=1e-6)


def test_mixed_task_batch_equals_per_task_forward():
    basis = fit_basis(random_adapters(4), k=6)
    path, rank, n_tasks = "blocks.0.attn.v", 2, 3
    tasks = [init_loadings(basis, rank, seed=s) for s in range(n_tasks)]
    task_ids = jnp.asarray([2, 0, 1, 2, 0])
    x = jnp.asarray(np.random.default_rng(6).normal(size=(5, 7, 12)), jnp.float32)
    served = MultiTaskEigenLoRA.from_basis(basis, path, tasks)
    got = nnx.jit(lambda m, x, ids: m(x, ids))(served, x, task_ids)
    for row, t in enumerate(np.asarray(task_ids)):
        single = EigenLoRA.from_basis(basis, path, rank, loadings=tasks[t])
        np.testing.assert_allclose(got[row], single(x[row]), atol=1e-5)
    assert set(nnx.state(served, nnx.Param).keys()) == {"alpha_A", "alpha_B"}
    # out-of-range task ids are visible (NaN), not silently clamped to the last task
    bad = serve_delta(
        x,
        jnp.asarray([0, 0, 0, 0, n_tasks]),
        served.C_A[...],
        served.C_B[...],
        served.alpha_A[...],
        served.alpha_B[...],
    )
    assert np.isnan(np.asarray(bad[-1])).all() and np.isfinite(np.asarray(bad[:-1])).all()


def test_memory_accounting():
    basis = fit_basis(random_adapters(4), k=6)
    shared = sum((d_in + d_out) * 6 for d_in, d_out in SIGNATURE.values())
    assert serving_bytes(basis, n_tasks=10, rank=2) == 4 * (shared + 10 * len(SIGNATURE) * 2 * 6 * 2)
    assert lora_serving_bytes(SIGNATURE, n_tasks=10, rank=2) == 4 * 10 * sum(
        (a + b) * 2 for a, b in SIGNATURE.values()
    )


# ----------------------------------------------------------------------------------------------- files


def test_basis_and_loadings_files_round_trip_exactly(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        basis = augment(fit_basis(random_adapters(2), k=6), 2, seed=0)
    save_basis(tmp_path / "basis.safetensors", basis)
    loaded = load_basis(tmp_path / "basis.safetensors")
    assert isinstance(loaded, Basis)
    assert (loaded.model_signature, loaded.rank, loaded.unwind, loaded.n_random, loaded.k) == (
        basis.model_signature,
        basis.rank,
        basis.unwind,
        basis.n_random,
        basis.k,
    )
    for a, b in zip(jax.tree.leaves(basis), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(basis) == jax.tree.structure(loaded)

    loadings = init_loadings(basis, 4, seed=3)
    save_loadings(tmp_path / "task.safetensors", loadings, {"task": "sst2", "step": 100})
    got, meta = load_loadings(tmp_path / "task.safetensors")
    assert meta == {"task": "sst2", "step": 100} and isinstance(got, Loadings)
    for a, b in zip(jax.tree.leaves(loadings), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="expected 'eigenlorax.basis'"):
        load_basis(tmp_path / "task.safetensors")


def test_basis_for_another_model_is_a_clear_error():
    basis = fit_basis(random_adapters(3), k=4)
    other_shapes = random_adapters(1, signature={"blocks.0.attn.q": (12, 10), "blocks.0.attn.v": (16, 14)})[0]
    with pytest.raises(ValueError, match=r"model signature mismatch.*blocks.0.attn.v"):
        project(basis, other_shapes)
    other_modules = random_adapters(1, signature={"blocks.0.attn.q": (12, 10), "blocks.1.attn.q": (12, 10)})[
        0
    ]
    with pytest.raises(
        ValueError, match=r"model signature mismatch.*missing.*blocks.0.attn.v.*blocks.1.attn.q"
    ):
        project(basis, other_modules)
    with pytest.raises(ValueError, match="model signature mismatch"):
        basis.check_signature({"blocks.0.attn.q": (12, 10)})
    basis.check_signature(SIGNATURE)


# ----------------------------------------------------------------------------------------------- errors


def _drop_module(adapters):
    adapters[1] = {"blocks.0.attn.q": adapters[1]["blocks.0.attn.q"]}
    return adapters


def _other_rank(adapters):
    adapters[1] = random_adapter(np.random.default_rng(0), rank=RANK + 1)
    return adapters


def _other_shape(adapters):
    adapters[2] = random_adapter(
        np.random.default_rng(0), signature={**SIGNATURE, "blocks.0.attn.v": (12, 15)}
    )
    return adapters


def _inner_rank_mismatch(adapters):
    a, b = adapters[0]["blocks.0.attn.q"]
    adapters[0]["blocks.0.attn.q"] = (a, b[:2])
    return adapters


def _non_finite(adapters):
    adapters[0]["blocks.0.attn.q"][0][0, 0] = np.nan
    return adapters


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (_drop_module, r"adapter 1 does not match adapter 0.*missing modules \['blocks.0.attn.v'\]"),
        (_other_rank, "adapter 1 has rank 4"),
        (_other_shape, r"adapter 2 does not match.*\(12, 14\), \(12, 15\)"),
        (_inner_rank_mismatch, "rank mismatch inside the adapter"),
        (_non_finite, "non-finite"),
    ],
)
def test_bad_adapter_lists_are_rejected(corrupt, match):
    with pytest.raises(ValueError, match=match):
        fit_basis(corrupt(random_adapters(3)), k=2)


def test_bad_k_and_empty_lists_are_rejected():
    adapters = random_adapters(2)  # N r = 6
    with pytest.raises(ValueError, match="empty list"):
        fit_basis([], k=2)
    with pytest.raises(ValueError, match=r"k = 7 is larger than the available N r"):
        fit_basis(adapters, k=7)
    with pytest.raises(ValueError, match=r"k = 3 is larger than the available N \(the number of adapters"):
        fit_basis(adapters, k=3, unwind=True)
    with pytest.raises(ValueError, match="k must be >= 1"):
        fit_basis(adapters, k=0)
    with pytest.raises(ValueError, match="exceeds the component dimension 10"):
        fit_basis(random_adapters(4), k=11)
    with pytest.raises(ValueError, match="threshold"):
        choose_k(adapters, 1.5)
    with pytest.raises(
        ValueError, match="blocks.0.attn.q: cannot have 12 orthonormal C_B components in dimension 10"
    ):
        augment(fit_basis(adapters, k=5), 7, seed=0)


def test_loadings_of_the_wrong_shape_are_rejected():
    basis = fit_basis(random_adapters(3), k=4)
    good = init_loadings(basis, 2, seed=0)
    wrong_k = Loadings({**good.alpha_A, "blocks.0.attn.q": jnp.ones((5, 2))}, good.alpha_B)
    with pytest.raises(
        ValueError, match=r"blocks.0.attn.q: alpha_A has shape \(5, 2\), expected \(K, r\) = \(4, 2\)"
    ):
        reconstruct(basis, wrong_k)
    with pytest.raises(ValueError, match="do not match the basis modules"):
        reconstruct(basis, Loadings({"blocks.0.attn.q": good.alpha_A["blocks.0.attn.q"]}, good.alpha_B))
    with pytest.raises(ValueError, match="loadings of shapes"):
        EigenLoRA.from_basis(basis, "blocks.0.attn.q", rank=3, loadings=good)
    with pytest.raises(ValueError, match="not in the basis"):
        EigenLoRA.from_basis(basis, "blocks.9.mlp.up", rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs rngs"):
        EigenLoRA.from_basis(basis, "blocks.0.attn.q", rank=2)
    c_a, c_b = basis.C_A["blocks.0.attn.q"], basis.C_B["blocks.0.attn.q"]
    with pytest.raises(ValueError, match="shape mismatch"):
        eigenlora_delta(jnp.ones((2, 12)), c_a, c_b, jnp.ones((4, 2)), jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="shape mismatch"):
        serve_delta(
            jnp.ones((2, 5, 12)),
            jnp.zeros((3,), jnp.int32),
            c_a,
            c_b,
            jnp.ones((2, 4, 2)),
            jnp.ones((2, 4, 2)),
        )
    with pytest.raises(ValueError, match="do not fit components"):
        MultiTaskEigenLoRA(c_a, c_b, jnp.ones((2, 4, 2)), jnp.ones((3, 4, 2)))
    with pytest.raises(ValueError, match="needs a rank-vector basis"):
        MultiTaskEigenLoRA.from_basis(
            fit_basis(random_adapters(3), k=2, unwind=True), "blocks.0.attn.q", [good]
        )
