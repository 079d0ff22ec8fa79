"""Sharding across devices: the same numbers on every mesh, shard_map TP == GSPMD TP, r-wide TP all-reduces,
checkpoints that move between meshes, sharded initialisation, errors before compiling, and the launchers.

All on the 8 fake CPU devices of conftest.py, with a tiny LLaMA (d_model 64, 4 heads, 2 layers, ffn 128,
rank 16, 16-token windows, batch 8) whose projections mix every layer kind, each low-rank one crossed (LaX kron):

    MIX_A  q dense  k svd  v cola  o tt  | gate tt  up dense  down cola

so one model covers dense, svd+LaX, cola+LaX and tt+LaX, each column-parallel (q, k, v, gate, up: output
over `tensor`), and the two factor code paths (a stored LowRank factor, a TT factor contracted from its cores)
also row-parallel (o, down: input over `tensor`), at a quarter of the compile time of one model per kind.
(Compiling, mostly the init's random draws, is what these tests spend their time on.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lax_pretrain.config import from_compact, llama_config
from lax_pretrain.data import tfds_io
from lax_pretrain.layers import tt_shape
from lax_pretrain.models import build
from lax_pretrain.models.tasks import lm_loss
from lax_pretrain.parallel import (
    DEFAULT_RULES,
    batch_sharding,
    check_process_rows,
    make_mesh,
    place_values,
    rules_from_config,
    sharded_init,
    sharding_context,
)
from lax_pretrain.parallel.comm import _ARRAY, _array_bytes, comm_report, count_collectives
from lax_pretrain.parallel.dcn import network_split
from lax_pretrain.train import train
from lax_pretrain.train.metrics import read_metrics
from lax_pretrain.train.program import compile_block_step

pytestmark = pytest.mark.slow  # sharded training on 8 fake devices: `pytest -m 'not slow'` skips them

REPO = Path(__file__).resolve().parent.parent
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
MIX_A = {"q": "dense", "k": "svd", "v": "cola", "o": "tt", "gate": "tt", "up": "dense", "down": "cola"}
D, FFN, RANK = 64, 128, 16
MESHES = {"8x1x1": (8, 1, 1), "2x2x2": (2, 2, 2), "1x2x4": (1, 2, 4), "1 device": (1, 1, 1)}
STEPS = 6  # checkpoint at 3, compared over all 6


def projection_spec(name: str, kind: str) -> dict:
    d_in, d_out = {"gate": (D, FFN), "up": (D, FFN), "down": (FFN, D)}.get(name, (D, D))
    if kind == "dense":
        return {"kind": "dense", "crossing": "none"}
    if kind == "tt":
        modes_in, modes_out, ranks = tt_shape(d_in, d_out, RANK)
        return {
            "kind": "tt",
            "tt_in_modes": list(modes_in),
            "tt_out_modes": list(modes_out),
            "tt_ranks": list(ranks),
        }
    return {"kind": kind, "rank": RANK}


def tiny_config(data_dir: str, mix: dict[str, str], mesh: tuple[int, int, int], **train_overrides):
    c = llama_config("nano", kind="svd", lax="kron")
    c.model.update(d_model=D, num_layers=2, num_heads=4, num_kv_heads=4, ffn_dim=FFN)
    c.model.proj = {p: projection_spec(p, mix[p]) for p in PROJECTIONS}
    c.data.update(seq_len=16, eval_batches=1, data_dir=data_dir)
    c.train.update(steps=STEPS, batch_size=8, log_every=1, eval_every=STEPS, checkpoint_every=3)
    c.train.update(train_overrides)
    c.optim.warmup_steps = 2
    c.wandb.mode = "disabled"
    c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    c.mesh.num_devices = math.prod(mesh)
    return c


def losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


@pytest.fixture(scope="module")
def data_dir(tfds_dir):
    config = llama_config("nano")
    config.data.data_dir = tfds_dir
    tfds_io.build_if_needed(config.data)
    return tfds_dir


@pytest.fixture(scope="module")
def mesh_runs(data_dir, tmp_path_factory):
    """MIX_A trained STEPS steps on each mesh: {mesh name: workdir}."""
    runs = {}
    for name, mesh in MESHES.items():
        workdir = tmp_path_factory.mktemp("mesh_" + name.replace(" ", "_"))
        summary = train(tiny_config(data_dir, MIX_A, mesh), workdir)
        assert summary["status"] == "done" and summary["step"] == STEPS
        runs[name] = workdir
    # The same config through train() with the explicit shard_map tensor parallelism.
    workdir = tmp_path_factory.mktemp("mesh_1x2x4_shard_map")
    config = tiny_config(data_dir, MIX_A, MESHES["1x2x4"])
    config.parallel.tp_impl = "shard_map"
    assert train(config, workdir)["status"] == "done"
    runs["1x2x4 shard_map"] = workdir
    return runs


# ------------------------------------------------------------------------------------------ one config, every mesh


def test_rules_override_from_the_command_line_syntax():
    """`--config.parallel.rules='(("rank", "fsdp"), ("batch", ("data", "fsdp")))'` reaches the table as pairs;
    anything else is one line naming the key and the syntax."""
    parallel = ml_collections.ConfigDict(
        {"tp_impl": "auto", "rules": (("rank", "fsdp"), ("batch", ("data",)))}
    )
    rules = rules_from_config(parallel)
    assert rules["rank"] == "fsdp" and rules["batch"] == ("data",) and rules["embed"] == "fsdp"
    for bad in (('[["embed", null]]',), (("rank",),)):
        with pytest.raises(ValueError, match=r"parallel.rules entry .* must be a \(logical_name"):
            rules_from_config(ml_collections.ConfigDict({"rules": bad}))


def test_same_losses_on_every_mesh(mesh_runs):
    reference = losses(mesh_runs["1 device"])
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert reference[STEPS] < reference[1]  # it trains
    for name, workdir in mesh_runs.items():
        got = losses(workdir)
        assert got.keys() == reference.keys(), name
        for step in reference:
            assert got[step] == pytest.approx(reference[step], rel=1e-5), (name, step)


def test_checkpoint_from_8x1x1_resumes_on_2x2x2_and_on_one_device(mesh_runs, data_dir, tmp_path):
    """The step-3 checkpoint of the 8x1x1 run, restored into another mesh's shardings, continues exactly as
    the uninterrupted 8x1x1 run did (steps 4..6)."""
    source = mesh_runs["8x1x1"]
    expected = losses(source)
    for name in ("2x2x2", "1 device"):
        workdir = tmp_path / name.replace(" ", "_")
        (workdir / "checkpoints").mkdir(parents=True)
        shutil.copytree(source / "checkpoints" / "3", workdir / "checkpoints" / "3")
        summary = train(tiny_config(data_dir, MIX_A, MESHES[name]), workdir)
        assert summary["start_step"] == 3 and summary["step"] == STEPS, name
        got = losses(workdir)
        assert sorted(got) == [4, 5, 6], name
        for step in got:
            assert got[step] == pytest.approx(expected[step], rel=1e-5), (name, step)


def test_place_values_creates_given_values_in_their_shardings(data_dir, tmp_path):
    """A pretrained value replaces the initial one, keeps the rule sharding (2-way fsdp x 4-way tensor) and equals
    the host array; a wrong shape names the path; train() rejects paths the model does not have."""
    config = tiny_config(data_dir, MIX_A, (1, 2, 4))
    mesh, rules = make_mesh(config.mesh), rules_from_config(config.parallel)
    _, init, (train_sh, _) = sharded_init(lambda r: build(config.model, rngs=r), mesh, rules)
    with sharding_context(mesh, rules):
        params, _ = init()
    flat = dict(nnx.to_flat_state(params))
    path = next(p for p, v in flat.items() if p[-1] == "kernel" and v.ndim == 2 and "up" in map(str, p))
    value = np.random.default_rng(0).standard_normal(flat[path].shape).astype(np.float32)
    placed = dict(nnx.to_flat_state(place_values(params, train_sh, {path: value})))
    assert placed[path].get_value().sharding == flat[path].get_value().sharding
    assert not placed[path].get_value().sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(placed[path].get_value()), value)
    other = next(p for p in flat if p != path)
    np.testing.assert_array_equal(np.asarray(placed[other].get_value()), np.asarray(flat[other].get_value()))
    with pytest.raises(ValueError, match="/".join(map(str, path))):
        place_values(params, train_sh, {path: value[:1]})
    with pytest.raises(ValueError, match="init_values has 1 paths the model does not"):
        train(config, tmp_path / "run", init_values={("no", "such", "kernel"): value})


# -------------------------------------------------------------------------------- tensor parallelism: equality


def test_shard_map_tp_equals_auto_tp(data_dir):
    """Loss and every gradient of the mixed model on mesh (1, 2, 4), GSPMD vs explicit shard_map TP: svd and
    cola (one code path, LowRank.tp_factors) and tt, column-parallel and row-parallel."""
    config = tiny_config(data_dir, MIX_A, (1, 2, 4))
    mesh, rules = make_mesh(config.mesh), rules_from_config(config.parallel)
    graphdef, init, _ = sharded_init(lambda r: build(config.model, rngs=r), mesh, rules)
    tokens = np.random.default_rng(0).integers(0, 259, (8, 17)).astype(np.int32)
    host_batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((8, 16), np.float32)}
    with sharding_context(mesh, rules):
        params, frozen = init()
        shardings = {k: batch_sharding(mesh, v.ndim, rules) for k, v in host_batch.items()}
        batch = {k: jax.device_put(v, shardings[k]) for k, v in host_batch.items()}
    results = {}
    for tp_impl in ("auto", "shard_map"):
        with sharding_context(mesh, rules, tp_impl):
            fn = jax.jit(jax.value_and_grad(lambda p, f, b: lm_loss(nnx.merge(graphdef, p, f), b)[0]))
            compiled = fn.lower(params, frozen, batch).compile()
            loss, grads = compiled(params, frozen, batch)
        flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(grads)}
        results[tp_impl] = float(loss), flat, compiled.as_text()
    (loss_auto, grads_auto, _), (loss_sm, grads_sm, hlo) = results["auto"], results["shard_map"]
    assert loss_sm == pytest.approx(loss_auto, rel=1e-5)
    assert grads_sm.keys() == grads_auto.keys()
    for k in grads_auto:
        np.testing.assert_allclose(grads_sm[k], grads_auto[k], rtol=1e-5, atol=1e-7, err_msg=k)
    # The explicit path really is tensor-parallel: r-wide latent all-reduces (64 tokens per fsdp shard x 16).
    assert "f32[64,16]" in " ".join(line for line in hlo.splitlines() if "all-reduce(" in line)


def test_bad_tp_impl_is_an_error(data_dir, tmp_path):
    with pytest.raises(ValueError, match="parallel.tp_impl='megatron'"):
        with sharding_context(None, None, "megatron"):
            pass
    config = tiny_config(data_dir, MIX_A, (1, 1, 1))
    config.parallel.tp_impl = "megatron"
    with pytest.raises(ValueError, match="parallel.tp_impl='megatron'"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ tensor parallelism: r-wide all-reduces


def block_config(kind: str, tp_impl: str = "auto"):
    """The 60m LLaMA (d 512, 8 heads, ffn 1376, rank 128) on mesh (1, 1, 4), batch 8 x 64 tokens."""
    c = from_compact("llama", f"60m,kind={kind}" + (",lax=kron" if kind != "dense" else ""))
    c.train.batch_size, c.data.seq_len = 8, 64
    c.mesh.update(data=1, fsdp=1, tensor=4)
    c.mesh.num_devices = 4
    c.parallel.tp_impl = tp_impl
    return c


def test_low_rank_block_all_reduces_r_over_d_of_dense():
    """One block forward + backward at tensor=4: every TP all-reduce of a low-rank block is on an r-wide latent
    where the dense block's is d wide (2 forward in the row-parallel o/down, 5 backward through the
    column-parallel q, k, v, gate, up), so the bytes are r/d = 1/4 of dense's, within 10%. The dense number
    comes from the comm_report.py CLI (--json --block_only), which this also smoke-tests."""
    out = subprocess.run(
        [
            sys.executable,
            "scripts/comm_report.py",
            "--config=configs/llama.py:60m",
            "--mesh=1,1,4",
            "--block_only",
            "--json",
            "--config.train.batch_size=8",
            "--config.data.seq_len=64",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    dense = json.loads(out.stdout.strip().splitlines()[-1])
    assert dense["block_only"] and dense["mesh"] == [1, 1, 4]
    n_tokens, d, r = 8 * 64, 512, 128
    assert dense["all_reduce_bytes"] == 7 * n_tokens * d * 4
    assert set(dense["collectives"]) == {
        "all-reduce",
        "all-gather",
        "reduce-scatter",
        "all-to-all",
        "collective-permute",
    }
    for kind, tp_impl in (("svd", "auto"), ("cola", "shard_map")):
        config = block_config(kind, tp_impl)
        report = comm_report(compile_block_step(config, make_mesh(config.mesh)))
        assert report["all_reduce_bytes"] <= 1.1 * (r / d) * dense["all_reduce_bytes"], (kind, report)
        assert report["all_reduce_bytes"] == 7 * n_tokens * r * 4, (kind, report)
        assert report["all_gather_bytes"] == 0 and report["reduce_scatter_bytes"] == 0, (kind, report)


def test_count_collectives_multiplies_while_bodies():
    hlo = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ar = f32[8]{0} all-reduce(%x), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  ROOT %t = (s32[], f32[8]) tuple(%i, %ar)
}

ENTRY %main (a: f32[4,2]) -> f32[8,2] {
  %w = (s32[], f32[8]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %rs = f32[2,2]{1,0} reduce-scatter(%a), channel_id=2, replica_groups=[2,2]<=[4], dimensions={0}, to_apply=%add
  ROOT %ag = f32[8,2]{1,0} all-gather(%rs), channel_id=3, replica_groups=[1,4]<=[4], dimensions={0}
}
"""
    c = count_collectives(hlo)
    assert c["all-reduce"] == {"count": 5, "bytes": 5 * 32}
    assert c["reduce-scatter"] == {"count": 1, "bytes": 2 * 16}
    assert c["all-gather"] == {"count": 1, "bytes": 64}


