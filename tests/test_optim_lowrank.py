"""GaLore, Fira, APOLLO and APOLLO-Mini (lax_pretrain/optim/{galore,fira,apollo}.py) against their authors' PyPI
packages (`galore-torch` 1.0, `fira` 1.0.2, `apollo-torch` 1.0.3) on CPU, their state's shapes and shardings, and
an exact resume across a projector refresh through the real train().

Parity: the same random weights (m > n, m < n, square, a stacked pair of layers, a 1-D parameter), the same
random gradients, the same hyperparameters (constant lr, weight decay on), 5 steps with update_proj_gap 2, so
the projectors are refreshed at steps 0, 2 and 4 and the moments are carried across two refreshes. Our kernels
are the authors' weights transposed (d_in, d_out). Singular vectors are defined up to sign: the reference's
projector is given our sign convention (largest-magnitude entry of each singular vector positive) so the
trajectories can agree past the first refresh; APOLLO's random projections (from torch.Generator) are injected
into ours at each refresh. Tolerance: float32, |ours - theirs| <= 2e-6 + 2e-5 |theirs| on the parameters after
every step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import apollo_torch  # the authors' packages (requirements-test.txt): imported, not skipped
import fira as fira_pkg
import galore_torch
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lax_pretrain.optim import OPTIMIZERS, low_rank, projection
from lax_pretrain.optim.low_rank import LowRankAdamState

# Weight decay large enough that decaying the pre-step parameter instead of the updated one (optax's order) is
# outside the tolerance; the norm scale's and one kernel's gradients small enough (SMALL) that eps inside the bias
# correction (optax's adam) instead of outside it is too.
LR, WD, B1, B2, EPS = 1e-2, 1.0, 0.9, 0.999, 1e-6
SMALL = {"final_norm/scale": 1e-4, "mlp/up/kernel": 1e-4}
GAP, STEPS, RANK = 2, 5, 4
RTOL, ATOL = 2e-5, 2e-6
# name -> torch weight shape (d_out, d_in); "stacked" is two layers of one scanned kernel.
SHAPES = {"tall": (24, 10), "wide": (8, 20), "square": (12, 12), "stacked": (16, 9)}


def model_params(seed: int = 0) -> dict:
    """Our parameter tree: kernels (d_in, d_out) under attn/mlp (projected), a norm scale (plain)."""
    rng = np.random.default_rng(seed)
    w = {k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}
    w["stacked"] = rng.standard_normal((2, *SHAPES["stacked"]), dtype=np.float32)
    kernels = {k: np.swapaxes(v, -1, -2) for k, v in w.items()}
    return {
        "attn": {"q": {"kernel": kernels["tall"]}, "o": {"kernel": kernels["square"]}},
        "mlp": {"up": {"kernel": kernels["wide"]}, "down": {"kernel": kernels["stacked"]}},
        "final_norm": {"scale": rng.standard_normal(7, dtype=np.float32)},
    }


def gradients(params: dict, steps: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)

    def draw(path, p):
        scale = SMALL.get("/".join(k.key for k in path), 1.0)
        return (scale * rng.standard_normal(p.shape)).astype(np.float32)

    return [jax.tree_util.tree_map_with_path(draw, params) for _ in range(steps)]


def torch_leaves(tree: dict) -> dict[str, list]:
    """Our tree as the authors' tensors: path -> list of torch weights (one per layer of a stacked kernel)."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(k.key for k in path)
        x = np.asarray(x)
        if x.ndim == 1:
            out[name] = [torch.tensor(x)]
        else:
            layers = x.reshape(-1, *x.shape[-2:])
            out[name] = [torch.tensor(np.ascontiguousarray(k.T)) for k in layers]
    return out


def from_torch(name: str, tensors: list, like: np.ndarray) -> np.ndarray:
    if like.ndim == 1:
        return tensors[0].detach().numpy()
    return np.stack([t.detach().numpy().T for t in tensors]).reshape(like.shape)


def canonical_torch(matrix, kind: str):
    """Our sign convention on the reference's projector: 'right' returns rows (r, n), 'left' columns (m, r)."""
    cols = matrix.T if kind == "right" else matrix
    idx = cols.abs().argmax(dim=0)
    sign = torch.sign(cols[idx, torch.arange(cols.shape[1])])
    sign[sign == 0] = 1
    cols = cols * sign
    return cols.T.contiguous() if kind == "right" else cols


