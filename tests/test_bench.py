"""Smoke tests of the benchmark suites (`scripts/bench.py --tiny`): well-formed bench.json / bench.md with every
expected row, FLOP numbers equal to the layers' and models' analytic counts, and the target logic.

One module fixture runs `scripts/bench.py --suite=all --tiny` once (in this process, through the script's
`main`); everything else reads its output. No timing is asserted (the machine is shared).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from flax import nnx

from lax_pretrain.bench import layers as bench_layers
from lax_pretrain.bench import memory as bench_memory
from lax_pretrain.bench import models as bench_models
from lax_pretrain.bench import report, timing
from lax_pretrain.layers import make_linear
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
    names = [bench_models.variant_name(k, c) for k, c in bench_models.MODEL_VARIANTS]
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
    assert set(data["suites"]) == {"layers", "models", "memory"}  # accumulated suite by suite
    for suite in data["suites"].values():
        m = suite["machine"]
        assert m["device_kind"] and m["cpu_count"] >= 1 and len(m["loadavg"]) == 3
        assert suite["command"].startswith("python scripts/bench.py") and suite["wall_s"] > 0
    for header in ("## Layers", "## Models", "## Memory", "## Targets"):
        assert header in md
    for r in data["suites"]["layers"]["rows"]:
        assert f"| {r['name']} | " in md and f"{r['flops_per_token']:,}" in md
    for r in data["suites"]["models"]["rows"]:
        assert f"| {r['name']} | {r['params']:,} |" in md
    for r in data["suites"]["memory"]["rows"]:
        assert f"| {r['preset']} (shrunk) | {r['name']} |" in md
    targets = data["targets"]
    assert len(targets) == 5
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
    met = report.evaluate_targets({"models": _models(0.6, 0.62), "memory": _memory(2.0)})
    assert [t["status"] for t in met[:3]] == ["met", "met", "met"]  # +3.3%; 1.2 and 1.22; 2.0x
    assert met[3]["status"].startswith("not measurable here") and met[4]["status"].startswith(
        "not measurable"
    )
    missed = report.evaluate_targets({"models": _models(0.6, 0.66), "memory": _memory(1.2)})
    assert missed[0]["status"] == "missed (by 5.0 points)"  # +10% LaX overhead
    assert missed[1]["status"].startswith("missed (worst 1.29x")  # 0.66 / 0.51
    assert missed[2]["status"].startswith("missed (worst 1.20x")
    assert all(t["status"].startswith("not measurable here") for t in report.evaluate_targets({}))


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