# ------------------------------------------------------------------------------------------- sharded init


def test_1b_init_never_materialises_an_unsharded_parameter():
    """The 1B LLaMA's init, compiled for mesh (1, 8, 1) (embed -> fsdp): no array in the per-device program is
    larger than the largest parameter shard, i.e. every random draw happens already sharded."""
    config = llama_config("1b")
    config.mesh.update(data=1, fsdp=8, tensor=1)
    mesh, rules = make_mesh(config.mesh), rules_from_config(config.parallel)
    _, init, (train_sh, _) = sharded_init(lambda r: build(config.model, rngs=r), mesh, rules)
    abstract = nnx.state(nnx.eval_shape(lambda: build(config.model, rngs=nnx.Rngs(0))), nnx.Param)
    shapes = [v.shape for v in jax.tree.leaves(abstract)]
    shards = [sh.shard_shape(s) for sh, s in zip(jax.tree.leaves(train_sh), shapes)]
    total = sum(math.prod(s) * 4 for s in shapes)
    assert total > 4e9  # float32: > 1B parameters
    largest_shard = max(math.prod(s) * 4 for s in shards)
    with sharding_context(mesh, rules):
        compiled = init.lower().compile()
    largest_array = max(_array_bytes(dtype, dims) for dtype, dims in _ARRAY.findall(compiled.as_text()))
    assert largest_array <= largest_shard < max(math.prod(s) * 4 for s in shapes)
    assert compiled.memory_analysis().output_size_in_bytes < total / 6


