"""Smoke tests of the reproduction suites (`scripts/reproduce.py --tiny`): every planned run trains through
`train()`, and results.json / results.md / val_vs_params.png hold one well-formed row per run with the model's
analytic counts.

Both suites run at once as real subprocesses of the script (one device, the script's own `--tiny` settings):
cpu_llama in full (7 variants, 2 noise seeds: 9 runs); cpu_vit, whose image path is the only difference, with
two variants (dense, cola+lax) at one seed to keep the file near a minute of CPU (each tiny run costs about 4
compilations). The planned budgets of the full suites are checked without training.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lax_pretrain import reproduce
from lax_pretrain.data.config import FASHION_MNIST_DIR
from lax_pretrain.params import model_stats

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900
SEEDS = {"cpu_llama": 2, "cpu_vit": 1}
VARIANTS = {"cpu_llama": reproduce.VARIANTS, "cpu_vit": reproduce.parse_variants("dense,cola+lax")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one CPU device, as the script runs by default
    procs = {}
    for suite, seeds in SEEDS.items():
        if suite == "cpu_vit" and not os.path.isdir(FASHION_MNIST_DIR):
            continue  # built from Debian's dataset-fashion-mnist on first use
        out = root / suite
        log = (root / f"{suite}.log").open("w")
        procs[suite] = (out, log, subprocess.Popen(
            [sys.executable, "scripts/reproduce.py", f"--suite={suite}", "--tiny", f"--out={out}",
             f"--seeds_noise={seeds}", "--variants=" + ",".join(reproduce.variant_name(*v) for v in VARIANTS[suite])],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    results = {}
    for suite, (out, log, proc) in procs.items():
        rc = proc.wait(timeout=TIMEOUT_S)
        log.close()
        assert rc == 0, (root / f"{suite}.log").read_text()[-4000:]
        results[suite] = out
    return results


def _suite_out(runs, suite):
    if suite not in runs:
        pytest.skip(f"{FASHION_MNIST_DIR} is missing (scripts/install_system_data.sh installs it)")
    return runs[suite]


@pytest.mark.parametrize("suite", list(SEEDS))
def test_results_have_every_run(runs, suite):
    out = _suite_out(runs, suite)
    result = json.loads((out / "results.json").read_text())
    plan = reproduce.run_plan(SEEDS[suite], VARIANTS[suite])
    assert [r["run"] for r in result["rows"]] == [reproduce.run_name(*p) for p in plan]
    if suite == "cpu_llama":
        assert len(result["rows"]) == 7 + 2 * (SEEDS[suite] - 1)
    spec = reproduce.tiny_suite(reproduce.SUITES[suite])
    assert result["tiny"] and result["suite"]["steps"] == spec.steps
    for row, (kind, crossing, seed) in zip(result["rows"], plan):
        assert row["status"] == "done", row
        assert row["steps"] == spec.steps and row["seed"] == seed
        value = row["value"]
        assert value is not None and math.isfinite(value)
        if suite == "cpu_vit":
            assert 0.0 <= value <= 1.0 and row["metric"] == "eval_top1"
        else:
            assert value > 1.0 and row["metric"] == "eval_ppl"
        config = reproduce.make_config(spec, kind, crossing, seed, tiny=True)
        stats = model_stats(config.model, spec.seq_len)
        assert row["params"] == stats.total_params
        assert row["non_embedding_params"] == stats.non_embedding_params
        assert row["flops_per_token"] == stats.flops_per_token
        assert row["wall_s"] > 0 and (out / "runs" / row["run"] / "metrics.jsonl").exists()
        assert not (out / "runs" / row["run"] / "checkpoints").exists()  # deleted after each run
    summary = result["summary"]["variants"]
    assert set(summary) == {reproduce.variant_name(k, c) for k, c in VARIANTS[suite]}
    if SEEDS[suite] > 1:
        assert summary["dense"]["seeds"] == summary["cola+lax"]["seeds"] == SEEDS[suite]
        assert result["summary"]["noise"] is not None


@pytest.mark.parametrize("suite", list(SEEDS))
def test_markdown_and_plot(runs, suite):
    out = _suite_out(runs, suite)
    result = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert md.startswith(f"# Reproduction: {suite} (--tiny smoke run)")
    for row in result["rows"]:
        assert f"| {row['variant']} (seed {row['seed']}) | {row['params']:,} | {row['non_embedding_params']:,} |" in md
        assert f"{row['flops_per_token']:,}" in md
    assert "## Per variant (mean over seeds)" in md and "val_vs_params.png" in md
    assert (out / "val_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_reuses_finished_runs(runs):
    out = _suite_out(runs, "cpu_llama")
    logged = []
    result = reproduce.run_suite("cpu_llama", out, tiny=True, seeds_noise=2, log=logged.append)
    assert sum("reusing the finished run" in line for line in logged) == 9
    assert all(r["status"] == "done" for r in result["rows"])


@pytest.mark.parametrize("suite", list(reproduce.SUITES))
def test_full_suites_compare_at_half_the_parameters(suite):
    """The full suites' low-rank variants hold about half the dense model's non-embedding parameters, and every
    run of a suite sees the same budget."""
    spec = reproduce.SUITES[suite]
    dense = model_stats(reproduce.make_config(spec, "dense", "none", 0).model, spec.seq_len)
    for kind, crossing in (("cola", "none"), ("tt", "kron")):  # the most and the fewest parameter savings
        config = reproduce.make_config(spec, kind, crossing, 0)
        ratio = dense.non_embedding_params / model_stats(config.model, spec.seq_len).non_embedding_params
        assert 1.8 <= ratio <= 2.2, (kind, crossing, ratio)
        assert config.train.steps == spec.steps and config.train.batch_size == spec.batch_size
    assert [p[2] for p in reproduce.run_plan(2)].count(1) == 2  # dense and cola+lax at seed 1


def test_parse_variants():
    assert reproduce.parse_variants("cola+lax,dense") == (("dense", "none"), ("cola", "kron"))
    with pytest.raises(ValueError):
        reproduce.parse_variants("cola+kron")
