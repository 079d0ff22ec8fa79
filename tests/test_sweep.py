"""Sweeps: expansion and names of the shipped grids, the "finished" rule (orbax's committed steps), dry runs,
the launch scripts behind the runner, the W&B spec, and a real CPU sweep through scripts/sweep.py that is
SIGKILLed after its first run, re-run (resumes, skips, records a failure) and compared with
scripts/compare.py.

The real sweep trains nano LLaMA shrunk to the sweep's TINY_MODEL (d_model 32, 2 layers, rank 8; 16-byte
windows, batch 4, 6 steps) on one CPU device (XLA_FLAGS of conftest.py removed), with a JAX compilation cache
shared by the session's subprocesses, so re-runs do not compile again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib.image
import orbax.checkpoint as ocp
import pytest

from lax_pretrain.experiments import results, runner, sweep, wandb_sweep
from lax_pretrain.layers.variants import variant_name
from lax_pretrain.train.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "configs" / "sweeps"
TIMEOUT_S = 400

BUDGET = {
    "data.seq_len": 16,
    "data.eval_batches": 1,
    "train.batch_size": 4,
    "train.steps": 6,
    "train.log_every": 2,
    "train.eval_every": 3,
    "train.checkpoint_every": 3,
    "wandb.mode": "disabled",
}
GOOD_RUNS = [
    "llama-nano_kind=dense",
    "llama-nano_kind=svd_lax=kron_rank=8",
    "llama-nano_kind=cola_lax=none_rank=8",
    "llama-nano_kind=cola_lax=kron_rank=8",
]
BAD_RUN = "llama-nano_kind=cola_lax=kron_rank=8_optim.lr=-1.0"
TINY_SWEEP = f'''
    """Four tiny nano runs and one that fails validation (optim.lr < 0)."""
    from lax_pretrain.experiments.sweep import recipes, shrink

    SHARED = {BUDGET!r}


    def get_sweep():
        options = ["kind=dense", "kind=svd,lax=kron", "kind=cola,lax=none", "kind=cola,lax=kron"]
        runs = [shrink(spec) for spec in recipes("configs/llama.py", ["nano"], options)]
        return runs + [{{**runs[-1], "optim.lr": -1.0}}]
'''


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    """Recipe paths in sweep files are relative to the repository root, as the commands run them."""
    monkeypatch.chdir(REPO)


# ------------------------------------------------------------------------------------------ expansion


def names(path: Path) -> list[str]:
    return [r.name for r in sweep.load_sweep(path)[1]]


def test_llama_paper_grid():
    name, runs = sweep.load_sweep(SWEEPS / "llama_paper.py")
    assert name == "llama_paper"
    assert len(runs) == 4 * (1 + 3 * 2) == 28
    got = [r.name for r in runs]
    assert len(set(got)) == 28
    assert got[:7] == [
        "llama-60m_kind=dense",
        "llama-60m_kind=svd_lax=none",
        "llama-60m_kind=svd_lax=kron",
        "llama-60m_kind=cola_lax=none",
        "llama-60m_kind=cola_lax=kron",
        "llama-60m_kind=tt_lax=none",
        "llama-60m_kind=tt_lax=kron",
    ]
    assert {n.split("_")[0] for n in got} == {"llama-60m", "llama-130m", "llama-350m", "llama-1b"}
    assert not any("dense_lax" in n for n in got)
    cola = next(r for r in runs if r.name == "llama-1b_kind=cola_lax=kron")
    assert (
        cola.config == "configs/llama.py:1b,kind=cola,lax=kron" and cola.overrides == {} and cola.shared == {}
    )


def test_vit_paper_and_cpu_grids():
    vit = names(SWEEPS / "vit_paper.py")
    assert len(vit) == 2 * 7 and vit[0] == "vit-b16_kind=dense" and vit[-1] == "vit-l16_kind=tt_lax=kron"
    # The paper's TT + LaX runs get the authors' intra-layer skip on q, k, v, o (configs/vit.py's default).
    _, vit_runs = sweep.load_sweep(SWEEPS / "vit_paper.py")
    for run in vit_runs:
        model = sweep.load_recipe(run.config).model
        intra = {p: bool(model.proj[p].get("intra")) for p in model.proj}
        want = "kind=tt,lax=kron" in run.config
        assert intra == {p: want and p in ("q", "k", "v", "o") for p in model.proj}, run.name
    # The one CPU grid (the reproduction's): per suite 7 variants at one rank, every one at seeds 0 and 1.
    _, cpu = sweep.load_sweep(SWEEPS / "cpu.py")
    assert len(cpu) == 2 * 7 * 2 == 28
    cpu_names = [r.name for r in cpu]
    assert cpu_names[:7] == [
        "llama-nano_kind=dense",
        "llama-nano_kind=svd_lax=none_rank=80",
        "llama-nano_kind=svd_lax=kron_rank=80",
        "llama-nano_kind=cola_lax=none_rank=80",
        "llama-nano_kind=cola_lax=kron_rank=80",
        "llama-nano_kind=tt_lax=none_rank=80",
        "llama-nano_kind=tt_lax=kron_rank=80",
    ]
    assert cpu_names[7:14] == [f"{n}_train.seed=1" for n in cpu_names[:7]]  # seed-major
    assert "vit-tiny_kind=tt_lax=none_rank=40" in cpu_names
    assert [r.variant for r in cpu[:7]] == ["dense", "svd", "svd+kron", "cola", "cola+kron", "tt", "tt+kron"]
    # The budget and the suite's settings apply to every run of the suite and stay out of the names.
    llama, vit_cpu = cpu[0], next(r for r in cpu if r.stem == "vit")
    assert llama.shared["train.steps"] == 600 and llama.shared["data.seq_len"] == 128
    assert llama.shared["data.eval_batches"] == 0  # the whole validation split
    assert vit_cpu.shared["train.steps"] == 2350 and vit_cpu.shared["model.dropout"] == 0.0
    assert vit_cpu.shared["model.patch_size"] == 7 and vit_cpu.shared["optim.lr"] == 1e-3  # one lr for all
    assert not any("steps" in n or "dropout" in n for n in cpu_names)
    assert sweep.target_steps(llama) == 600 and sweep.target_steps(llama, {"train.steps": "40"}) == 40
    _, reduced = sweep.load_sweep(SWEEPS / "cpu.py", suite="cpu_vit", seeds=3, steps=30)
    assert len(reduced) == 7 * 3 and all(r.stem == "vit" for r in reduced)
    assert reduced[0].shared["train.eval_every"] == 6 and reduced[0].shared["optim.warmup_steps"] == 3
    with pytest.raises(ValueError, match="unknown suite"):
        sweep.load_sweep(SWEEPS / "cpu.py", suite="cpu_gpt")
    with pytest.raises(ValueError, match="does not take"):
        sweep.load_sweep(SWEEPS / "llama_paper.py", tiny=True)


def test_tiny_runs_shrink_every_family():
    _, tiny = sweep.load_sweep(SWEEPS / "cpu.py", seeds=1, tiny=True)
    assert len(tiny) == 14 and {r.shared["train.steps"] for r in tiny} == {2}
    for run in tiny:
        assert run.options.get("rank", "8") == "8", run.name
        model = sweep.load_recipe(run.config).model
        widths = {
            k.removeprefix("model."): v
            for k, v in run.shared.items()
            if k.startswith("model.") and k not in ("model.dropout", "model.patch_size")  # suite settings
        }
        assert widths == {k: v for k, v in sweep.TINY_MODEL.items() if k in model}, run.name
    assert "model.ffn_dim" in tiny[0].shared and "model.mlp_dim" in tiny[-1].shared


def test_helpers_and_names():
    grid = sweep.product(
        sweep.axis("config", ["configs/vit.py:tiny,kind=cola,lax=kron"]),
        sweep.axis("optim.lr", [1e-3, 3e-3]),
        [{"train.steps": 10}],
    )
    assert grid == [
        {"config": "configs/vit.py:tiny,kind=cola,lax=kron", "optim.lr": 1e-3, "train.steps": 10},
        {"config": "configs/vit.py:tiny,kind=cola,lax=kron", "optim.lr": 3e-3, "train.steps": 10},
    ]
    # Overrides are sorted in the name, so the order they were written in does not matter.
    assert [sweep.make_run(g).name for g in grid] == [
        "vit-tiny_kind=cola_lax=kron_optim.lr=0.001_train.steps=10",
        "vit-tiny_kind=cola_lax=kron_optim.lr=0.003_train.steps=10",
    ]
    assert (
        sweep.make_run({"train.steps": 10, "optim.lr": 1e-3, "config": grid[0]["config"]}).name
        == sweep.make_run(grid[0]).name
    )
    zipped = sweep.zip_(sweep.axis("optim.lr", [1, 2]), sweep.axis("train.steps", [10, 20]))
    assert zipped == [{"optim.lr": 1, "train.steps": 10}, {"optim.lr": 2, "train.steps": 20}]
    with pytest.raises(ValueError, match="equal length"):
        sweep.zip_(sweep.axis("a.b", [1]), sweep.axis("c.d", [1, 2]))
    with pytest.raises(ValueError, match="same key"):
        sweep.product(sweep.axis("a.b", [1]), sweep.axis("a.b", [2]))
    assert sweep.variants(["dense", "cola"], ["none", "kron"], [8]) == [
        "kind=dense",
        "kind=cola,lax=none,rank=8",
        "kind=cola,lax=kron,rank=8",
    ]
    with pytest.raises(ValueError, match="dotted config path"):
        sweep.make_run({"config": "configs/llama.py:nano", "steps": 3})
    assert [
        r.name for r in sweep.select(sweep.load_sweep(SWEEPS / "cpu.py")[1], r"^vit-.*kron_rank=40$")
    ] == [
        "vit-tiny_kind=svd_lax=kron_rank=40",
        "vit-tiny_kind=cola_lax=kron_rank=40",
        "vit-tiny_kind=tt_lax=kron_rank=40",
    ]
    run = sweep.make_run({"config": "configs/llama.py:nano,kind=cola,lax=kron", "optim.lr": 1e-3})
    assert sweep.train_args(run, "w/x", "s", {"train.steps": "5"}) == [
        "--config=configs/llama.py:nano,kind=cola,lax=kron",
        "--workdir=w/x",
        "--config.optim.lr=0.001",
        "--config.train.steps=5",
        "--config.wandb.group=s",
        f"--config.wandb.name={run.name}",
    ]
    assert run.tags == ["llama-nano", "kind=cola", "lax=kron", "optim.lr=0.001"]
    assert run.variant == "cola+kron" and variant_name("dense", "none") == "dense"
    # the benchmarks' forms of the same name: a kron implementation, a remat policy
    assert variant_name("cola", "kron", kron_impl="gemm") == "cola+kron[gemm]"
    assert variant_name("cola", "none", "cola_m") == "cola remat=cola_m"
    assert sweep.command(run, "w/x", "s", launcher="slurm", launcher_args=["--nodes=2"])[:4] == [
        "scripts/launch_slurm.sh",
        "--nodes=2",
        "--workdir=w/x",
        "--",
    ]


def commit(run_dir: Path, step: int) -> None:
    """A checkpoint of `step` as the trainer's orbax manager commits it."""
    manager = ocp.CheckpointManager(
        (run_dir / "checkpoints").resolve(),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
    )
    manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave({"step": step})))
    manager.close()


