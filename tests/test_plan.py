"""lax-plan and the pre-flight memory check, on a small CoLA + LaX model over the 8 fake CPU devices of conftest.

The planner's per-device parameter and optimizer bytes are checked against the analytic parameter count
(`model_stats`) x dtype size / shards, derived here from each parameter's logical axes and the documented
rules table (embed -> fsdp); its collective bytes against the comm report of an independent compile; a config
judged against a small limit is reported as not fitting; `--json` parses; bad flags are one-line errors.
The HLO reader's FLOPs are checked against a hand count and the analytic count, loop iterations included.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from lax_pretrain import plan as plan_cli
from lax_pretrain.config import llama_config
from lax_pretrain.models.stats import abstract_model, model_stats
from lax_pretrain.nnx_compat import logical_axes
from lax_pretrain.parallel import make_mesh
from lax_pretrain.parallel.comm import comm_report
from lax_pretrain.train.accelerators import accelerator
from lax_pretrain.train.preflight import DoesNotFit, check_fits, compiler_options, step_memory
from lax_pretrain.train.program import build_program
from lax_pretrain.train.roofline import hlo_cost, roofline

SMALL = {"d_model": 64, "num_heads": 2, "num_kv_heads": 2, "ffn_dim": 128, "num_layers": 3}
BATCH, SEQ = 16, 32
# The factored kron gate runs the analytic count's dots exactly; `auto` may pick the (r x r) GEMM on CPU, which
# does more FLOPs than the model needs (MFU counts the model's).
KRON_IMPL = "factored"
COMPACT = "nano,kind=cola,lax=kron,rank=16"


def small_config(mesh=(1, 8, 1)):
    config = llama_config("nano", kind="cola", lax="kron", rank=16)
    config.model.update(SMALL)
    config.model.linear.kron_impl = KRON_IMPL
    config.train.batch_size = BATCH
    config.data.seq_len = SEQ
    config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2], num_devices=math.prod(mesh))
    return config


def cli_args(mesh: str, *extra: str) -> list[str]:
    overrides = [f"--config.model.{k}={v}" for k, v in SMALL.items()]
    return [
        f"--config=configs/llama.py:{COMPACT}",
        "--devices=8",
        f"--mesh={mesh}",
        *overrides,
        f"--config.model.linear.kron_impl={KRON_IMPL}",
        f"--config.train.batch_size={BATCH}",
        f"--config.data.seq_len={SEQ}",
        *extra,
    ]


def run_cli(capsys, args: list[str]) -> tuple[int, str, str]:
    status = plan_cli.main(args)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def reports() -> dict[str, tuple[int, dict]]:
    """(exit status, --json report): FSDP over the 8 devices on three accelerators; data parallelism (every
    parameter replicated) judged against 1 MiB."""
    out = {}
    for name, mesh, extra in (
        ("fsdp", "1,8,1", "--accelerator=h100,v5p,v5e"),
        ("data", "8,1,1", "--memory_gib=0.0009765625"),
    ):
        with _captured() as text:
            status = plan_cli.main(cli_args(mesh, "--json", extra))
        out[name] = status, json.loads(text.getvalue())  # the whole of stdout is one JSON document
    return out


@contextlib.contextmanager
def _captured():
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


@pytest.fixture(scope="module")
def compiled():
    config = small_config()
    program = build_program(config, make_mesh(config.mesh), abstract=True)
    return program.lower_train_step().compile(compiler_options=compiler_options() or None)


def expected_parameter_bytes(config, fsdp: int) -> int:
    """Per device: each parameter's elements x 4 bytes, / fsdp where it has an 'embed' axis fsdp divides."""
    model = abstract_model(config.model)
    total_elements, per_device = 0, 0
    for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = logical_axes(variable) or ()
        size = math.prod(variable.shape)
        total_elements += size
        sharded = any(n == "embed" and d % fsdp == 0 for n, d in zip(names, variable.shape))
        per_device += size * 4 // (fsdp if sharded else 1)
    assert total_elements == model_stats(config.model, SEQ).total_params
    return per_device


@pytest.mark.parametrize("name,fsdp", [("data", 1), ("fsdp", 8)])
def test_parameter_and_optimizer_bytes_are_the_analytic_counts(reports, name, fsdp):
    _, r = reports[name]
    config = small_config()
    expected = expected_parameter_bytes(config, fsdp)
    assert r["params"] == model_stats(config.model, SEQ).total_params
    assert r["memory"]["parameters"] == expected
    # AdamW: two float32 moments per parameter, sharded as it is, and int32 step counts (replicated).
    opt_state = jax.eval_shape(_tx(config).init, _abstract_params(config))
    counts = [x for x in jax.tree.leaves(opt_state) if x.ndim == 0]
    assert r["memory"]["optimizer_state"] == 2 * expected + 4 * len(counts)
    assert r["memory"]["gradients"] == expected


