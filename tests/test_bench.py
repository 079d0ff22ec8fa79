"""Smoke tests of the benchmark suites (`scripts/bench.py --tiny`): well-formed bench.json / bench.md with every
expected row, FLOP numbers equal to the layers' and models' analytic counts, and the target logic.

One module fixture runs `scripts/bench.py --suite=all --tiny` once (in this process, through the script's
`main`); everything else reads its output. No timing is asserted (the machine is shared).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lax_pretrain import timing
from lax_pretrain.bench import device as bench_device
from lax_pretrain.bench import layers as bench_layers
from lax_pretrain.bench import loop as bench_loop
from lax_pretrain.bench import memory as bench_memory
from lax_pretrain.bench import models as bench_models
from lax_pretrain.bench import reference as bench_reference
from lax_pretrain.bench import report
from lax_pretrain.layers import make_linear
from lax_pretrain.layers.variants import variant_name
from lax_pretrain.models import build, get_task
from lax_pretrain.models.stats import model_stats

ROOT = Path(__file__).resolve().parents[1]
TARGET_STATUSES = ("met", "missed", "not measurable here")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    _load_script("bench").main(["--suite=all", "--tiny", f"--out={out}"])
    data = json.loads((out / report.JSON_NAME).read_text())
    return out, data, (out / report.MD_NAME).read_text()


# ---------------------------------------------------------------------------------------------- layers


@pytest.mark.slow  # the tiny benchmark suite, run once for the module
def test_layers_rows_and_flops(tiny):
    _, data, _ = tiny
    suite = data["suites"]["layers"]
    assert suite["settings"]["widths"] == [64] and suite["tiny"]
    rows = suite["rows"]
    expected = bench_layers.layer_variants(64)
    assert [r["name"] for r in rows] == [v.name for v in expected]
    assert len(rows) == 1 + 2 * 4 + 2 * 4  # dense; svd, cola x 4 crossings; tt x 2 orders x 4 crossings
    dense = rows[0]
    for v, r in zip(expected, rows):
        layer = make_linear(64, 64, v.spec, rngs=nnx.Rngs(0))
        assert r["flops_per_token"] == layer.flops_per_token, v.name
        assert r["params"] == layer.param_count, v.name
        assert r["train_flops_per_token"] == 3 * layer.flops_per_token
        t = r["time_per_call"]
        assert t["repeats"] == 2 and t["min"] <= t["median"] <= t["max"] and t["min"] > 0
        assert math.isclose(r["time_per_token_s"], t["median"] / r["tokens"])
        assert math.isclose(r["flop_ratio_vs_dense"], r["flops_per_token"] / dense["flops_per_token"])
        assert math.isclose(r["time_ratio_vs_dense"], r["time_per_token_s"] / dense["time_per_token_s"])
        assert math.isclose(r["measured_over_predicted"], r["time_ratio_vs_dense"] / r["flop_ratio_vs_dense"])
        assert ("lax_overhead" in r) == (r["crossing"] != "none")
    # the two TT orders at r = d/4 and 4 cores: 64 -> modes (8, 8 | 8, 8), ranks (1, 8, 16, 8, 1)
    tt = {r["name"]: r for r in rows if r["kind"] == "tt"}
    assert tt["tt/factor_first"]["flops_per_token"] == 2 * 16 * (64 + 64)
    assert tt["tt/sequential"]["flops_per_token"] > tt["tt/factor_first"]["flops_per_token"]
    assert rows[1]["latent_dim"] == 16


# ---------------------------------------------------------------------------------------------- models


@pytest.mark.slow  # the tiny benchmark suite, run once for the module
def test_models_rows_and_flops(tiny):
    _, data, _ = tiny
    suite = data["suites"]["models"]
    rows = suite["rows"]
    names = [variant_name(k, c) for k, c in bench_models.model_variants()]
    assert [r["name"] for r in rows] == names
    assert names == ["dense", "svd", "svd+kron", "cola", "cola+kron", "tt", "tt+kron"]
    case = bench_models.default_cases(tiny=True)[0]
    for r in rows:
        config = bench_models.model_config("llama", "nano", r["kind"], r["crossing"], shrink=case.shrink)
        stats = model_stats(config.model, case.seq_len)
        assert r["train_flops_per_token"] == stats.train_flops_per_token == 3 * stats.flops_per_token
        assert r["params"] == stats.total_params and r["non_embedding_params"] == stats.non_embedding_params
        st = r["step_time"]
        assert st["repeats"] == 2 and st["min"] <= st["median"] <= st["max"]
        assert math.isclose(r["tokens_per_s"], case.batch_size * case.seq_len / r["step_time_s"])
        assert math.isclose(r["tflops_per_s"], r["train_flops_per_token"] * r["tokens_per_s"] / 1e12)
        assert r["mfu"] is None  # CPU: no peak
        assert ("lax_overhead" in r) == (r["crossing"] == "kron")
    assert any("MFU omitted" in n for n in suite["notes"])


@pytest.mark.slow
def test_vit_train_step_runs():
    """The ViT path of the models suite (dropout RNG streams in the frozen state), one variant."""
    case = bench_models.Case("vit", "tiny", 2, shrink=bench_models.TINY)
    from lax_pretrain.bench import fast_compile

    with fast_compile():
        rows = bench_models.run_case(case, variants=(("cola", "kron"),), repeats=1, log=lambda *_: None)
    assert [r["name"] for r in rows] == ["cola+kron"]
    r = rows[0]
    assert r["images_per_s"] > 0 and r["tokens_per_example"] == (28 // 4) ** 2 + 1
    assert math.isclose(r["tokens_per_s"], r["images_per_s"] * r["tokens_per_example"])


# ---------------------------------------------------------------------------------------------- memory


@pytest.mark.slow  # the tiny benchmark suite, run once for the module
def test_memory_rows(tiny):
    _, data, _ = tiny
    suite = data["suites"]["memory"]
    rows = suite["rows"]
    assert [r["name"] for r in rows] == ["dense", "cola", "cola remat=cola_m", "cola remat=full"]
    for r in rows:
        b = r["bytes"]
        assert all(isinstance(b[k], int) and b[k] >= 0 for k in ("temp", "argument", "output", "alias"))
        assert b["total"] == b["temp"] + b["argument"] + b["output"]
        assert b["argument"] > 0 and b["temp"] > 0
    by = {r["name"]: r for r in rows}
    # remat only changes activations, never the state
    assert by["cola remat=cola_m"]["bytes"]["argument"] == by["cola"]["bytes"]["argument"]
    assert by["cola remat=cola_m"]["temp_reduction_vs_no_remat"] > 1.0
    assert by["dense"]["bytes"]["argument"] > by["cola"]["bytes"]["argument"]


# ---------------------------------------------------------------------------------------- report / targets


@pytest.mark.slow  # the tiny benchmark suite, run once for the module
def test_json_and_markdown(tiny):
    out, data, md = tiny
    assert set(data["suites"]) == {"layers", "models", "memory", "reference", "loop"}  # accumulated
    for suite in data["suites"].values():
        m = suite["machine"]
        assert m["device_kind"] and m["cpu_count"] >= 1 and len(m["loadavg"]) == 3
        assert suite["command"].startswith("python scripts/bench.py") and suite["wall_s"] > 0
    for header in ("## Layers", "## Models", "## Memory", "## Reference", "## Loop", "## Targets"):
        assert header in md
    for r in data["suites"]["layers"]["rows"]:
        assert f"| {r['name']} | " in md and f"{r['flops_per_token']:,}" in md
    for r in data["suites"]["models"]["rows"]:
        assert f"| {r['name']} | {r['params']:,} |" in md
    for r in data["suites"]["memory"]["rows"]:
        assert f"| {r['preset']} (shrunk) | {r['name']} |" in md
    targets = data["targets"]
    assert len(targets) == 10
    for t in targets:
        assert t["status"].startswith(TARGET_STATUSES), t
        assert f"| {t['target']} | {t['status']} |" in md
    assert (
        targets[3]["status"]
        == targets[4]["status"]
        == "not measurable here (backend cpu: no peak FLOP/s, so no MFU)"
    )


def _model_row(name, kind, crossing, t, flops, *, mfu=None, preset="60m", dtype="float32"):
    return {
        "case": f"llama-{preset}",
        "family": "llama",
        "preset": preset,
        "name": name,
        "kind": kind,
        "crossing": crossing,
        "step_time_s": t,
        "step_time": {"min": t},
        "train_flops_per_token": flops,
        "mfu": mfu,
        "dtype": dtype,
    }


def _models(cola_t, kron_t):
    rows = [
        _model_row("dense", "dense", "none", 1.0, 100),
        _model_row("cola", "cola", "none", cola_t, 50),
        _model_row("cola+kron", "cola", "kron", kron_t, 51),
    ]
    for r in rows:
        r["step_time"]["max"] = r["step_time_s"]
    for r in rows:
        r["time_ratio_vs_dense"] = r["step_time_s"] / 1.0
        r["flop_ratio_vs_dense"] = r["train_flops_per_token"] / 100
        r["measured_over_predicted"] = r["time_ratio_vs_dense"] / r["flop_ratio_vs_dense"]
    rows[2]["lax_overhead"] = rows[2]["lax_overhead_min"] = kron_t / cola_t - 1
    return {"rows": rows, "machine": {"backend": "cpu"}}


def _memory(reduction):
    return {
        "rows": [
            {
                "preset": "60m",
                "kind": "cola",
                "crossing": "none",
                "remat": "cola_m",
                "temp_reduction_vs_no_remat": reduction,
            }
        ],
        "settings": {},
    }


def test_targets_met_missed_and_not_measurable():
    met = report.evaluate_targets({"models": _models(0.6, 0.615), "memory": _memory(2.0)})
    assert [t["status"] for t in met[:3]] == ["met", "met", "met"]  # +2.5%; 1.2 and 1.21; 2.0x
    assert met[3]["status"].startswith("not measurable here") and met[4]["status"].startswith(
        "not measurable"
    )
    missed = report.evaluate_targets({"models": _models(0.6, 0.66), "memory": _memory(1.2)})
    assert missed[0]["status"] == "missed (by 7.0 points)"  # +10% LaX overhead, 3% allowed at 60m
    assert missed[1]["status"].startswith("missed (worst 1.29x")  # 0.66 / 0.51
    assert missed[2]["status"].startswith("missed (worst 1.20x")
    assert all(t["status"].startswith("not measurable here") for t in report.evaluate_targets({}))


def test_lax_overhead_limit_per_preset():
    """targets.json: 5% in general, 3% at 60m (issue 17); +4% is met at nano and missed at 60m."""
    nano = _models(0.6, 0.624)
    for r in nano["rows"]:
        r["preset"], r["case"] = "nano", "llama-nano"
    assert report.evaluate_targets({"models": nano})[0]["status"] == "met"
    assert report.evaluate_targets({"models": _models(0.6, 0.624)})[0]["status"] == "missed (by 1.0 points)"


def test_mfu_targets_on_an_accelerator():
    rows = [
        _model_row("dense", "dense", "none", 1.0, 100, mfu=0.45, preset="1b", dtype="bfloat16"),
        _model_row("cola+kron", "cola", "kron", 0.7, 50, mfu=0.30, preset="1b", dtype="bfloat16"),
    ]
    t = report.evaluate_targets({"models": {"rows": rows}})
    assert t[3]["status"] == "met"
    assert t[4]["status"].startswith("missed")  # 0.30 / 0.45 = 67% < 80%


# ---------------------------------------------------------------------------------------------- timing


def test_time_interleaved_and_summaries():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
            return name

        return fn

    stats = timing.time_interleaved({"a": make("a"), "b": make("b")}, repeats=3, warmup=2)
    assert calls == {"a": 5, "b": 5}  # 2 warm-up + 3 samples of 1 call
    for s in stats.values():
        assert s.repeats == 3 and s.min <= s.q1 <= s.median <= s.q3 <= s.max
    s = timing.summarize([4.0, 1.0, 3.0, 2.0])
    assert (s.median, s.min, s.max, s.q1, s.q3) == (2.5, 1.0, 4.0, 1.75, 3.25)
    with pytest.raises(ValueError):
        timing.time_interleaved({"a": make("a")}, repeats=0)


def test_cli_parsers():
    cases = bench_models.parse_cases("llama:nano:8x256,vit:tiny:32")
    assert [(c.family, c.preset, c.batch_size, c.seq_len) for c in cases] == [
        ("llama", "nano", 8, 256),
        ("vit", "tiny", 32, 256),
    ]
    with pytest.raises(ValueError):
        bench_models.parse_cases("gpt:nano:8")
    assert bench_memory.parse_variants("cola:kron:cola_m") == (("cola", "kron", "cola_m"),)


def test_paired_ratio():
    a = timing.summarize([2.0, 4.0, 3.0])
    b = timing.summarize([1.0, 2.0, 3.0])
    assert timing.paired_ratio(a, b) == 2.0  # per round 2, 2, 1: median 2 (the ratio of medians is 1.5)
    with pytest.raises(ValueError):
        timing.paired_ratio(a, timing.summarize([1.0]))


# ------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("kind", ["dense", "cola"])
def test_references_compute_our_loss_and_gradients(kind):
    """The plain-JAX and PyTorch references are the same model and loss as ours: given our parameters, the
    same loss and the same gradient of every parameter (float32: rtol 1e-5, atol 1e-5 x max|grad|)."""
    config = bench_models.model_config(
        "llama", "nano", kind, "none", extra={"scan": False}, shrink=bench_models.TINY
    )
    model = build(config.model, rngs=nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in get_task(config.model).batch(config.model, 2, 16, 0).items()}
    graphdef, state = nnx.split(model)
    ours_loss, ours_grads = jax.value_and_grad(
        lambda st: get_task(config.model).loss(nnx.merge(graphdef, st), batch)[0]
    )(state)
    params = bench_reference.plain_params(model)
    settings = bench_reference._settings(config.model)
    plain_loss, plain_grads = jax.value_and_grad(bench_reference.plain_loss)(params, batch, settings)
    torch_step = bench_reference.TorchStep(jax.tree.map(np.asarray, params), config, batch)
    torch_loss, torch_grads = float(torch_step.loss().detach()), torch_step.grads()
    np.testing.assert_allclose([plain_loss, torch_loss], float(ours_loss), rtol=1e-5)
    ours_tree = bench_reference.plain_params(nnx.merge(graphdef, ours_grads))
    for ref in (plain_grads, torch_grads):
        for a, b in zip(jax.tree.leaves(ours_tree), jax.tree.leaves(ref), strict=True):
            a, b = np.asarray(a), np.asarray(b)
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_references_refuse_what_they_do_not_model():
    config = bench_models.model_config(
        "llama", "nano", "cola", "kron", extra={"scan": False}, shrink=bench_models.TINY
    )
    with pytest.raises(ValueError, match="crossing"):
        bench_reference.plain_params(nnx.eval_shape(lambda: build(config.model, rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match="xla_options: 'fast' is not one of"):
        bench_reference.parse_xla_options("ynn_dot,fast")


@pytest.mark.slow  # the tiny benchmark suite, run once for the module
def test_reference_rows(tiny):
    _, data, md = tiny
    suite = data["suites"]["reference"]
    rows = suite["rows"]
    assert [(r["kind"], r["impl"]) for r in rows] == [
        (k, i) for k in ("dense", "cola") for i in ("ours", "plain_jax", "pytorch")
    ]
    by = {(r["kind"], r["impl"]): r for r in rows}
    for kind in ("dense", "cola"):
        ours = by[(kind, "ours")]
        for other in ("plain_jax", "pytorch"):
            expected = timing.paired_ratio(
                timing.summarize(ours["step_time"]["samples"]),
                timing.summarize(by[(kind, other)]["step_time"]["samples"]),
            )
            assert math.isclose(ours[f"over_{other}"], expected)
    assert f"| dense | ours | {by[('dense', 'ours')]['step_time_s'] * 1e3:.1f} |" in md
    target = next(t for t in data["targets"] if t["target"].startswith("dense train step"))
    assert target["status"].startswith(("met", "missed")) and "over PyTorch" in target["detail"]


# ------------------------------------------------------------------------------------------------ loop


@pytest.mark.slow  # the tiny benchmark suite, run once for the module
def test_loop_rows(tiny):
    """The loop suite times train() (its own throughput records) against the bare step, per variant."""
    _, data, md = tiny
    suite = data["suites"]["loop"]
    assert [(r["kind"], r["crossing"]) for r in suite["rows"]] == [("dense", "none"), ("cola", "kron")]
    assert len(suite["load"]["before"]) == len(suite["load"]["after"]) == 3
    for r in suite["rows"]:
        (only,) = r["rounds"]
        assert r["ratio"] == only["ratio"] == only["loop"]["s"] / only["step"]["s"]
        assert r["step_s"] > 0 and r["loop_s"] > 0 and len(only["loop"]["windows_s"]) >= 1
        assert f"| {r['case']} | {report.row_variant_name(r)} | {r['step_s'] * 1e3:.1f} |" in md
    target = next(t for t in data["targets"] if t["target"].startswith("train() loop"))
    assert target["status"].startswith(("met", "missed"))


def test_loop_target_and_settings():
    row = {"case": "llama-nano (batch 32x128)", "kind": "cola", "crossing": "kron", "ratio_min": 1.0}
    met = report.evaluate_targets({"loop": {"rows": [{**row, "ratio": 1.08, "ratio_max": 1.1}]}})
    missed = report.evaluate_targets({"loop": {"rows": [{**row, "ratio": 1.27, "ratio_max": 1.3}]}})
    status = lambda ts: next(t["status"] for t in ts if t["target"].startswith("train() loop"))  # noqa: E731
    assert (status(met), status(missed)) == ("met", "missed (worst 1.270x)")
    with pytest.raises(ValueError, match="multiples of log_every"):
        bench_loop.run_loop(steps=25, warmup_steps=10, log_every=10)


# ---------------------------------------------------------------------------------------------- device


class _Memory:
    def __init__(self, state, per_sequence, batch):
        self.arguments = state + 10 * batch
        self.batch = 10 * batch
        self.peak = state + per_sequence * batch


def test_largest_batch_extrapolates_then_halves():
    calls = []

    def estimate(per_sequence):
        def at(b):
            calls.append(b)
            return _Memory(1000, per_sequence, b), b

        return at

    # 0.9 * 10_000 = 9000 for the batch: 9000 // 100 = 90 -> 64, which fits.
    batch, memory, payload, tried = bench_device.largest_batch(estimate(100), 8, 10_000, 0.9)
    assert (batch, payload, tried) == (64, 64, [8, 64]) and memory.peak <= 9000

    # The planner's own answer decides: a peak that grows faster than linearly is halved until it fits.
    class Superlinear(_Memory):
        def __init__(self, state, per_sequence, batch):
            super().__init__(state, per_sequence, batch)
            self.peak = state + per_sequence * batch * (1 + batch / 16)

    batch, _, _, tried = bench_device.largest_batch(lambda b: (Superlinear(1000, 100, b), b), 8, 10_000, 0.9)
    assert tried[0] == 8 and batch == tried[-1] and Superlinear(1000, 100, batch).peak <= 9000
    # No memory limit (CPU): the start batch, one compile.
    calls.clear()
    assert bench_device.largest_batch(estimate(100), 8, None, 0.9)[0] == 8 and calls == [8]
    with pytest.raises(ValueError, match="not even batch 1"):
        bench_device.largest_batch(estimate(100), 8, 500, 0.9)


def _device_suite(dense_mfu, dense_rate, cola_rate, lax_rate):
    step = lambda name, kind, crossing, rate, mfu=None: {  # noqa: E731
        "row": "step",
        "preset": "1b",
        "name": name,
        "kind": kind,
        "crossing": crossing,
        "status": "ok",
        "tokens_per_s": rate,
        "mfu": mfu,
        "batch_size": 64,
    }
    steps = [
        step("dense", "dense", "none", dense_rate, dense_mfu),
        step("cola", "cola", "none", cola_rate),
        step("cola+kron", "cola", "kron", lax_rate),
    ]
    return {"settings": {"accelerator": True}, "rows": steps + bench_device.summaries(steps)}


def test_device_targets():
    met = report.evaluate_targets({"device": _device_suite(0.5, 100.0, 180.0, 176.0)})[-3:]
    assert [t["status"] for t in met] == ["met", "met", "met"]  # 50% MFU; 1.76x; +2.3%
    missed = report.evaluate_targets({"device": _device_suite(0.4, 100.0, 160.0, 150.0)})[-3:]
    assert missed[0]["status"] == "missed (by 5.0 points)"
    assert missed[1]["status"] == "missed (by 0.10x)"
    assert missed[2]["status"] == "missed (by 3.7 points)"  # 160 / 150 - 1 = 6.7%
    cpu = report.evaluate_targets({"device": {"settings": {"accelerator": False}, "rows": []}})[-3:]
    assert all(t["status"].startswith("not measurable here") for t in cpu)


EXPECTED_DEVICE_FIELDS = (
    "batch_size",
    "seq_len",
    "step_time_s",
    "tokens_per_s",
    "tflops_per_s",
    "mfu",
    "planner_peak_bytes",
    "measured_peak_bytes",
    "attention",
    "compile_s",
)


@pytest.mark.slow  # nine tiny bf16 train steps compiled on CPU
def test_device_check_dry_run(tmp_path):
    """`scripts/device_check.sh --dry_run` (no install): well-formed JSON with every expected row."""
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_check.sh"), "--dry_run", f"--out={tmp_path}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / report.JSON_NAME).read_text())
    suite = data["suites"]["device"]
    assert suite["tiny"] and suite["settings"]["dtype"] == "bfloat16" and not suite["settings"]["accelerator"]
    rows = suite["rows"]
    expected = ["devices", "attention"] + ["step"] * 9 + ["summary"] * 3 + ["kron"] * 2
    assert [r["row"] for r in rows] == expected
    assert rows[0]["devices"] == [str(d) for d in jax.devices()]
    assert rows[1]["auto_picks"] == "xla" and "NVIDIA GPU" in rows[1]["cudnn"]
    steps = rows[2:11]
    assert [(r["preset"], r["name"]) for r in steps] == [
        (p, n) for p in bench_device.PRESETS for n in ("dense", "cola", "cola+kron")
    ]
    for r in steps:
        assert r["status"] == "ok", r
        assert all(k in r for k in EXPECTED_DEVICE_FIELDS), r
        assert r["dtype"] == "bfloat16" and r["batch_size"] == 2 and r["seq_len"] == 32
        assert math.isclose(r["tokens_per_s"], 2 * 32 / r["step_time_s"])
        assert r["planner_peak_bytes"] > 0 and r["mfu"] is None  # CPU: no peak FLOP/s
    for r in rows[11:14]:
        assert r["lax_overhead"] is not None and r["cola_lax_speedup_vs_dense"] > 0
    assert [(r["kron_impl"], r["latent"]) for r in rows[14:]] == [("factored", 16), ("gemm", 16)]
    md = (tmp_path / report.MD_NAME).read_text()
    assert "## Device" in md and "| 1b (shrunk) | dense | ok |" in md and "| 16 | " in md
    assert [t["status"] for t in data["targets"][-3:]] == [
        "not measurable here (no device suite run on an accelerator: scripts/device_check.sh)"
    ] * 3


def test_device_suite_stops_at_its_budget():
    """No variant starts past the deadline: the check keeps within its wall-clock limit (rows say why)."""
    result = bench_device.run_device(presets=("60m", "1b"), tiny=True, budget_s=0.0, log=lambda *_: None)
    steps = [r for r in result["rows"] if r["row"] == "step"]
    assert [r["preset"] for r in steps] == ["60m"] * 3 + ["1b"] * 3
    assert all(r["status"].startswith("skipped: time budget") for r in steps)
    assert not [r for r in result["rows"] if r["row"] == "kron"]
    summary = [r for r in result["rows"] if r["row"] == "summary"]
    assert [r["lax_overhead"] for r in summary] == [None, None]


@pytest.mark.slow  # one spawned process compiling one tiny step
def test_device_preset_in_its_own_process():
    """What the real check does per preset (a fresh process for a clean peak-memory counter), at tiny size."""
    result = bench_device.run_device(
        presets=("60m",),
        tiny=True,
        isolate=True,
        variants=(("cola", "kron"),),
        repeats=1,
        warmup=1,
        min_sample_s=0.0,
        log=lambda *_: None,
    )
    steps = [r for r in result["rows"] if r["row"] == "step"]
    assert [(r["preset"], r["name"], r["status"]) for r in steps] == [("60m", "cola+kron", "ok")]