def test_finished_needs_a_committed_checkpoint_at_the_target(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 5.0}\n{"step": 6, "eval_loss": 4.0}\n')
    assert runner.run_status(run, 6) == "running"  # metrics, no runner record: someone is training it
    commit(run, 3)
    (run / "checkpoints" / "6.orbax-checkpoint-tmp-123").mkdir()  # a save in flight does not count
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "loss": 4.1}\n{"step": 7, "lo')  # the last line cut short by a kill
    assert runner.latest_step(run) == 3 and not runner.is_finished(run, 6)
    commit(run, 6)
    assert runner.is_finished(run, 6) and runner.run_status(run, 6) == "finished"
    assert runner.is_finished(run, 4)  # a lowered target is reached too
    assert not runner.is_finished(run, 10)  # a longer target is not
    assert runner.latest_step(tmp_path / "nothing") is None
    (run / runner.STATUS_FILE).write_text(
        json.dumps({"status": "running", "pid": 2**22 + 7, "host": os.uname().nodename})
    )
    assert runner.run_status(run, 10) == "stopped"  # its process is gone
    (run / runner.STATUS_FILE).write_text(
        json.dumps({"status": "running", "pid": os.getpid(), "host": os.uname().nodename})
    )
    assert runner.run_status(run, 10) == "running"
    assert runner.run_status(tmp_path / "nothing", 10) == "pending"


def test_read_metrics_skips_lines_cut_short_by_a_kill(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 2, "loss": 3.0}\n{"step": 4, "lo{"step": 4, "loss": 2.5}\n\n'
        '{"step": 6, "loss": 2.0}\n{"step": 8, "l'
    )  # killed mid-write, resumed (its next record lands on the cut line), killed again
    assert read_metrics(tmp_path) == [{"step": 2, "loss": 3.0}, {"step": 6, "loss": 2.0}]
    assert read_metrics(tmp_path / "missing") == []


def test_wandb_spec():
    name, runs = sweep.load_sweep(SWEEPS / "cpu.py", suite="cpu_llama", seeds=1)
    spec = wandb_sweep.spec(runs, name, "runs/sweep_cpu")
    assert spec["method"] == "grid" and spec["program"] == "lax_pretrain.train"
    assert spec["parameters"]["config"]["values"] == [r.config for r in runs]
    assert spec["parameters"]["config.train.steps"] == {"value": 600}
    assert spec["parameters"]["config.wandb.group"] == {"value": "cpu"}
    assert "${args}" in spec["command"] and any("$WANDB_RUN_ID" in c for c in spec["command"])
    with pytest.raises(ValueError, match="not set in every run"):  # per-suite settings: one suite at a time
        wandb_sweep.spec(sweep.load_sweep(SWEEPS / "cpu.py")[1], name, "w")
    coupled = [
        sweep.make_run(d)
        for d in sweep.zip_(
            sweep.axis("config", ["configs/llama.py:nano", "configs/llama.py:nano,kind=cola"]),
            sweep.axis("optim.lr", [1e-3, 3e-3]),
        )
    ]
    with pytest.raises(ValueError, match="not the product"):
        wandb_sweep.spec(coupled, "x", "w")


# ------------------------------------------------------------------------------------------------- CLI


def cli_env(cache_dir: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, not conftest's 8
    env["JAX_PLATFORMS"] = "cpu"
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    return env


def sweep_cli(*args: str) -> list[str]:
    return [sys.executable, "scripts/sweep.py", *args]


def test_dry_run_prints_one_command_per_run(tmp_path):
    out = subprocess.run(
        sweep_cli(
            "--sweep=configs/sweeps/llama_paper.py",
            f"--workdir={tmp_path}/lp",
            "--dry_run",
            f"--wandb_spec={tmp_path}/spec.yaml",
        ),
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 28
    for line, name in zip(lines, names(SWEEPS / "llama_paper.py")):
        assert re.search(r" -m lax_pretrain\.train --config=configs/llama\.py:\S+ ", line), line
        assert f"--workdir={tmp_path}/lp/{name} " in line and "--config.wandb.group=llama_paper" in line
    assert lines[4].startswith("WANDB_TAGS=llama-60m,kind=cola,lax=kron ")
    assert "program: lax_pretrain.train" in (tmp_path / "spec.yaml").read_text()

    out = subprocess.run(
        sweep_cli(
            "--sweep=configs/sweeps/vit_paper.py",
            f"--workdir={tmp_path}/vp",
            "--dry_run",
            "--only=^vit-l16_kind=(dense|cola)",
            "--launcher=tpu",
            "--launcher_args=--tpu=my-pod --zone=us-central2-b",
            "--set=train.steps=7",
        ),
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 3  # dense, cola/none, cola/kron
    for line, name in zip(
        lines, ["vit-l16_kind=dense", "vit-l16_kind=cola_lax=none", "vit-l16_kind=cola_lax=kron"]
    ):
        assert (
            f" scripts/launch_tpu_pod.sh --tpu=my-pod --zone=us-central2-b --workdir={tmp_path}/vp/{name} -- "
            "--config=configs/vit.py:l16" in line
        )
        assert "--config.train.steps=7" in line and "_train.steps" not in line


def test_bad_input_is_one_line_and_status_2(tmp_path):
    for args, message in [
        (["--workdir=x"], "the following arguments are required: --sweep"),
        (["--sweep=configs/sweeps/missing.py", "--workdir=x"], "configs/sweeps/missing.py does not exist"),
        (["--sweep=configs/sweeps/cpu.py", "--workdir=x", "--only=^nothing"], "no run of"),
        (["--sweep=configs/sweeps/cpu.py", "--workdir=x", "--set=train.steps"], "expected KEY=VALUE"),
    ]:
        out = subprocess.run(
            sweep_cli(*args), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 2, (args, out.stderr)
        assert (
            out.stderr.startswith("error: ") and message in out.stderr and len(out.stderr.splitlines()) == 1
        )


def test_runs_go_through_the_launch_scripts(tmp_path):
    """The runner really runs scripts/launch_slurm.sh (in its own --dry_run mode: the sbatch script is
    printed, nothing is submitted): the launcher takes the workdir as its option and the trainer's arguments
    after `--`, and its exit 0 short of the target leaves the run 'launched'."""
    name = "llama-nano_kind=cola_lax=kron_rank=80"
    out = subprocess.run(
        sweep_cli(
            "--sweep=configs/sweeps/cpu.py",
            f"--workdir={tmp_path}",
            f"--only=^{name}$",
            "--launcher=slurm",
            "--launcher_args=--nodes=2 --gpus_per_node=8 --dry_run",
        ),
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert runner.read_status(tmp_path / name)["status"] == "launched"
    script = (tmp_path / name / runner.STDOUT_LOG).read_text()
    assert "#SBATCH --nodes=2" in script
    assert (
        f"-m lax_pretrain.train --workdir={tmp_path}/{name} --config=configs/llama.py:nano,kind=cola"
        in script
    )


# ------------------------------------------------------------------------------------ a real CPU sweep


@pytest.fixture(scope="module")
def shared_tmp(tmp_path_factory) -> Path:
    """A directory shared by the xdist workers of this session: the Shakespeare TFDS dir and the JAX cache."""
    root = tmp_path_factory.getbasetemp().parent / "shared"
    root.mkdir(exist_ok=True)
    return root


def statuses(workdir: Path) -> dict[str, str]:
    return {d.name: runner.read_status(d).get("status", "") for d in sorted(workdir.iterdir()) if d.is_dir()}


@pytest.mark.slow
def test_real_sweep_killed_resumed_skipped_and_compared(tmp_path, shared_tmp):
    sweep_file = tmp_path / "tiny.py"
    sweep_file.write_text(textwrap.dedent(TINY_SWEEP))
    workdir = tmp_path / "sweep"
    args = (f"--sweep={sweep_file}", f"--workdir={workdir}", f"--set=data.data_dir={shared_tmp / 'tfds'}")
    env = cli_env(shared_tmp / "jax_cache")

    # 1. Start the sweep one run at a time; SIGKILL its whole process group once the first run has finished.
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        sweep_cli(*args), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + TIMEOUT_S
    first = workdir / GOOD_RUNS[0]
    try:
        while runner.read_status(first).get("status") != "finished":
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run did not finish in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    first_metrics = (first / "metrics.jsonl").read_text()
    assert runner.is_finished(first, 6)
    assert runner.run_status(workdir / GOOD_RUNS[1], 6) in (
        "stopped",
        "pending",
    )  # killed mid-way, or not begun

    # 2. Re-run, two at a time: the first run is skipped, the rest finish, the bad run fails and is recorded.
    out = subprocess.run(
        sweep_cli(*args, "--parallel=2"), cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]  # 1: a run failed
    assert re.search(rf"{re.escape(GOOD_RUNS[0])}\s+skipped \(finished\)", out.stdout), out.stdout
    for name in GOOD_RUNS:
        assert runner.is_finished(workdir / name, 6), (name, out.stdout)
    assert (first / "metrics.jsonl").read_text() == first_metrics  # untouched
    assert statuses(workdir) == {**{n: "finished" for n in GOOD_RUNS}, BAD_RUN: "failed"}
    bad = runner.read_status(workdir / BAD_RUN)
    assert bad["returncode"] not in (0, None) and "optim.lr=-1.0 must be > 0" in bad["stderr_tail"]
    assert "--config.optim.lr=-1.0" in bad["command"]
    spans = sorted(
        (s["started"], s["ended"]) for s in map(runner.read_status, (workdir / n for n in GOOD_RUNS[1:]))
    )
    assert any(b[0] <= a[1] for a, b in zip(spans, spans[1:])), spans  # --parallel=2 overlapped runs

    # 3. Once more: nothing left to train.
    out = subprocess.run(
        sweep_cli(*args, "--only=(rank=8|dense)$"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(re.findall(r"^llama-nano\S*\s+skipped \(finished\)", out.stdout, re.M)) == 4, out.stdout
    assert "[start]" not in out.stdout

    # 4. Compare: the table lists every run (the failed one too) and the plots are real images.
    report = tmp_path / "report"
    out = subprocess.run(
        [sys.executable, "scripts/compare.py", str(workdir), f"--out={report}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = (report / "report.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| llama-nano")]
    assert len(rows) == 5
    assert all(ln.rstrip(" |").endswith("finished") for ln in rows if BAD_RUN not in ln)
    assert next(ln for ln in rows if BAD_RUN in ln).rstrip(" |").endswith("failed")
    assert "## Failed runs" in text and "optim.lr=-1.0 must be > 0" in text
    for png in ("loss_curves.png", "val_vs_params.png"):
        path = report / png
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        assert matplotlib.image.imread(path)[..., :3].std() > 0
    runs = {r.name: r for r in results.load_runs([str(workdir)])}
    dense, kron = runs[GOOD_RUNS[0]], runs[GOOD_RUNS[3]]
    assert dense.kind == "dense" and kron.kind == "cola" and kron.crossing == "kron"
    assert kron.params < dense.params and dense.step == 6 and [s for s, _ in dense.val_curve] == [0, 3, 6]