# ---------------------------------------------------------------------------- errors before anything compiles


def test_mesh_that_does_not_divide_the_devices_is_an_error(data_dir, tmp_path):
    config = tiny_config(data_dir, MIX_A, (3, 1, 1))
    config.mesh.num_devices = 0  # all 8
    with pytest.raises(
        ValueError, match=r"mesh.data x mesh.fsdp x mesh.tensor = 3 x 1 x 1 = 3 does not match"
    ):
        train(config, tmp_path / "run")
    config.mesh.update(data=-1, tensor=3)
    with pytest.raises(
        ValueError, match=r"do not divide the 8 available devices \(mesh.data=-1 cannot fill\)"
    ):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_batch_that_does_not_divide_the_data_axes_is_an_error(data_dir, tmp_path):
    config = tiny_config(data_dir, MIX_A, (2, 2, 2), batch_size=6)
    with pytest.raises(
        ValueError,
        match=r"train.batch_size=6 is not divisible by the data axes "
        r"\(mesh.data x mesh.fsdp = 4\)",
    ):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ multi-slice meshes, processes from the mesh
# Devices described, not real (no arrays live on them): what a TPU topology gives lax-plan, enough to lay out
# a mesh and its shardings. tests/test_multislice.py compiles for real two-slice TPU devices.


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    process_index: int
    slice_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"


