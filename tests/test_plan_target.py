"""lax-plan --target: the train step compiled by a TPU's (libtpu) and an H100's (XLA:GPU) compiler on this CPU host.

Each plan runs as a user runs it: `lax-plan --target=... --json` from this process, which starts the compile
in the plan venv's python (`make install-plan`). Checked: the per-device parameter and optimizer bytes equal
the analytic parameter count x dtype size / shards (derived here from each parameter's logical axes and the
documented rule embed -> fsdp), and the compiler's own argument buffers hold them (exactly on the GPU; the TPU
pads to its tiles, reported as `argument_padding` and counted in the peak); the compiled FLOPs equal the
analytic count where the step does no extra matmul work; a step past a v5e's 16 GiB is refused by the TPU
compiler itself; the target path and the CPU path agree on argument bytes; a missing compiler is one line
naming the install step. Without the plan venv the target tests are skipped (make test installs it).
About 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from flax import nnx

from lax_pretrain import plan as plan_cli
from lax_pretrain.config import llama_config
from lax_pretrain.models.stats import abstract_model, model_stats
from lax_pretrain.nnx_compat import logical_axes
from lax_pretrain.optim import make_optimizer
from lax_pretrain.targets import parse_target
from lax_pretrain.targets.compilers import compiler_present, plan_python
from lax_pretrain.train.roofline import hlo_cost

ROOT = Path(__file__).resolve().parents[1]
BATCH, SEQ, SHARDS = 8, 256, 4
CASES = {  # name -> (compact config argument, overrides)
    "nano": ("nano", ()),
    "60m": ("60m,precision=bf16,scan=1", ()),
}
TARGETS = ("v5e:2x2", "h100x4")

needs_plan_venv = pytest.mark.skipif(plan_python() is None, reason="no plan venv: run `make install-plan`")


def plan_args(case: str, *extra: str, batch: int = BATCH) -> list[str]:
    compact, overrides = CASES[case]
    return [
        f"--config=configs/llama.py:{compact}",
        f"--mesh=1,{SHARDS},1",
        f"--config.train.batch_size={batch}",
        f"--config.data.seq_len={SEQ}",
        *overrides,
        *extra,
        "--json",
    ]


def run_plan(args: list[str]) -> tuple[int, dict]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = plan_cli.main(args)
    return status, json.loads(buffer.getvalue())  # the whole of stdout is one JSON document


@pytest.fixture(scope="module")
def reports() -> dict[tuple[str, str], tuple[int, dict]]:
    if plan_python() is None:
        pytest.skip("no plan venv: run `make install-plan`")
    return {(c, t): run_plan(plan_args(c, f"--target={t}")) for c in CASES for t in TARGETS}


def expected_state_bytes(case: str) -> tuple[int, int, int]:
    """(parameter bytes per device, optimizer bytes per device, parameter count) from the logical axes:
    a parameter with an 'embed' dimension that fsdp divides is split over the fsdp shards."""
    compact, _ = CASES[case]
    preset, *pairs = compact.split(",")
    config = llama_config(preset, **dict(p.split("=") for p in pairs))
    model = abstract_model(config.model)
    params = nnx.state(model, nnx.Param)
    per_device, count = 0, 0
    for _, variable in nnx.to_flat_state(params):
        names = logical_axes(variable) or ()
        size = math.prod(variable.shape)
        count += size
        split = any(n == "embed" and d % SHARDS == 0 for n, d in zip(names, variable.shape))
        per_device += size * variable.dtype.itemsize // (SHARDS if split else 1)
    # AdamW: two moments of the parameters' dtype, sharded as they are, plus replicated scalar step counts.
    opt_state = jax.eval_shape(make_optimizer(config.optim, config.train.steps)[0].init, params)
    moments = [x for x in jax.tree.leaves(opt_state) if x.ndim > 0]
    scalars = [x for x in jax.tree.leaves(opt_state) if x.ndim == 0]
    assert {x.dtype for x in moments} == {x.dtype for x in jax.tree.leaves(params)}
    assert count == model_stats(config.model, SEQ).total_params
    return per_device, 2 * per_device + sum(x.dtype.itemsize for x in scalars), count


@needs_plan_venv
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES)
def test_state_bytes_per_device_are_the_analytic_counts(reports, case, target):
    status, r = reports[case, target]
    params, opt, count = expected_state_bytes(case)
    m = r["memory"]
    assert status == 0 and r["params"] == count
    assert m["parameters"] == params and m["optimizer_state"] == opt
    # The compiler's argument buffers: parameters, optimizer state, batch and the int32 step, exactly on the
    # GPU; the TPU adds its tile padding (a few % here), which the peak counts.
    step_bytes = 4
    if target.startswith("h100"):
        assert m["argument_bytes_compiler"] == m["arguments"] + step_bytes
    else:
        assert m["arguments"] < m["argument_bytes_compiler"] <= 1.1 * m["arguments"] + 2**20
    assert m["argument_padding"] == m["argument_bytes_compiler"] - m["arguments"] - step_bytes
    assert (m["argument_padding"] == 0) == target.startswith("h100")
    assert m["peak"] == (
        m["arguments"]
        + m["argument_padding"]
        + m["outputs"]
        - m["aliased"]
        + m["temporaries"]
        + m["generated_code"]
    )


@needs_plan_venv
def test_the_target_decides_the_device_choices_and_the_report_is_well_formed(reports):
    for (_case, target), (_, r) in reports.items():
        t = parse_target(target)
        assert r["target"]["name"] == target and r["target"]["platform"] == t.platform
        assert r["devices"] == SHARDS and r["mesh"] == {"data": 1, "fsdp": SHARDS, "tensor": 1}
        assert (
            r["target"]["device_kind"] == {"tpu": "TPU v5 lite", "gpu": "NVIDIA H100 80GB HBM3"}[t.platform]
        )
        (a,) = r["accelerators"]
        assert a["name"] == t.accelerator and a["fits"] is True and a["step_s"] > 0
        assert r["flops"]["compiled"] > 0 and r["collectives"]["all-gather"]["count"] > 0
        assert r["collective_links"]["dcn"]["total"] == 0  # one slice, one host
        assert r["collective_links"]["ici"]["total"] == r["total_collective_bytes"]
        text = plan_cli.format_report(r)
        assert f"compiled for {target}" in text and "memory from the target compiler" in text
    # bf16 on an H100: cuDNN flash attention, as the run would pick (XLA's on the TPU and in float32).
    assert reports["60m", "h100x4"][1]["choices"]["attention"] == ["cudnn"]
    assert reports["60m", "v5e:2x2"][1]["choices"]["attention"] == ["xla"]
    assert reports["nano", "h100x4"][1]["choices"]["attention"] == ["xla"]
    assert "no autotuning" in " ".join(reports["60m", "h100x4"][1]["xla"]["notes"])
    # The compiled matmuls (TPU convolutions, cuDNN attention counted as its matmuls) are the analytic count:
    # no remat, and the dense model has no matmul the analytic count leaves out. Exactly on the TPU; the GPU
    # compiler widens one small dot of the nano step (K 64 -> 68: +0.03%).
    for target, rel in (("v5e:2x2", 1e-9), ("h100x4", 1e-3)):
        for case in CASES:
            flops = reports[case, target][1]["flops"]
            assert flops["compiled"] == pytest.approx(flops["analytic"], rel=rel), (case, target)
            assert flops["compiled"] >= flops["analytic"]


@needs_plan_venv
def test_a_step_past_a_v5e_is_refused_by_the_tpu_compiler():
    status, r = run_plan(plan_args("60m", "--target=v5e:2x2", batch=2048))
    assert status == 1
    oom = r["out_of_memory"]
    assert "RESOURCE_EXHAUSTED" in oom["message"]
    # XLA prints binary units: "exceeds available HBM (15.75G)" = 15.75 GiB of the chip's 16 GiB.
    assert 15 * 2**30 < oom["available_bytes"] < 16 * 2**30 < oom["required_bytes"]
    (a,) = r["accelerators"]
    assert (
        a["fits"] is False and "does not fit" in a["verdict"] and a["limit_bytes"] == oom["available_bytes"]
    )
    assert r["memory"]["parameters"] == expected_state_bytes("60m")[0]  # the state still reported
    assert "DOES NOT FIT" in plan_cli.format_report(r)


@needs_plan_venv
def test_the_target_and_the_cpu_path_agree_on_argument_bytes(reports):
    status, cpu = run_plan(plan_args("nano", f"--devices={SHARDS}"))
    _, gpu = reports["nano", "h100x4"]
    assert status == 0 and cpu["target"]["platform"] == "cpu"
    assert cpu["memory"]["argument_bytes_compiler"] == gpu["memory"]["argument_bytes_compiler"]
    for key in ("parameters", "optimizer_state", "batch", "arguments"):
        assert cpu["memory"][key] == gpu["memory"][key]


def test_a_missing_compiler_is_one_line_naming_the_install_step(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LAX_PLAN_PYTHON", str(tmp_path / "no-such-python"))
    status = plan_cli.main(plan_args("nano", "--target=v5p:2x2x1")[:-1])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: --target=v5p:2x2x1 needs libtpu") and "make install-plan" in err


@pytest.mark.parametrize(
    "args,flag",
    [
        (["--target=h100x12"], "h100x12"),
        (["--target=v5e:2x2x2"], "v5e:2x2x2"),
        (["--target=tpu9:2x2"], "tpu9"),
    ],
)
def test_bad_targets_are_one_line_errors(capsys, args, flag):
    status = plan_cli.main(plan_args("nano", *args)[:-1])
    out, err = capsys.readouterr()
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1 and flag in err


def test_the_main_venv_has_no_target_compiler():
    """libtpu or the CUDA plugin beside jax would change how jax starts for every command."""
    assert not compiler_present("tpu") and not compiler_present("gpu")


def test_convolution_flops_count_only_real_taps():
    """TPU HLO: a matmul as a convolution, and a batched matmul whose batch is a spatial dimension with a
    window of 2, base dilation 2 and stride 1 (each output sees one real tap of two)."""
    hlo = """HloModule m, num_partitions=1
