"""Multi-slice TPU meshes, compiled by the TPU compiler (libtpu) for two slices of a v5e:2x2 (8 chips, one host
per slice) on this CPU machine: `lax-plan --target=v5e:2x2 --slices=2` with the slices on `mesh.dcn_data` or
`mesh.dcn_fsdp`. The collective report splits the step's bytes into those that stay on a slice's ICI and those
that cross the data-centre network (DCN): libtpu hands the latter to its MegaScale runtime as send/recv pairs,
which parallel/dcn.py reads. Also: a multi-host topology compiled here is checked per host, as its run would be.

Each compile runs in the plan venv (`make install-plan`; `make test` installs it). About 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
from flax import nnx

from lax_pretrain.config import from_compact
from lax_pretrain.models.stats import abstract_model
from lax_pretrain.nnx_compat import logical_axes
from lax_pretrain.parallel import DEFAULT_RULES, logical_to_spec
from lax_pretrain.targets.compilers import plan_environment, plan_python
from lax_pretrain.train.accelerators import accelerator

pytestmark = pytest.mark.slow  # target compiles

ARG = "nano,kind=cola,lax=kron,scan=1"
NANO = [
    f"--config=configs/llama.py:{ARG}",
    "--config.train.batch_size=8",
]


def tpu_python():
    python = plan_python()
    if python is None:
        pytest.skip("the TPU compiler (libtpu) is not installed: run `make install-plan`")
    has_libtpu = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util, sys; sys.exit(importlib.util.find_spec('libtpu') is None)",
        ],
        check=False,
    )
    if has_libtpu.returncode != 0:
        pytest.skip(f"{python} has no libtpu: run `make install-plan`")
    return python


def lax_plan(*args: str) -> subprocess.CompletedProcess:
    """`lax-plan --target ...` as the command runs it: the plan venv's python with the plan environment.
    Several libtpu processes may compile at once (pytest -n 2): each is allowed to load it."""
    env = plan_environment({**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
    return subprocess.run(
        [str(tpu_python()), "-m", "lax_pretrain.plan", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def plan_json(*args: str) -> dict:
    proc = lax_plan(*NANO, "--target=v5e:2x2", "--slices=2", "--json", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_data_parallel_across_two_slices_syncs_gradients_over_dcn():
    """Slices on `data` (dcn_data=2, data=4 inside each): parameters replicated, and the gradient all-reduce
    split by the compiler into an in-slice reduce-scatter, an all-reduce of each chip's quarter over DCN and an
    in-slice all-gather. So DCN carries at least a quarter of the gradient bytes per chip and less than all of
    them (small tensors travel padded to the TPU's 8 x 128 tiles, so more than exactly a quarter)."""
    r = plan_json("--config.mesh.dcn_data=2")
    assert r["target"]["slices"] == 2 and r["devices"] == 8
    assert r["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    grads = r["parameter_bytes_unsharded"]  # float32 gradients, as the parameters
    assert r["memory"]["parameters"] == grads  # replicated
    dcn, ici = r["collective_links"]["dcn"], r["collective_links"]["ici"]
    assert grads / 4 <= dcn["all-reduce"] < grads
    assert dcn["total"] == dcn["all-reduce"]  # nothing else crosses slices
    assert ici["reduce-scatter"] > 0 and ici["all-gather"] > 0
    # The comm report's per-kind bytes are the in-slice collectives (the DCN transfers are not instructions).
    assert ici["total"] == sum(v["bytes"] for v in r["collectives"].values())
    # The roofline prices the in-slice bytes at ICI and the MegaScale transfers at DCN (an all-reduce twice).
    v5e = accelerator("v5e")
    (est,) = r["accelerators"]
    expected = (
        sum((2 if k == "all-reduce" else 1) * b for k, b in ici.items() if k != "total") / v5e.ici_bytes_per_s
    )
    expected += 2 * dcn["all-reduce"] / v5e.dcn_bytes_per_s
    assert est["name"] == "v5e" and est["collective_s"] == pytest.approx(expected, rel=1e-9)


def sharded_parameter_bytes(mesh_shape: dict[str, int]) -> int:
    """Per-device bytes of the nano model's parameters sharded by the rules table over `mesh_shape`."""
    total = 0
    for _, variable in nnx.to_flat_state(
        nnx.state(abstract_model(from_compact("llama", ARG).model), nnx.Param)
    ):
        names = logical_axes(variable) or (None,) * variable.ndim
        spec = logical_to_spec(names, variable.shape, mesh_shape, DEFAULT_RULES)
        ways = math.prod(
            mesh_shape[a] for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)
        )
        total += math.prod(variable.shape) * variable.dtype.itemsize // ways
    return total


def test_fsdp_across_two_slices_gathers_parameters_over_dcn():
    """Slices on `fsdp` (dcn_fsdp=2, fsdp=4 inside each): the rules shard the parameters over all 8 chips of
    both slices, as fsdp=8 on one slice would, and the forward's parameter all-gathers cross DCN."""
    r = plan_json("--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.dcn_fsdp=2")
    assert r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert r["memory"]["parameters"] == sharded_parameter_bytes(r["mesh"])
    assert r["memory"]["parameters"] < 0.7 * r["parameter_bytes_unsharded"]
    dcn = r["collective_links"]["dcn"]
    assert dcn["all-gather"] > 0 and dcn["all-reduce"] > 0


def test_slices_the_mesh_does_not_name_are_one_line_errors():
    proc = lax_plan(*NANO, "--target=v5e:2x2", "--slices=2")
    assert proc.returncode == 2
    assert "mesh.dcn_data x mesh.dcn_fsdp = 1 x 1 = 1 slices, but the 8 devices form 2 slices" in proc.stderr


def test_a_multi_host_topology_is_checked_per_host():
    """v5e:4x4 is 4 hosts of 4 chips. Its mesh follows the torus, so the hosts interleave along `data`: allowed,
    each host still holds its own 4 of 16 rows. With the batch replicated over `tensor`, each host would load
    its own rows of a batch every device holds whole: refused from the topology's hosts, though one CPU host
    compiles."""
    script = (
        "from lax_pretrain.config import from_compact\n"
        "from lax_pretrain.parallel import DEFAULT_RULES, batch_sharding, check_process_rows, make_mesh\n"
        "from lax_pretrain.targets.devices import target_devices\n"
        "config = from_compact('llama', 'nano')\n"
        "config.mesh.update(data=16)\n"
        "mesh = make_mesh(config.mesh, devices=target_devices('v5e:4x4'))\n"
        "check_process_rows(batch_sharding(mesh, 2, DEFAULT_RULES), 16)\n"
        "print([d.process_index for d in mesh.devices.flat])\n"
    )
    env = plan_environment({**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
    proc = subprocess.run(
        [str(tpu_python()), "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    hosts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(hosts) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 and hosts != sorted(hosts)

    proc = lax_plan(
        *NANO, "--target=v5e:4x4", "--config.mesh.data=1", "--config.mesh.tensor=16", "--config.mesh.fsdp=1"
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        "process 0 of 4 loads 2 rows of each global batch but its devices would hold 8 (0..7)" in proc.stderr
    )