def _tx(config):
    from lax_pretrain.optim import make_optimizer

    return make_optimizer(config.optim, config.train.steps)[0]


def _abstract_params(config):
    return nnx.state(abstract_model(config.model), nnx.Param)


def test_collective_bytes_equal_the_comm_report(reports, compiled):
    _, r = reports["fsdp"]
    report = comm_report(compiled)
    assert r["collectives"] == report["collectives"]
    assert r["total_collective_bytes"] == report["total_collective_bytes"] > 0


def test_json_is_well_formed(reports):
    status, r = reports["fsdp"]
    assert status == 0
    assert [a["name"] for a in r["accelerators"]] == ["h100", "v5p", "v5e"]
    for a in r["accelerators"]:
        assert a["fits"] is True and a["limit_bytes"] == accelerator(a["name"]).hbm_bytes
        assert a["step_s"] == max(a["compute_s"], a["hbm_s"], a["collective_s"])
        assert a["step_s_hbm_hidden"] == max(a["compute_s"], a["collective_s"])
        assert a["serial_s"] == pytest.approx(a["compute_s"] + a["hbm_s"] + a["collective_s"])
        assert 0 < a["mfu"] < 1
    m = r["memory"]
    assert m["peak"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["generated_code"]
    assert r["flops"]["compiled"] == r["flops"]["analytic"]  # dots only in both; no remat here
    assert r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and r["devices"] == 8
    text = plan_cli.format_report(r)
    assert "h100: the train step needs" in text and "CPU compilation estimates accelerator memory" in text


def test_a_step_beyond_a_small_limit_is_reported_as_not_fitting(reports):
    status, r = reports["data"]
    assert status == 1
    (a,) = r["accelerators"]
    assert a["fits"] is False and a["limit_bytes"] == 2**20 < r["memory"]["peak"]
    assert a["verdict"].startswith("the train step needs") and "does not fit in the 1.0 MiB" in a["verdict"]
    for key in ("model.remat", "mesh.fsdp", "train.batch_size", "train.grad_accum"):
        assert key in a["verdict"]


def test_replicated_low_rank_factors_are_named_with_the_rule_that_shards_them():
    """Under pure FSDP the rules shard only the factor with an `embed` axis: a step that does not fit says so
    and gives the rule; with that rule (set on the command line) the parameters shard and the hint is gone."""
    tight = "--memory_gib=0.0009765625"
    reports = {}
    for name, extra in (("default", ()), ("rank_rule", ("--config.parallel.rules=(('rank','fsdp'),)",))):
        with _captured() as text:
            assert plan_cli.main(cli_args("1,8,1", "--json", tight, *extra)) == 1
        reports[name] = json.loads(text.getvalue())
    default, ruled = reports["default"], reports["rank_rule"]
    sharded = default["parameter_bytes_unsharded"] / 8
    assert default["memory"]["parameters"] >= 2 * sharded
    assert "rank axis unsharded" in default["accelerators"][0]["verdict"]
    assert plan_cli.RANK_RULE in default["accelerators"][0]["verdict"]
    assert ruled["memory"]["parameters"] < 1.2 * sharded  # small leftovers (norms) stay replicated
    assert "rank axis" not in ruled["accelerators"][0]["verdict"]


@pytest.mark.parametrize(
    "args,flag",
    [
        (["--mesh=2,2,1"], "--mesh=2,2,1"),
        (["--mesh=8"], "--mesh=8"),
        (["--accelerator=h900"], "--accelerator='h900'"),
        (["--devices=0"], "--devices=0"),
    ],
)
def test_bad_flags_are_one_line_errors(capsys, args, flag):
    base = [a for a in cli_args("1,8,1") if not any(a.startswith(x.split("=")[0] + "=") for x in args)]
    status, out, err = run_cli(capsys, [*base, *args])
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and flag in err


class FakeDevice:
    device_kind = "fake accelerator"

    def __init__(self, limit: int | None):
        self.limit = limit

    def memory_stats(self):
        return None if self.limit is None else {"bytes_limit": self.limit, "bytes_in_use": 0}


def test_check_fits_against_a_device_limit(compiled):
    memory = step_memory(compiled)
    assert check_fits(compiled, FakeDevice(None)) is None  # CPU: no statistics, no check
    assert check_fits(compiled, FakeDevice(memory.peak)) == memory
    with pytest.raises(DoesNotFit) as e:
        check_fits(compiled, FakeDevice(memory.peak - 1))
    message = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in message
    assert "fake accelerator" in message and "largest: temporaries" in message
    for key in ("model.remat", "mesh.fsdp", "train.batch_size", "train.grad_accum"):
        assert key in message


def test_hlo_flops_count_every_loop_iteration():
    """A scan of 5 matmuls, differentiated: 3 x 5 x 2MNK dot FLOPs, where XLA's cost_analysis sees one body."""

    def f(w, x):
        h, _ = jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)
        return h.sum()

    w, x = jax.ShapeDtypeStruct((5, 64, 64), jnp.float32), jax.ShapeDtypeStruct((32, 64), jnp.float32)
    c = jax.jit(jax.grad(f)).lower(w, x).compile()
    assert hlo_cost(c.as_text()).flops == 3 * 5 * 2 * 32 * 64 * 64
    assert c.cost_analysis()["flops"] < 3 * 5 * 2 * 32 * 64 * 64 / 2