@pytest.fixture
def signed_references(monkeypatch):
    """galore-torch's and fira's SVD projectors with our sign convention."""
    for cls in (
        galore_torch.galore_projector.GaLoreProjector,
        fira_pkg.gradient_projection.GradientProjector,
    ):
        original = cls.get_orthogonal_matrix

        def signed(self, weights, rank, type, original=original):
            return canonical_torch(original(self, weights, rank, type), type)

        monkeypatch.setattr(cls, "get_orthogonal_matrix", signed)


@dataclasses.dataclass
class Case:
    name: str  # our registered optimizer
    reference: type
    group: dict  # the authors' projected-group keys
    kwargs: dict  # the reference optimizer's extra arguments
    own: dict  # our optim.<name> section


CASES = {
    "galore": Case(
        "galore",
        galore_torch.GaLoreAdamW,
        {"rank": RANK, "update_proj_gap": GAP, "scale": 0.25, "proj_type": "std"},
        {"no_deprecation_warning": True},
        {"rank": RANK, "update_proj_gap": GAP, "scale": 0.25, "eps": EPS},
    ),
    "fira": Case(
        "fira",
        fira_pkg.FiraAdamW,
        {"rank": RANK, "update_proj_gap": GAP, "alpha": 0.25, "proj_type": "std"},
        {"no_deprecation_warning": True},
        {"rank": RANK, "update_proj_gap": GAP, "scale": 0.25, "eps": EPS},
    ),
    "apollo": Case(
        "apollo",
        apollo_torch.APOLLOAdamW,
        {"rank": RANK, "update_proj_gap": GAP, "scale": 1.0, "proj_type": "std", "proj": "random"}
        | {"scale_type": "channel"},
        {"scale_front": False},
        {"rank": RANK, "update_proj_gap": GAP, "scale": 1.0, "scale_type": "channel", "scale_front": False}
        | {"eps": EPS, "seed": 0},
    ),
    "apollo_mini": Case(
        "apollo_mini",
        apollo_torch.APOLLOAdamW,
        {"rank": 1, "update_proj_gap": GAP, "scale": 128.0, "proj_type": "std", "proj": "random"}
        | {"scale_type": "tensor"},
        {"scale_front": True},
        {"rank": 1, "update_proj_gap": GAP, "scale": 128.0, "scale_type": "tensor", "scale_front": True}
        | {"eps": EPS, "seed": 0},
    ),
}


def optim_cfg(name: str, own: dict):
    import ml_collections

    return ml_collections.ConfigDict(
        {"name": name, "b1": B1, "b2": B2, "weight_decay": WD, "weight_decay_mask": "all", name: own}
    )


def run_reference(case: Case, params: dict, grads: list[dict]):
    """The authors' optimizer over our tree; yields (our-layout params after each step, the projections that
    the random projectors drew at that step in our layout, per projected leaf, or None)."""
    tensors = torch_leaves(params)
    plain = [t for name, ts in tensors.items() if name.endswith("scale") for t in ts]
    projected = [t for name, ts in tensors.items() if not name.endswith("scale") for t in ts]
    for t in plain + projected:
        t.requires_grad_(True)
    opt = case.reference(
        [{"params": plain}, {"params": projected, **case.group}],
        lr=LR,
        betas=(B1, B2),
        eps=EPS,
        weight_decay=WD,
        **case.kwargs,
    )
    for step, g in enumerate(grads):
        for name, ts in tensors.items():
            for t, gt in zip(ts, torch_leaves(g)[name]):
                t.grad = gt.clone()
        opt.step()
        drawn = None
        if case.group.get("proj") == "random" and step % GAP == 0:
            drawn = []
            for name, ts in tensors.items():
                if name.endswith("scale"):
                    continue
                # The authors project a weight (m, n) with m >= n from the right by (r, n): our left projector
                # (d_in, r) is its transpose; for m < n their left (m, r) is our right projector (d_out, r).
                ours = [
                    p.T if t.shape[0] >= t.shape[1] else p
                    for t, p in ((t, opt.state[t]["projector"].ortho_matrix) for t in ts)
                ]
                stacked = np.stack([m.detach().numpy() for m in ours])
                drawn.append(stacked.reshape(*params_shape(params, name)[:-2], *stacked.shape[-2:]))
        yield {name: from_torch(name, ts, leaf_of(params, name)) for name, ts in tensors.items()}, drawn


def leaf_of(tree: dict, name: str):
    node = tree
    for key in name.split("/"):
        node = node[key]
    return np.asarray(node)


def params_shape(tree: dict, name: str) -> tuple:
    return leaf_of(tree, name).shape


