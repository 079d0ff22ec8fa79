"""Run comparison on hand-written run directories (no training; checkpoints committed by orbax itself):
statuses (finished, running, stopped, failed), resumed runs, ViT top-1, the table, the per-variant means over
seeds, the Pareto front, the plots, and the CLI. The comparison of a real sweep is in test_sweep.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import orbax.checkpoint as ocp
import pytest

from lax_pretrain.experiments import compare, report, reproduce, results, runner

REPO = Path(__file__).resolve().parent.parent


def make_run(
    root: Path,
    name: str,
    *,
    family="llama",
    kind="cola",
    crossing="kron",
    steps=10,
    reached=10,
    params=1000,
    ppl_scale=1.0,
    committed=True,
    status: dict | None = None,
    resumed=False,
    seed=0,
) -> Path:
    """A workdir like the trainer's: config.json, metrics.jsonl (log every 2, eval every 5), checkpoints."""
    d = root / name
    d.mkdir(parents=True)
    config = {
        "model": {"family": family, "linear": {"kind": kind, "crossing": crossing}},
        "train": {"steps": steps, "batch_size": 4, "log_every": 2, "seed": seed},
        "data": {"seq_len": 8},
    }
    (d / "config.json").write_text(json.dumps(config))
    rate = "tokens_per_s" if family == "llama" else "images_per_s"
    records = [
        {
            "step": 0,
            "eval_loss": 3.0,
            "eval_ppl": 20.0 * ppl_scale,
            "params": params,
            "non_embedding_params": params // 2,
            "lax_params": 10,
            "flops_per_token": 2 * params,
            **({"eval_top1": 0.1} if family == "vit" else {}),
        }
    ]
    steps_logged = list(range(2, reached + 1, 2))
    if resumed:  # killed after step 6 with the checkpoint at 4: steps 6.. are logged twice
        steps_logged = [2, 4, 6] + list(range(6, reached + 1, 2))
    for s in steps_logged:
        records.append({"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-3, "grad_norm": 1.0, rate: 32.0 * (s + 1)})
        if s % 5 == 0:
            records.append(
                {
                    "step": s,
                    "eval_loss": 3.0 - 0.1 * s,
                    "eval_ppl": (20.0 - s) * ppl_scale,
                    **({"eval_top1": 0.05 * s} if family == "vit" else {}),
                }
            )
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if committed and reached == steps:
        manager = ocp.CheckpointManager(
            (d / "checkpoints").resolve(),
            options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
        )
        manager.save(steps, args=ocp.args.Composite(meta=ocp.args.JsonSave({"step": steps})))
        manager.close()
    if status is not None:
        (d / runner.STATUS_FILE).write_text(json.dumps(status))
    return d


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "sweep"
    host = os.uname().nodename
    make_run(root, "llama-nano_kind=dense", kind="dense", crossing="none", params=4000, ppl_scale=1.0)
    make_run(root, "llama-nano_kind=cola_lax=none", crossing="none", params=2000, ppl_scale=1.2)
    make_run(root, "llama-nano_kind=cola_lax=kron", params=2010, ppl_scale=1.05, resumed=True)
    make_run(root, "llama-nano_kind=svd_lax=kron", kind="svd", params=2010, ppl_scale=1.5)  # dominated
    make_run(
        root,
        "llama-nano_kind=tt_lax=kron",
        kind="tt",
        reached=4,
        status={"status": "running", "pid": os.getpid(), "host": host},
    )
    make_run(
        root,
        "llama-nano_kind=tt_lax=none",
        kind="tt",
        crossing="none",
        reached=6,
        status={"status": "running", "pid": 2**22 + 11, "host": host},
    )  # killed: process gone
    make_run(root, "vit-tiny_kind=cola_lax=kron", family="vit", params=500)
    bad = root / "llama-nano_kind=cola_lax=kron_optim.lr=-1.0"
    bad.mkdir()
    (bad / runner.STATUS_FILE).write_text(
        json.dumps(
            {
                "name": bad.name,
                "status": "failed",
                "returncode": 1,
                "config": "configs/llama.py:nano,kind=cola,lax=kron",
                "train_steps": 10,
                "stderr_tail": "ValueError: optim.lr=-1.0 must be > 0",
            }
        )
    )
    return root


def test_load_runs_statuses_and_columns(runs_dir):
    runs = {r.name: r for r in results.load_runs([str(runs_dir)])}
    assert {n: r.status for n, r in runs.items()} == {
        "llama-nano_kind=cola_lax=kron": "finished",
        "llama-nano_kind=cola_lax=kron_optim.lr=-1.0": "failed",
        "llama-nano_kind=cola_lax=none": "finished",
        "llama-nano_kind=dense": "finished",
        "llama-nano_kind=svd_lax=kron": "finished",
        "llama-nano_kind=tt_lax=kron": "running",
        "llama-nano_kind=tt_lax=none": "stopped",
        "vit-tiny_kind=cola_lax=kron": "finished",
    }
    dense = runs["llama-nano_kind=dense"]
    assert (dense.kind, dense.crossing, dense.params, dense.non_embedding_params, dense.flops_per_token) == (
        "dense",
        "none",
        4000,
        2000,
        8000,
    )
    assert dense.final_train_loss == pytest.approx(2.0) and dense.best_val_loss == pytest.approx(2.0)
    assert dense.metric == "eval_ppl" and dense.best_metric == pytest.approx(10.0) and dense.step == 10
    assert dense.final_metric == pytest.approx(10.0) and dense.initial_metric == pytest.approx(20.0)
    assert dense.variant == "dense" and dense.seed == 0 and dense.lax_params == 10
    assert dense.throughput == pytest.approx(32.0 * 8)  # median of steps 4..10 (the first window compiles)
    assert dense.mfu is None  # CPU records carry no MFU
    # wall time: each window = 2 steps x 4 sequences x 8 tokens / tokens_per_s
    assert dense.wall_time_s == pytest.approx(sum(2 * 4 * 8 / (32.0 * (s + 1)) for s in range(2, 11, 2)))
    resumed = runs["llama-nano_kind=cola_lax=kron"]
    assert [s for s, _ in resumed.train_curve] == [2, 4, 6, 8, 10]  # the repeated step 6 counted once
    assert resumed.wall_time_s == pytest.approx(
        dense.wall_time_s + 2 * 4 * 8 / (32.0 * 7)
    )  # one redone window
    vit = runs["vit-tiny_kind=cola_lax=kron"]
    assert vit.family == "vit" and vit.metric == "eval_top1" and vit.best_metric == pytest.approx(0.5)
    assert vit.throughput_key == "images_per_s" and vit.variant == "cola+kron"
    bad = runs["llama-nano_kind=cola_lax=kron_optim.lr=-1.0"]
    assert (bad.kind, bad.crossing, bad.params, bad.train_curve) == ("cola", "kron", None, [])
    assert "optim.lr=-1.0" in bad.error


def test_table(runs_dir):
    runs = results.load_runs([str(runs_dir / "llama-*")])  # a glob: the ViT run is left out
    table = compare.markdown_table(runs)
    lines = table.splitlines()
    assert lines[0] == (
        "| run | kind | crossing | params | non-emb params | FLOPs/token | final train loss | "
        "best val loss | best val perplexity | tokens/s | MFU | wall time | status |"
    )
    assert len(lines) == 2 + 7
    row = next(ln for ln in lines if ln.startswith("| llama-nano_kind=dense |"))
    assert (
        row
        == "| llama-nano_kind=dense | dense | none | 4.00K | 2.00K | 8.00K | 2.0000 | 2.0000 | 10.00 | 256 "
        "| - | 2s | finished |"
    )
    assert "running (4/10)" in table and "| stopped |" in table
    failed = next(ln for ln in lines if "optim.lr" in ln)
    assert failed.endswith("| - | - | - | failed |")
    mixed = compare.markdown_table(results.load_runs([str(runs_dir)]))
    assert (
        "best val perplexity / val top-1" in mixed and "tokens/s or images/s" in mixed and "50.00%" in mixed
    )


def test_variant_summary(tmp_path):
    """Runs that differ only in train.seed form one group: mean and spread over seeds, the difference to
    dense, the LaX gain over the twin without a crossing (positive = lower perplexity)."""
    root = tmp_path / "seeds"
    make_run(root, "llama-nano_kind=dense", kind="dense", crossing="none", params=4000)
    make_run(
        root,
        "llama-nano_kind=dense_train.seed=1",
        kind="dense",
        crossing="none",
        params=4000,
        ppl_scale=1.2,
        seed=1,
    )
    make_run(root, "llama-nano_kind=cola_lax=none", crossing="none", params=2000, ppl_scale=1.5)
    make_run(root, "llama-nano_kind=cola_lax=kron", params=2010, ppl_scale=0.9)
    runs = results.load_runs([str(root)])
    summary = compare.variant_summary(runs)
    assert list(summary) == ["cola+kron", "cola", "dense"]  # in run order; final perplexity: 10 x ppl_scale
    assert summary["dense"]["seeds"] == 2 and summary["dense"]["mean"] == pytest.approx(11.0)
    assert summary["dense"]["spread"] == pytest.approx(2.0) and compare.noise(summary) == pytest.approx(2.0)
    assert summary["cola"]["delta_vs_dense"] == pytest.approx(4.0) and "lax_gain" not in summary["cola"]
    assert summary["cola+kron"]["lax_gain"] == pytest.approx(6.0)
    assert summary["cola+kron"]["params_vs_dense"] == pytest.approx(2000 / 1005)
    text = compare.write_report(runs, tmp_path / "out").read_text()
    assert (
        "## Per variant (mean over seeds)" in text
        and "| cola+kron | 1 | 9.00 | 1,005 | 1.99x | 9.00 | - | -2.00 | +6.00 | +3.0 |" in text
        and "| dense | 2 | 10.00, 12.00 | 2,000 |" in text
    )
    # The papers' claims against this summary (noise 2.0 perplexity): cola+kron is 2.0 better than dense,
    # within the noise: a match, so the LaX claim holds; plain cola is 4.0 worse: CoLA's claim does not.
    claims = "\n".join(reproduce.claims(summary))
    assert (
        "| LaX: low-rank + LaX matches or beats full rank at 2-3x fewer parameters | cola+kron | -2.00 (-1.0 noise) |"
        in claims
    )
    assert "| 1.99x | 1.99x less | within the noise | yes |" in claims
    assert "| CoLA: matches full rank at about 2x less compute | cola | +4.00 (+2.0 noise) |" in claims
    assert claims.rstrip().endswith("cola: +6.00 (+3.0 noise), better")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["summary"]["noise"] == pytest.approx(
        2.0
    )
    # The plot labels each seed group once, by its variant's name, at the mean of its seeds.
    (ax,) = report.metric_vs_params_figure(runs, x="non_embedding_params", y="final_metric").axes
    labels = {t.get_text(): t.xy for t in ax.texts}
    assert sorted(labels) == ["cola", "cola+kron", "dense (2 seeds)"]
    assert labels["dense (2 seeds)"][1] == pytest.approx(11.0)


def test_metric_formats_differences_of_percentages_in_points():
    """An accuracy prints as a percentage; a difference of two (a delta, a spread, the noise) in points, so
    that "-1.46 pts" is not read as a relative change; perplexities have no unit either way."""
    assert report.metric(0.8816, "eval_top1") == "88.16%"
    assert report.metric(-0.0146, "eval_top1", signed=True) == "-1.46 pts"
    assert report.metric(0.0052, "eval_top1", difference=True) == "0.52 pts"
    assert (
        report.metric(7.9912, "eval_ppl") == "7.99"
        and report.metric(0.25, "eval_ppl", signed=True) == "+0.25"
    )
    assert report.metric(None, "eval_top1", signed=True) == "-"


def test_pareto_front():
    points = [(4000, 10.0), (2000, 12.0), (2010, 10.5), (2010, 15.0), (500, 30.0), (5000, 10.0)]
    assert report.pareto_front(points) == [4, 1, 2, 0]
    assert report.pareto_front([(1, 0.5), (2, 0.4), (3, 0.9)], maximize=True) == [0, 2]
    assert report.short_labels(["llama-nano_kind=dense", "llama-nano_kind=cola_lax=kron"]) == [
        "kind=dense",
        "kind=cola_lax=kron",
    ]


def assert_real_png(path: Path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    pixels = matplotlib.image.imread(path)
    assert pixels[..., :3].std() > 0  # not one flat colour


def test_report_and_plots(runs_dir, tmp_path):
    report = compare.write_report(results.load_runs([str(runs_dir)]), tmp_path / "out", title="Synthetic")
    text = report.read_text()
    assert text.startswith("# Synthetic") and "8 runs: " in text and "1 failed" in text
    assert "![train and validation loss](loss_curves.png)" in text and "## Failed runs" in text
    for png in ("loss_curves.png", "val_vs_params.png"):
        assert_real_png(tmp_path / "out" / png)
    # Nothing but failures: still a report, with placeholder plots.
    only_failed = results.load_runs([str(runs_dir / "*optim.lr*")])
    compare.write_report(only_failed, tmp_path / "failed")
    assert_real_png(tmp_path / "failed" / "val_vs_params.png")


@pytest.mark.slow
def test_cli(runs_dir, tmp_path, capsys):
    out = subprocess.run(
        [
            sys.executable,
            "scripts/compare.py",
            str(runs_dir / "llama-nano_kind=dense"),
            str(runs_dir / "vit-*"),
            str(tmp_path / "missing"),
            f"--out={tmp_path / 'cli'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| llama-nano_kind=dense |" in out.stdout and "| vit-tiny_kind=cola_lax=kron |" in out.stdout
    assert "missing: no such run directory" in out.stderr
    assert (tmp_path / "cli" / "report.md").exists()
    for args, message in [
        ([f"--out={tmp_path / 'x'}"], "give run directories"),
        ([str(tmp_path / "missing")], "required: --out"),
        ([str(tmp_path / "missing"), f"--out={tmp_path / 'x'}"], "no run directories"),
    ]:
        capsys.readouterr()
        assert compare.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    out = subprocess.run(
        [sys.executable, "scripts/compare.py", f"--out={tmp_path / 'x'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        out.returncode == 2
        and out.stderr == "error: give run directories (or globs), or --wandb=ENTITY/PROJECT\n"
    )