def fake_devices(slices: int, processes_per_slice: int, devices_per_process: int) -> list[FakeDevice]:
    per_slice = processes_per_slice * devices_per_process
    n = slices * per_slice
    return [FakeDevice(i, i // devices_per_process, i // per_slice) for i in range(n)]


def mesh_config(**sizes):
    config = from_compact("llama", "nano")
    config.mesh.update(sizes)
    return config.mesh


def slice_of(mesh) -> np.ndarray:
    return np.vectorize(lambda d: d.slice_index)(mesh.devices)


def test_two_slices_are_the_outer_part_of_the_data_or_fsdp_axis():
    devices = fake_devices(slices=2, processes_per_slice=2, devices_per_process=2)
    mesh = make_mesh(mesh_config(data=2, fsdp=2, tensor=1, dcn_data=2), devices=devices)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert (slice_of(mesh)[:2] == 0).all() and (slice_of(mesh)[2:] == 1).all()
    # Inside a slice, the order one slice alone would get (CPU-like devices: device order).
    assert [d.id for d in mesh.devices[:2].flat] == [0, 1, 2, 3]
    # Each host holds its own block of batch rows, so per-process loading is right across slices.
    check_process_rows(batch_sharding(mesh, 2, DEFAULT_RULES), 8)

    mesh = make_mesh(mesh_config(data=1, fsdp=4, tensor=1, dcn_fsdp=2), devices=devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert slice_of(mesh).reshape(-1).tolist() == [0] * 4 + [1] * 4
    check_process_rows(batch_sharding(mesh, 2, DEFAULT_RULES), 8)


def test_one_slice_mesh_is_built_as_before():
    """dcn 1 x 1 on the host's devices: jax.make_mesh exactly (the single-slice path did not change)."""
    mesh = make_mesh(mesh_config(data=2, fsdp=2, tensor=2))
    reference = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), devices=jax.devices())
    assert mesh.devices.tolist() == reference.devices.tolist()


@pytest.mark.parametrize(
    "sizes, devices, message",
    [
        (
            {},
            fake_devices(2, 1, 4),
            r"mesh.dcn_data x mesh.dcn_fsdp = 1 x 1 = 1 slices, but the 8 devices form 2 slices "
            r"\(mesh.dcn_data=2: data parallel across slices",
        ),
        (
            {"dcn_data": 2},
            None,  # the host's 8 CPU devices: one slice
            r"mesh.dcn_data x mesh.dcn_fsdp = 2 x 1 = 2 slices, but the 8 devices form 1 slice$",
        ),
        (
            {"data": 8, "dcn_data": 2},
            fake_devices(2, 1, 4),
            r"mesh.data x mesh.fsdp x mesh.tensor = 8 x 1 x 1 = 8 does not match the 4 available devices "
            r"of each slice",
        ),
        (
            {"dcn_data": -1, "dcn_fsdp": -1},
            fake_devices(2, 1, 4),
            r"only one mesh axis may be -1, got mesh.dcn_data, mesh.dcn_fsdp",
        ),
    ],
)
def test_slice_counts_that_do_not_match_the_devices_are_errors(sizes, devices, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(mesh_config(**sizes), devices=devices)


def test_dcn_fill_takes_the_slices():
    mesh = make_mesh(mesh_config(dcn_data=-1), devices=fake_devices(2, 1, 4))
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert (slice_of(mesh)[:4] == 0).all() and (slice_of(mesh)[4:] == 1).all()


def test_hosts_must_hold_distinct_batch_rows():
    """With hosts along `tensor` (every device holds the whole batch), per-process data loading would give
    each host different rows of a 'replicated' batch: an error before compiling, not silent garbage. The
    processes are those of the mesh's devices, as for a multi-host topology compiled on one machine."""
    two_hosts = fake_devices(1, 2, 4)
    mesh = make_mesh(mesh_config(data=1, fsdp=1, tensor=8), devices=two_hosts)
    with pytest.raises(
        ValueError,
        match=r"process 0 of 2 loads 4 rows of each global batch but its devices would hold 8 \(0\.\.7\): "
        r"the batch would be replicated across hosts",
    ):
        check_process_rows(batch_sharding(mesh, 2, DEFAULT_RULES), 8)
    one_host = make_mesh(mesh_config(data=1, fsdp=1, tensor=8), devices=fake_devices(1, 1, 8))
    check_process_rows(batch_sharding(one_host, 2, DEFAULT_RULES), 8)  # one process: nothing to check
    # Replicated across slices (the rules keep the batch off fsdp, where the slices are): refused too.
    rules = {**DEFAULT_RULES, "batch": "data"}
    mesh = make_mesh(mesh_config(data=4, fsdp=1, dcn_fsdp=2), devices=fake_devices(2, 1, 4))
    with pytest.raises(ValueError, match=r"process 0 of 2 .* Across slices, mesh.dcn_data splits the batch"):
        check_process_rows(batch_sharding(mesh, 2, rules), 8)


def test_hosts_may_hold_interleaved_batch_rows():
    """A TPU slice's mesh follows the torus, so a host's chips need not be neighbours along `data`: each host
    still holds its own rows (make_array_from_process_local_data places them), only not as one block."""
    interleaved = [FakeDevice(i, process_index=i % 2) for i in range(8)]  # hosts alternate along the axis
    mesh = make_mesh(mesh_config(data=8, fsdp=1, tensor=1), devices=interleaved)
    sharding = batch_sharding(mesh, 2, DEFAULT_RULES)
    check_process_rows(sharding, 16)
    host_0 = sorted(
        rows.start for d, (rows, _) in sharding.devices_indices_map((8, 1)).items() if d.process_index == 0
    )
    assert host_0 == [0, 2, 4, 6]  # every other row, the order jax places host 0's loaded rows in
    # fsdp across slices with data inside them: slice 0 holds rows 0, 1, 4, 5 of 8; allowed the same way.
    mesh = make_mesh(mesh_config(data=2, fsdp=2, dcn_fsdp=2), devices=fake_devices(2, 1, 4))
    check_process_rows(batch_sharding(mesh, 2, DEFAULT_RULES), 8)


def test_network_split_of_a_program_over_every_device():
    """XLA:CPU (like XLA:GPU over hosts) compiles one program over all 8 devices: a reduction over the outer
    mesh axis has replica groups {0,4}, {1,5}, ... that span two 'slices' of 4; one over the inner axis stays."""
    mesh = jax.make_mesh((2, 4), ("outer", "inner"), devices=jax.devices()[:8])
    x = jax.ShapeDtypeStruct(
        (8, 8), np.float32, sharding=NamedSharding(mesh, PartitionSpec("outer", "inner"))
    )
    replicated = NamedSharding(mesh, PartitionSpec())
    slices = [i // 4 for i in range(8)]
    for axis, net in ((0, "dcn"), (1, "ici")):
        step = jax.jit(lambda a, axis=axis: a.sum(axis=axis), out_shardings=replicated)
        split = network_split(step.lower(x).compile().as_text(), slices)
        assert split[net]["total"] > 0 and split["dcn" if net == "ici" else "ici"]["all-reduce"] == 0, split


MEGASCALE_HLO = """HloModule jit_step, num_partitions=4

ENTRY %main (p: f32[4,32]) -> f32[8,32] {
  %p = f32[4,32]{1,0} parameter(0)
  %ar = f32[4,32]{1,0} all-reduce(%p), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
  %after-all.1 = token[] after-all(), frontend_attributes={MegascaleRendezvousKeyName="all-gather.7_0"}
  %send.1 = (f32[4,32]{1,0}, u32[], token[]) send(%ar, %after-all.1), channel_id=2, is_host_transfer=true, \
frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",\
_xla_host_transfer_rendezvous="all-gather.7_0",_xla_megascale_target="{1,2}x{0:3}",\
_xla_megascale_transfer_type="ALL_GATHER"}
  %recv.1 = (f32[8,32]{1,0}, u32[], token[]) recv(%after-all.1), channel_id=3, is_host_transfer=true, \
frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",\
_xla_host_transfer_rendezvous="all-gather.7_0",_xla_megascale_target="{1,2}x{0:3}",\
_xla_megascale_transfer_type="ALL_GATHER"}
  %send-done.1 = token[] send-done(%send.1), channel_id=2, is_host_transfer=true, \
frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime"}
  %recv-done.1 = (f32[8,32]{1,0}, token[]) recv-done(%recv.1), channel_id=3, is_host_transfer=true, \
frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime"}
  ROOT %out = f32[8,32]{1,0} get-tuple-element(%recv-done.1), index=0
}
"""  # a backslash-newline joins the lines: each instruction is one line, as in compiled.as_text()


def test_network_split_reads_libtpu_megascale_transfers():
    """libtpu's per-slice program (4 partitions of an 8-chip, two-slice mesh): its all-reduce stays in the
    slice, and the all-gather it hands to the MegaScale runtime (a send of 512 B, a recv of the gathered
    1 KiB) is DCN, counted once at the gathered size."""
    split = network_split(MEGASCALE_HLO, [0, 0, 0, 0, 1, 1, 1, 1])
    assert split["ici"]["all-reduce"] == split["ici"]["total"] == 4 * 32 * 4
    assert split["dcn"]["all-gather"] == split["dcn"]["total"] == 8 * 32 * 4


# ------------------------------------------------------------------------------------------------ launchers


def dry_run(script: str, *args: str) -> list[str]:
    out = subprocess.run(
        ["bash", f"scripts/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


TRAIN_ARGS = (
    "--config=configs/llama.py:1b,kind=cola,lax=kron",
    "--config.mesh.fsdp=-1",
    "--config.name=it's 1b",
)


def test_tpu_pod_launcher_dry_run():
    lines = dry_run(
        "launch_tpu_pod.sh",
        "--tpu=pod",
        "--zone=us-central2-b",
        "--workdir=/mnt/lax/runs/a",
        "--repo=https://example.com/lax.git",
        "--ref=main",
        "--bucket=gs://bkt",
        "--mount=/mnt/lax",
        "--dry_run",
        "--",
        *TRAIN_ARGS,
    )
    commands = [shlex.split(line) for line in lines]
    assert len(commands) == 3  # install, mount, run
    for argv in commands:
        assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
        assert "--zone=us-central2-b" in argv and "--worker=all" in argv
    remote = [next(a for a in argv if a.startswith("--command="))[len("--command=") :] for argv in commands]
    assert "git clone --quiet https://example.com/lax.git lax-pretrain" in remote[0]
    assert "make install" in remote[0] and "jax[tpu]" in remote[0]
    assert "gcsfuse --implicit-dirs bkt /mnt/lax" in remote[1]
    run = shlex.split(remote[2])
    assert run[:7] == [
        "cd",
        "lax-pretrain",
        "&&",
        "LAX_DISTRIBUTED=1",
        ".venv/bin/python",
        "-m",
        "lax_pretrain.train",
    ]
    assert run[7:] == ["--workdir=/mnt/lax/runs/a", *TRAIN_ARGS]

    copied = dry_run(
        "launch_tpu_pod.sh",
        "--tpu=pod",
        "--zone=z",
        "--project=p",
        "--workdir=/nfs/r",
        "--dry_run",
        "--",
        "--config=configs/llama.py:60m",
    )
    assert shlex.split(copied[0])[:2] == ["tar", "-czf"]
    assert shlex.split(copied[1])[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert "--project=p" in copied[-1] and "--workdir=/nfs/r --config=configs/llama.py:60m" in copied[-1]
    bad = subprocess.run(
        [
            "bash",
            "scripts/launch_tpu_pod.sh",
            "--tpu=pod",
            "--zone=z",
            "--workdir=s3://b/r",
            "--dry_run",
            "--",
            "--config=x",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "give a gs:// URL" in bad.stderr  # gs:// itself: tests/test_bucket.py


def test_tpu_pod_launcher_dry_run_over_two_slices():
    """--slices=2: the queued resource's nodes pod-0 and pod-1 each get every step; the run needs a DCN axis."""
    args = ("--tpu=pod", "--zone=z", "--workdir=/nfs/r", "--slices=2", "--dry_run", "--")
    lines = dry_run("launch_tpu_pod.sh", *args, "--config=configs/llama.py:60m", "--config.mesh.dcn_data=2")
    commands = [shlex.split(line) for line in lines]
    copies, ssh = commands[1:3], commands[3:]
    assert [argv[6] for argv in copies] == ["pod-0:lax-pretrain-src.tar.gz", "pod-1:lax-pretrain-src.tar.gz"]
    assert [argv[5] for argv in ssh] == ["pod-0", "pod-1"] * 2  # install, run
    assert all("--worker=all" in argv for argv in commands[1:])
    assert commands[-1][-1].endswith("--config=configs/llama.py:60m --config.mesh.dcn_data=2")
    bad = subprocess.run(
        ["bash", "scripts/launch_tpu_pod.sh", *args, "--config=x"], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--slices=2: give the slices a mesh axis" in bad.stderr


@pytest.mark.parametrize("per", ["gpu", "node"])
def test_slurm_launcher_dry_run(per, tmp_path):
    workdir = tmp_path / "run"
    lines = dry_run(
        "launch_slurm.sh",
        "--nodes=2",
        "--gpus_per_node=4",
        f"--per={per}",
        f"--workdir={workdir}",
        "--partition=gpu",
        "--dry_run",
        "--",
        *TRAIN_ARGS,
    )
    script = workdir / "slurm" / "lax-run.sbatch"
    assert lines[0] == f"# {script}" and lines[1] == "#!/bin/bash"
    assert shlex.split(lines[-1]) == ["sbatch", str(script)]
    body = lines[1:-1]
    assert "#SBATCH --nodes=2" in body and "#SBATCH --gpus-per-node=4" in body and "#SBATCH --requeue" in body
    assert f"#SBATCH --ntasks-per-node={4 if per == 'gpu' else 1}" in body
    per_node_line = "export JAX_LOCAL_DEVICE_IDS=0,1,2,3  # one process per node drives all its GPUs"
    assert (per_node_line in body) == (per == "node")
    (srun_line,) = [line for line in body if line.startswith("srun ")]
    srun = shlex.split(srun_line.removesuffix(" &"))  # in the background: the batch shell traps SIGTERM
    assert srun[:3] == ["srun", "--kill-on-bad-exit=1", f"--cpus-per-task={8 if per == 'gpu' else 32}"]
    assert srun[4:] == ["-m", "lax_pretrain.train", f"--workdir={workdir}", *TRAIN_ARGS]
    assert any(line.strip() == 'scontrol requeue "$SLURM_JOB_ID"' for line in body)
    assert not workdir.exists()  # a dry run writes nothing