def flat(tree: dict) -> dict:
    """path -> leaf (arrays as numpy; abstract leaves as they are)."""
    return {
        "/".join(k.key for k in path): x if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x)
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_authors_package_across_projector_refreshes(name, signed_references, monkeypatch):
    case = CASES[name]
    params = model_params()
    grads = gradients(params, STEPS)
    tx = OPTIMIZERS.get(name, key="optim.name").build(optim_cfg(name, case.own), optax.constant_schedule(LR))
    state = tx.init(params)
    ours = jax.tree.map(jnp.asarray, params)
    injected: list = []
    if case.group.get("proj") == "random":
        # The reference's projections replace ours where a refresh draws one (in leaf order).
        monkeypatch.setattr(low_rank, "random_projector", lambda key, g, plan: jnp.asarray(injected.pop(0)))
    worst = 0.0
    for step, (reference, drawn) in enumerate(run_reference(case, params, grads)):
        injected[:] = drawn or []
        with jax.disable_jit():  # lax.cond runs only the branch taken: a projector is drawn only on refreshes
            updates, state = tx.update(jax.tree.map(jnp.asarray, grads[step]), state, ours)
        assert not injected, "every injected projection was used"
        ours = optax.apply_updates(ours, updates)
        for leaf, value in flat(ours).items():
            theirs = reference[leaf]
            np.testing.assert_allclose(
                value, theirs, rtol=RTOL, atol=ATOL, err_msg=f"{name} {leaf} step {step}"
            )
            worst = max(worst, float(np.max(np.abs(value - theirs) / (ATOL + RTOL * np.abs(theirs)))))
        assert int(state.count) == step + 1
    print(f"{name}: at most {worst:.3f} of the tolerance used over {STEPS} steps")


def test_refresh_changes_the_projector_only_every_gap_steps():
    """The projectors are recomputed exactly where the 0-based step % update_proj_gap == 0 (SVD and random)."""
    params = model_params()
    grads = gradients(params, STEPS)
    for name in ("galore", "apollo"):
        tx = OPTIMIZERS.get(name, key="optim.name").build(
            optim_cfg(name, CASES[name].own), optax.constant_schedule(LR)
        )
        state, previous = tx.init(params), None
        update = jax.jit(tx.update)
        for step in range(STEPS):
            _, state = update(grads[step], state, params)
            current = flat(state.projector)["attn/q/kernel"]
            if previous is not None:
                assert (step % GAP == 0) == (not np.array_equal(current, previous)), (name, step)
            previous = current


# ------------------------------------------------------------------------------------------- state


def test_state_shapes_per_optimizer():
    """Projected kernels keep r x (the side not projected) moments and a (projected side, r) projector; the norm
    scale keeps full moments; APOLLO keeps its rank (no clipping), GaLore clips it to the matrix."""
    params = model_params()
    expected_left = {
        "attn/q/kernel": True,
        "attn/o/kernel": True,
        "mlp/up/kernel": False,
        "mlp/down/kernel": True,
    }
    for name, rank in (("galore", RANK), ("fira", RANK), ("apollo", RANK), ("apollo_mini", 1)):
        tx = OPTIMIZERS.get(name, key="optim.name").build(
            optim_cfg(name, CASES[name].own), optax.constant_schedule(LR)
        )
        state = jax.eval_shape(tx.init, params)
        assert isinstance(state, LowRankAdamState) and state.count.dtype == jnp.int32
        mu, proj, norm = flat(state.mu), flat(state.projector), flat(state.norm)
        for leaf, left in expected_left.items():
            *lead, a, b = leaf_of(params, leaf).shape
            assert mu[leaf].shape == ((*lead, rank, b) if left else (*lead, a, rank)), (name, leaf)
            assert proj[leaf].shape == (*lead, a if left else b, rank), (name, leaf)
            assert norm[leaf].shape == tuple(lead), (name, leaf)
        assert mu["final_norm/scale"].shape == (7,) and proj["final_norm/scale"].shape == ()
    # As the authors' GaLore: r x max(m, n) moments (the (24, 10) torch weight: ours (4, 24), theirs (24, 4)).
    assert flat(jax.eval_shape(tx.init, params).mu)["attn/q/kernel"].shape == (1, 24)