@pytest.mark.slow
def test_hlo_cost_of_the_scanned_model_matches_the_unrolled_one(compiled):
    """The step with blocks 1..2 under nnx.scan (a loop of 2) and unrolled (`compiled`): the same dot FLOPs,
    = the analytic count; the unrolled step's HBM bytes agree with XLA's own `bytes accessed` (no loop there
    to miscount) up to the pure dtype conversions XLA:CPU adds, which we count as free."""
    config = small_config()
    config.model.scan_layers = True
    scanned = build_program(config, make_mesh(config.mesh), abstract=True).lower_train_step().compile()
    analytic = model_stats(config.model, SEQ).train_flops_per_token * BATCH * SEQ / 8
    unrolled = hlo_cost(compiled.as_text())
    assert unrolled.flops == hlo_cost(scanned.as_text()).flops == analytic
    assert scanned.cost_analysis()["flops"] < analytic  # XLA counts the loop body once
    assert unrolled.hbm_bytes == pytest.approx(compiled.cost_analysis()["bytes accessed"], rel=0.02)


def test_collectives_are_timed_at_the_link_their_groups_cross():
    """Two all-reduces of 4 KiB on a (8, 8) mesh laid out transposed: over 'x' each group is 8 consecutive
    devices (one NVLink node of an H100 cluster), over 'y' each group spans all 8 nodes (the scale-out NICs)."""
    hlo = """HloModule m
ENTRY %main (p: f32[1024]) -> f32[1024] {
  %p = f32[1024]{0} parameter(0)
  %a = f32[1024]{0} all-reduce(%p), channel_id=1, replica_groups=mesh['x'=8,'y'=8], device_ids=([8,8]T(1,0)) {'x'}, to_apply=%add
  ROOT %b = f32[1024]{0} all-reduce(%a), channel_id=2, replica_groups=mesh['x'=8,'y'=8], device_ids=([8,8]T(1,0)) {'y'}, to_apply=%add
}
"""
    cost = hlo_cost(hlo)
    groups = {g[0][:3] for _, g, _ in cost.collectives}
    assert groups == {(0, 1, 2), (0, 8, 16)}
    h100, v5p = accelerator("h100"), accelerator("v5p")
    est = roofline(cost, h100, num_devices=64, model_flops=1.0)
    assert est.collective_s == pytest.approx(
        2 * 4096 / h100.ici_bytes_per_s + 2 * 4096 / h100.dcn_bytes_per_s
    )
    # A 64-chip v5p slice: both inside one ICI domain.
    assert roofline(cost, v5p, num_devices=64, model_flops=1.0).collective_s == pytest.approx(
        4 * 4096 / v5p.ici_bytes_per_s
    )
    assert roofline(cost, accelerator("h100-pcie"), num_devices=64, model_flops=1.0).step_s is None


class FakeCpu(FakeDevice):
    """A CPU device (no memory statistics): the host's available memory is its limit."""

    device_kind = "cpu"
    platform = "cpu"


def test_check_fits_on_a_cpu_host_uses_its_available_memory(compiled, monkeypatch):
    """On CPU the limit is the host's available memory shared by its CPU devices (8 here, conftest.py)."""
    import lax_pretrain.train.preflight as preflight

    memory = step_memory(compiled)
    n_cpu = sum(1 for d in jax.local_devices() if d.platform == "cpu")
    monkeypatch.setattr(preflight, "host_memory_available", lambda: memory.peak * n_cpu)
    assert check_fits(compiled, FakeCpu(None)) == memory
    monkeypatch.setattr(preflight, "host_memory_available", lambda: memory.peak * n_cpu - n_cpu)
    with pytest.raises(DoesNotFit, match=rf"host memory per CPU device .*shared by {n_cpu}"):
        check_fits(compiled, FakeCpu(None))
    assert preflight.host_memory_available() > 0  # this Linux host reports one