ENTRY %main (a: bf16[64,128], b: bf16[128,32], c: bf16[2,16,8], d: bf16[2,8,4]) -> bf16[64,32] {
  %a = bf16[64,128]{1,0} parameter(0)
  %b = bf16[128,32]{1,0} parameter(1)
  %c = bf16[2,16,8]{2,1,0} parameter(2)
  %d = bf16[2,8,4]{2,1,0} parameter(3)
  %mm = bf16[64,32]{1,0} convolution(%a, %b), dim_labels=bf_io->bf
  %bmm = bf16[2,16,4]{2,1,0} convolution(%c, %d), window={size=2 lhs_dilate=2}, dim_labels=0bf_0io->0bf
  ROOT %t = bf16[64,32]{1,0} copy(%mm)
}
"""
    assert hlo_cost(hlo).flops == 2 * 64 * 128 * 32 + 2 * (2 * 16 * 8 * 4)


def test_cudnn_attention_flops_are_the_matmuls_it_replaces():
    b, t, h, e = 2, 128, 4, 64
    q = f"bf16[{b},{t},{h},{e}]"
    hlo = f"""HloModule m, num_partitions=1
ENTRY %main (q: {q}, k: {q}, v: {q}) -> {q} {{
  %q = {q}{{3,2,1,0}} parameter(0)
  %k = {q}{{3,2,1,0}} parameter(1)
  %v = {q}{{3,2,1,0}} parameter(2)
  %f = ({q}{{3,2,1,0}}, u8[0]{{0}}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmax"
  %g = ({q}{{3,2,1,0}}, u8[0]{{0}}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmaxBackward"
  ROOT %o = {q}{{3,2,1,0}} get-tuple-element(%f), index=0
}}
"""
    assert hlo_cost(hlo).flops == (4 + 8) * b * t * h * t * e


@needs_plan_venv
def test_plan_vs_measured_puts_a_measured_peak_beside_the_target_plan(tmp_path):
    """scripts/plan_vs_measured.py (device_check.sh's last step) on one device-suite row: the plan is
    lax-plan --target=h100x1 of that row's config, the ratio measured / plan."""
    row = {
        "row": "step",
        "status": "ok",
        "preset": "nano",
        "shrunk": True,
        "name": "cola+kron",
        "kind": "cola",
        "crossing": "kron",
        "dtype": "bfloat16",
        "batch_size": 2,
        "seq_len": 32,
        "device_kind": "NVIDIA H100 80GB HBM3",
        "measured_peak_bytes": 3 * 2**20,
        "planner_peak_bytes": 2**20,
    }
    (tmp_path / "bench.json").write_text(json.dumps({"suites": {"device": {"rows": [row, {"row": "kron"}]}}}))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plan_vs_measured.py"), f"--bench={tmp_path / 'bench.json'}"],
        capture_output=True,
        text=True,
        check=True,
    )
    (result,) = json.loads((tmp_path / "plan_vs_measured.json").read_text())
    assert result["target"] == "h100x1" and result["plan_error"] is None
    assert result["measured_over_plan"] == pytest.approx(3 * 2**20 / result["plan_peak_bytes"])
    assert "| nano | cola+kron | 2x32 |" in done.stdout


def test_loops_without_a_trip_count_are_counted_from_their_condition():
    """libtpu writes no known_trip_count: `i < 4` from 0 by 2 (a bidirectional windowed einsum) runs twice."""
    hlo = """HloModule m, num_partitions=1
%cond (p: (u32[], f32[8,8])) -> pred[] {
  %p = (u32[], f32[8,8]) parameter(0)
  %limit = u32[] constant(4)
  %i = u32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %limit), direction=LT
}
%body (q: (u32[], f32[8,8])) -> (u32[], f32[8,8]) {
  %q = (u32[], f32[8,8]) parameter(0)
  %two = u32[] constant(2)
  %j = u32[] get-tuple-element(%q), index=0
  %x = f32[8,8] get-tuple-element(%q), index=1
  %next = u32[] add(%j, %two)
  %y = f32[8,8] dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %t = (u32[], f32[8,8]) tuple(%next, %y)
}
ENTRY %main (a: f32[8,8]) -> f32[8,8] {
  %a = f32[8,8] parameter(0)
  %zero = u32[] constant(0)
  %start = u32[] copy(%zero)
  %init = (u32[], f32[8,8]) tuple(%start, %a)
  %w = (u32[], f32[8,8]) while(%init), condition=%cond, body=%body
  ROOT %r = f32[8,8] get-tuple-element(%w), index=1
}
"""
    assert hlo_cost(hlo).flops == 2 * (2 * 8 * 8 * 8)