def test_state_shardings_follow_the_parameter(monkeypatch):
    """On an (fsdp, tensor) mesh: projectors sharded on the axis they share with their parameter, replicated on
    the rank axis; low-rank moments on the kept side's axis, or on the rank axis where that side is whole;
    limiter norms on the layer axis; the count replicated."""
    devices = np.array(jax.devices()[:1]).reshape(1, 1)
    mesh = Mesh(devices, ("fsdp", "tensor"))
    params = model_params()
    specs = {
        "attn/q/kernel": PartitionSpec("fsdp", None),
        "attn/o/kernel": PartitionSpec("fsdp", "tensor"),
        "mlp/up/kernel": PartitionSpec("fsdp", "tensor"),
        "mlp/down/kernel": PartitionSpec(None, "fsdp", "tensor"),
        "final_norm/scale": PartitionSpec("tensor"),
    }
    abstract = jax.tree_util.tree_map_with_path(
        lambda path, x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=NamedSharding(mesh, specs["/".join(k.key for k in path)])
        ),
        params,
    )
    tx = OPTIMIZERS.get("galore", key="optim.name").build(
        optim_cfg("galore", CASES["galore"].own), optax.constant_schedule(LR)
    )
    shardings = OPTIMIZERS.get("galore", key="optim.name").state_shardings(tx, abstract, mesh)
    got = {
        field: {k: v.spec for k, v in flat_specs(getattr(shardings, field)).items()}
        for field in ("mu", "projector", "norm")
    }
    assert shardings.count.spec == PartitionSpec()
    # left (d_in <= d_out): P (d_in, r) on d_in's axis, moments (r, d_out) on d_out's axis.
    assert got["projector"]["attn/o/kernel"] == PartitionSpec("fsdp", None)
    assert got["mu"]["attn/o/kernel"] == PartitionSpec(None, "tensor")
    # FSDP alone: the kept side is whole, so the moments' rank axis takes the projected side's mesh axis.
    assert got["projector"]["attn/q/kernel"] == PartitionSpec("fsdp", None)
    assert got["mu"]["attn/q/kernel"] == PartitionSpec("fsdp", None)
    # right (d_in > d_out): P (d_out, r), moments (d_in, r).
    assert got["projector"]["mlp/up/kernel"] == PartitionSpec("tensor", None)
    assert got["mu"]["mlp/up/kernel"] == PartitionSpec("fsdp", None)
    assert got["projector"]["mlp/down/kernel"] == PartitionSpec(None, "fsdp", None)
    assert got["norm"]["mlp/down/kernel"] == PartitionSpec(None)
    assert got["mu"]["final_norm/scale"] == PartitionSpec("tensor")
    assert got["projector"]["final_norm/scale"] == PartitionSpec()


def flat_specs(tree) -> dict:
    return {
        "/".join(k.key for k in path): x
        for path, x in jax.tree_util.tree_flatten_with_path(
            tree, is_leaf=lambda x: isinstance(x, NamedSharding)
        )[0]
    }


def test_bad_hyperparameters_are_refused_naming_the_key():
    from lax_pretrain.optim import validate_optimizer

    with pytest.raises(ValueError, match=r"optim\.galore\.rank=0 must be an integer >= 1"):
        validate_optimizer(optim_cfg("galore", {"rank": 0}))
    with pytest.raises(ValueError, match=r"optim\.apollo\.scale_type='row' is not one of channel, tensor"):
        validate_optimizer(optim_cfg("apollo", {"scale_type": "row"}))
    with pytest.raises(ValueError, match=r"optim\.fira\.alpha is not a hyperparameter of fira"):
        validate_optimizer(optim_cfg("fira", {"alpha": 0.25}))


def test_which_parameters_are_projected():
    """The authors' rule (weights of Linear modules under attn / mlp) on our names: dense kernels and svd/cola
    factors are; TT cores, LaX gates, norms, embeddings and the head are not."""
    yes = [
        ("blocks", "rest", "attn", "q", "kernel"),
        ("blocks", "first", "mlp", "gate", "down"),
        ("mlp", "up", "up"),
    ]
    no = [
        ("blocks", "rest", "attn", "q", "gate", "g0"),
        ("blocks", "rest", "mlp", "up", "latent_norm", "scale"),
        ("blocks", "rest", "mlp", "up", "cores"),
        ("embed",),
        ("head",),
        ("blocks", "rest", "attn_norm", "scale"),
    ]
    assert all(projection.is_projected(n, 2) for n in yes)
    assert not any(projection.is_projected(n, 2) for n in no)


# ------------------------------------------------------------------------------------------- resume

RESUME_STEPS, STOP_AFTER = 6, 3  # refreshes at steps 0, 2, 4: the run stops between two of them


