"""Smoke tests of the reproduction suites (`scripts/reproduce.py --tiny`): the suites of configs/sweeps/cpu.py
train through the runner, results.json / results.md / val_vs_params.png hold one well-formed row per run with
the model's analytic counts, and running the command again resumes instead of starting over.

Both suites run at once as real subprocesses of the script (one device, the script's own `--tiny` settings):
cpu_llama with dense, cola and cola+kron at 2 seeds (6 runs: a noise level, a LaX gain and the claims table);
cpu_vit, whose image path is the only difference, with two variants (dense, cola+kron) at one seed to keep the
file near a few minutes of CPU. The planned budgets of the full suites are checked without training.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from lax_pretrain.data.config import FASHION_MNIST_DIR
from lax_pretrain.experiments import reproduce, runner, sweep
from lax_pretrain.models.stats import model_stats

pytestmark = pytest.mark.slow  # real (tiny) reproduction suites: `pytest -m 'not slow'` skips them

ROOT = Path(__file__).resolve().parents[1]
CPU_SWEEP = ROOT / "configs" / "sweeps" / "cpu.py"
TIMEOUT_S = 900
SEEDS = {"cpu_llama": 2, "cpu_vit": 1}
VARIANTS = {"cpu_llama": ("dense", "cola", "cola+kron"), "cpu_vit": ("dense", "cola+kron")}


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    """Recipe paths in sweep files are relative to the repository root, as the commands run them."""
    monkeypatch.chdir(ROOT)


def planned(suite: str, **params) -> list[sweep.Run]:
    runs = sweep.load_sweep(CPU_SWEEP, suite=suite, **params)[1]
    return [r for r in runs if r.variant in VARIANTS[suite]]


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
        procs[suite] = (
            out,
            log,
            subprocess.Popen(
                [
                    sys.executable,
                    "scripts/reproduce.py",
                    f"--suite={suite}",
                    "--tiny",
                    f"--out={out}",
                    f"--seeds={seeds}",
                    f"--variants={','.join(VARIANTS[suite])}",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
        )
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
    plan = planned(suite, seeds=SEEDS[suite], tiny=True)
    assert [r["name"] for r in result["runs"]] == [r.name for r in plan]
    assert len(result["runs"]) == len(VARIANTS[suite]) * SEEDS[suite]
    assert result["tiny"] and result["suite"] == suite
    for row, run in zip(result["runs"], plan):
        assert row["status"] == "finished", row
        assert row["step"] == row["target_steps"] == sweep.target_steps(run) == 2
        assert row["seed"] == run.overrides.get("train.seed", 0)
        value = row["final_metric"]
        assert value is not None and math.isfinite(value)
        if suite == "cpu_vit":
            assert 0.0 <= value <= 1.0 and row["metric"] == "eval_top1"
        else:
            assert value > 1.0 and row["metric"] == "eval_ppl"
        workdir = out / "runs" / run.name
        config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
        assert config.model.d_model == sweep.TINY_MODEL["d_model"] and config.train.steps == 2
        stats = model_stats(config.model, config.data.seq_len)
        assert row["params"] == stats.total_params
        assert row["non_embedding_params"] == stats.non_embedding_params
        assert row["flops_per_token"] == stats.flops_per_token
        assert row["wall_time_s"] > 0 and (workdir / "metrics.jsonl").exists()
        assert runner.is_finished(workdir, 2)  # the final checkpoint is kept: it is what "finished" means
    summary = result["summary"]["variants"]
    assert set(summary) == {r.variant for r in plan}
    if SEEDS[suite] > 1:
        assert summary["dense"]["seeds"] == summary["cola+kron"]["seeds"] == SEEDS[suite]
        assert result["summary"]["noise"] is not None
    assert "lax_gain" in summary["cola+kron"] or suite == "cpu_vit"  # cpu_vit ran without plain cola


@pytest.mark.parametrize("suite", list(SEEDS))
def test_markdown_and_plot(runs, suite):
    out = _suite_out(runs, suite)
    result = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert md.startswith(f"# Reproduction: {suite} (--tiny smoke run)")
    for row in result["runs"]:
        assert f"| {row['name']} | {row['kind']} | {row['crossing']} |" in md
    for variant, s in result["summary"]["variants"].items():
        assert f"| {variant} | {s['seeds']} | " in md and f" | {s['non_embedding_params']:,} | " in md
        assert len(s["values"]) == s["seeds"] == SEEDS[suite]
    if SEEDS[suite] > 1:  # a noise level: the claims table reads cola+kron and cola against dense
        claims = md[md.index("## The papers' claims at this scale") :]
        assert "| cola+kron |" in claims and "| cola |" in claims and "LaX gain over" in claims
    assert (
        "## Per variant (mean over seeds)" in md
        and "val_vs_params.png" in md
        and "Budget per run: 2 steps" in md
    )
    for png in ("val_vs_params.png", "loss_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_resumes_where_it_stopped(runs, monkeypatch):
    """A finished suite is not trained again; a run whose checkpoint is gone (as if killed before its first
    save) is the only one that trains."""
    out = _suite_out(runs, "cpu_llama")
    monkeypatch.setenv("XLA_FLAGS", "")  # the runs train on one CPU device, as the script's do
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    logged = []
    again = dict(tiny=True, seeds=2, variants=VARIANTS["cpu_llama"], log=logged.append)
    statuses, rows = reproduce.run_suite("cpu_llama", out, **again)
    assert [s["status"] for s in statuses.values()] == [runner.SKIPPED] * 6
    assert not any(line.startswith("[start]") for line in logged)
    lost = "llama-nano_kind=cola_lax=kron_rank=8"
    shutil.rmtree(out / "runs" / lost / "checkpoints")
    statuses, rows = reproduce.run_suite("cpu_llama", out, **again)
    assert {n for n, s in statuses.items() if s["status"] != runner.SKIPPED} == {lost}
    assert statuses[lost]["status"] == "finished" and all(r.status == "finished" for r in rows)


@pytest.mark.parametrize("suite", ["cpu_llama", "cpu_vit"])
def test_full_suites_compare_at_half_the_parameters(suite):
    """The full suites' low-rank variants hold about half the dense model's non-embedding parameters, and
    every run of a suite sees the same budget."""
    plan = {r.name: r for r in sweep.load_sweep(CPU_SWEEP, suite=suite)[1]}
    first = next(iter(plan.values()))
    seq_len = int(first.shared.get("data.seq_len", 0))

    def non_embedding(run):
        return model_stats(sweep.load_recipe(run.config).model, seq_len).non_embedding_params

    dense = non_embedding(next(r for r in plan.values() if r.variant == "dense"))
    for variant in ("cola", "tt+kron"):  # the most and the fewest parameter savings
        ratio = dense / non_embedding(next(r for r in plan.values() if r.variant == variant))
        assert 1.8 <= ratio <= 2.2, (variant, ratio)
    assert len({(sweep.target_steps(r), r.shared["train.batch_size"]) for r in plan.values()}) == 1
    seeded = [r.variant for r in plan.values() if r.overrides.get("train.seed") == 1]
    assert seeded == [r.variant for r in plan.values() if "train.seed" not in r.overrides]  # all, seed-major


def test_bad_input_is_one_line(capsys):
    for args, message in [
        (["--suite=cpu_llama", "--variants=cola+lax"], "unknown variant(s) ['cola+lax']"),
        (["--suite=cpu_gpt"], "unknown suite 'cpu_gpt'"),
        (["--tiny"], "required: --suite"),
    ]:
        assert reproduce.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