def tiny_run(name: str, steps: int = RESUME_STEPS):
    """A two-layer scanned dense LLaMA training with `name`, projectors refreshed every 2 steps."""
    from lax_pretrain.config import from_compact

    config = from_compact("llama", "nano,kind=dense,scan=1")
    overrides = {
        "model.d_model": 32,
        "model.num_layers": 3,
        "model.num_heads": 2,
        "model.num_kv_heads": 2,
        "model.ffn_dim": 64,
        "data.seq_len": 16,
        "data.eval_batches": 1,
        "train.steps": steps,
        "train.batch_size": 8,
        "train.log_every": 1,
        "train.eval_every": steps,
        "train.checkpoint_every": steps,
        "optim.warmup_steps": 1,
        "optim.name": name,
        f"optim.{name}.update_proj_gap": 2,
        "wandb.mode": "disabled",
    }
    if name != "apollo_mini":
        overrides[f"optim.{name}.rank"] = 4
    config.update_from_flattened_dict(overrides)
    return config


def host_params(params) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fira", "apollo_mini"])
def test_resume_across_a_projector_refresh_is_exact(name, tmp_path, monkeypatch):
    """Stopped after step 3 (as a preemption stops it: checkpoint, exit), resumed to step 6 by train(): the same
    parameters, bit for bit, as the run that never stopped. The projector from the step-2 refresh, the limiter's
    norms and the step counter come back from the checkpoint (a fresh optimizer state would refresh at step 3
    and restart the limiter). Fira covers the SVD projector, APOLLO-Mini the random one."""
    from lax_pretrain.parallel import distributed
    from lax_pretrain.train import loop, train

    reference = train(tiny_run(name), tmp_path / "reference")

    class StopAfter(distributed.Preemption):
        def should_stop(self, step: int) -> bool:
            self._requested = step >= STOP_AFTER
            return self._requested

    monkeypatch.setattr(loop, "Preemption", StopAfter)
    stopped = train(tiny_run(name), tmp_path / "run")
    assert stopped["status"] == "preempted" and stopped["step"] == STOP_AFTER
    monkeypatch.undo()
    resumed = train(tiny_run(name), tmp_path / "run")
    assert resumed["start_step"] == STOP_AFTER and resumed["step"] == RESUME_STEPS
    ours, theirs = host_params(resumed["final_params"]), host_params(reference["final_params"])
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


# ------------------------------------------------------------------------------------ the comparison


def test_comparison_plans_the_cpu_llama_budget(monkeypatch):
    """Every run of the optimizer sweep trains what the cpu_llama suite's dense runs train (model, data, budget,
    schedule), only the optimizer, its rank and its learning rate differing; two seeds of each method, and one
    AdamW control at the methods' learning rate."""
    from lax_pretrain.experiments import sweep

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # recipe paths in sweep files are relative to the repository root
    _, cpu_runs = sweep.load_sweep(root / "configs/sweeps/cpu.py", suite="cpu_llama")
    (dense,) = [r for r in cpu_runs if r.variant == "dense" and "train.seed" not in r.overrides]
    _, runs = sweep.load_sweep(root / "configs/sweeps/optimizers.py")
    assert len(runs) == 9
    for run in runs:
        assert run.config == dense.config and run.shared == dense.shared
        assert {k for k in run.overrides if not k.startswith("optim.")} <= {"train.seed"}
    names = [r.overrides["optim.name"] for r in runs]
    assert sorted(set(names)) == ["adamw", "apollo", "apollo_mini", "fira", "galore"]
    assert all(names.count(n) == 2 for n in ("galore", "fira", "apollo", "apollo_mini"))


@pytest.mark.slow
def test_comparison_smoke(tmp_path):
    """The comparison's --tiny version end to end, as its command runs it: the four methods train (update gap 1:
    a refresh on both steps), and the report has each one's perplexity, measured state bytes below AdamW's and
    its step-time ratios; every run is finished as the runner judges it (a second invocation skips them)."""
    import os
    import subprocess
    import sys

    from lax_pretrain.experiments import runner

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    argv = [sys.executable, "-m", "lax_pretrain.experiments.optimizers", "--tiny", "--seeds=1"]
    argv += [f"--out={tmp_path}", "--repeats=1"]
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["summary"]) == {"galore", "fira", "apollo", "apollo_mini"}
    for name, s in data["summary"].items():
        assert s["seeds"] == 1 and math.isfinite(s["mean"]), name
        m = data["measured"][name]
        assert m["state_bytes"] < data["measured"]["adamw"]["state_bytes"], name
        assert m["step_ratio"] > 0 and m["refresh_ratio"] > 0, name
    text = (tmp_path / "results.md").read_text()
    assert "| GaLore | 1 |" in text and "| APOLLO-Mini | 1 |" in text and "step time vs AdamW" in text
    # Resumable: every run is finished as the runner judges it, so running the command again trains nothing.
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 4 and all(runner.is_finished(r, 2) for r in runs)
