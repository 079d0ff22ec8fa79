"""The optimizer comparison at CPU scale: GaLore, Fira, APOLLO and APOLLO-Mini (configs/sweeps/optimizers.py)
beside full-rank AdamW, the cpu_llama suite's dense runs (read from that suite's results.json, not rerun).

    python -m lax_pretrain.experiments.optimizers --out=docs/benchmarks/optimizers          # runs + report
    python -m lax_pretrain.experiments.optimizers --tiny --out=/tmp/optimizers_smoke        # seconds

Resumable: finished runs are skipped, an interrupted one resumes from its checkpoint (OUT/runs/<run name>).
Per optimizer the report gives the validation perplexity (each seed, mean, spread), the optimizer state's
bytes (from the state's shapes: what a checkpoint and a device hold), and the step time relative to AdamW,
measured in this process, the programs side by side (lax_pretrain.timing.time_interleaved, paired ratios): an
ordinary step, a projector-refresh step and their mix at the method's update_proj_gap. Writes results.md,
results.json and loss_curves.png to OUT. Exit status 0 when every run finished, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lax_pretrain import cli
from lax_pretrain.experiments import compare, report, results, runner, sweep
from lax_pretrain.machine import loadavg, machine_info, machine_line
from lax_pretrain.optim import optimizer_name, own_section
from lax_pretrain.optim.low_rank import LowRankAdamState
from lax_pretrain.timing import paired_ratio, time_interleaved

SWEEP_FILE = Path("configs/sweeps/optimizers.py")
REFERENCE = Path("docs/benchmarks/reproduce/cpu_llama/results.json")
ADAMW = "adamw"
CONTROL = "adamw_control"  # AdamW at the methods' learning rate (configs/sweeps/optimizers.py CONTROL)
ORDER = (ADAMW, CONTROL, "galore", "fira", "apollo", "apollo_mini")
LABELS = {
    ADAMW: "AdamW (full rank)",
    CONTROL: "AdamW, lr 0.01 (control)",
    "galore": "GaLore",
    "fira": "Fira",
    "apollo": "APOLLO",
    "apollo_mini": "APOLLO-Mini",
}
# The papers' orderings on C4 (validation perplexity, the GaLore protocol, 60M-1B), as each paper claims them:
# (claim, method, compared with, the comparison holds where method is 'better' or 'matches').
CLAIMS = (
    ("GaLore matches full rank (GaLore Table 2: 34.88 vs 34.06)", "galore", ADAMW, "matches"),
    ("Fira beats GaLore (the Fira paper's C4 pretraining results)", "fira", "galore", "better"),
    ("Fira matches or beats full rank (the Fira paper)", "fira", ADAMW, "matches"),
    (
        "APOLLO matches or beats full-rank AdamW (the APOLLO paper's C4 pretraining results)",
        "apollo",
        ADAMW,
        "matches",
    ),
    ("APOLLO-Mini matches or beats full-rank AdamW (the APOLLO paper)", "apollo_mini", ADAMW, "matches"),
    ("APOLLO beats GaLore (the APOLLO paper)", "apollo", "galore", "better"),
    ("(control) GaLore matches full rank at the same lr", "galore", CONTROL, "matches"),
    ("(control) Fira matches or beats full rank at the same lr", "fira", CONTROL, "matches"),
    ("(control) APOLLO matches or beats full rank at the same lr", "apollo", CONTROL, "matches"),
    ("(control) APOLLO-Mini matches or beats full rank at the same lr", "apollo_mini", CONTROL, "matches"),
)


def group_of(run: sweep.Run) -> str:
    """The report's row of a run: its optimizer, or the AdamW control."""
    name = run.overrides.get("optim.name", ADAMW)
    return CONTROL if name == ADAMW else name


# ----------------------------------------------------------------------------------------- configs


def run_config(run: sweep.Run, extra: dict[str, Any] | None = None):
    """The ConfigDict a run trains: its recipe with the shared, own and extra overrides applied."""
    config = copy.deepcopy(sweep.load_recipe(run.config))
    config.update_from_flattened_dict(run.all_overrides(extra))
    return config


def adamw_run(run: sweep.Run) -> sweep.Run:
    """The same run with the cpu_llama suite's AdamW: the run without its own optim.* overrides."""
    own = {k: v for k, v in run.overrides.items() if not k.startswith("optim.")}
    return dataclasses.replace(run, overrides=own)


# ------------------------------------------------------------------------------------------ measuring


def state_bytes(opt_state: Any) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(opt_state)))


def with_count(opt_state: Any, count: int) -> Any:
    """The state with every low-rank step counter set to `count` (0: the next step refreshes the projectors)."""
    return jax.tree.map(
        lambda s: s._replace(count=jnp.full((), count, jnp.int32)) if isinstance(s, LowRankAdamState) else s,
        opt_state,
        is_leaf=lambda s: isinstance(s, LowRankAdamState),
    )


def measure(configs: dict[str, Any], *, repeats: int, log=print) -> dict[str, dict[str, Any]]:
    """Per optimizer: state bytes, seconds per ordinary and per refresh step (the low-rank ones), and the
    paired ratios to AdamW's step ('adamw' must be among `configs`). All programs are built first, then timed
    round-robin, so load spikes land on every candidate alike."""
    from lax_pretrain.parallel import make_mesh
    from lax_pretrain.train.program import build_program

    programs, fns, out = {}, {}, {}
    for name, config in configs.items():
        program = build_program(config, make_mesh(config.mesh))
        programs[name] = program
        out[name] = {
            "state_bytes": state_bytes(program.opt_state),
            "param_bytes": state_bytes(program.params),
        }
        batch = {
            k: jax.device_put(np.zeros(s.shape, s.dtype), s.sharding) for k, s in program.batch_spec.items()
        }
        carry = {"params": program.params, "opt": program.opt_state}

        def step(program=program, batch=batch, carry=carry, count=None):
            opt = carry["opt"] if count is None else with_count(carry["opt"], count)
            with program.context():
                carry["params"], carry["opt"], metrics = program.train_step(
                    carry["params"], opt, program.frozen, batch, jnp.int32(1)
                )
            return metrics["loss"]

        if name == ADAMW:
            fns[name] = step
        else:
            fns[name] = lambda step=step: step(count=1)  # never a refresh step
            fns[f"{name}/refresh"] = lambda step=step: step(count=0)
        log(f"[optimizers] built {name}: state {out[name]['state_bytes']:,} bytes")
    stats = time_interleaved(fns, repeats=repeats, warmup=2, min_sample_s=0.5)
    for name, config in configs.items():
        row = out[name]
        row["step_s"] = stats[name].median
        if name == ADAMW:
            continue
        gap = own_section(config.optim, optimizer_name(config.optim))["update_proj_gap"]
        row["refresh_step_s"] = stats[f"{name}/refresh"].median
        row["step_ratio"] = paired_ratio(stats[name], stats[ADAMW])
        row["refresh_ratio"] = paired_ratio(stats[f"{name}/refresh"], stats[ADAMW])
        row["amortized_ratio"] = ((gap - 1) * row["step_ratio"] + row["refresh_ratio"]) / gap
        row["update_proj_gap"] = gap
    return out


# -------------------------------------------------------------------------------------------- report


def reference_runs(path: Path) -> list[results.RunResult]:
    """The full-rank AdamW runs of the cpu_llama suite (its dense rows), as that suite recorded them."""
    data = json.loads(path.read_text())
    fields = set(results.RunResult.__dataclass_fields__)
    rows = [results.RunResult(**{k: v for k, v in r.items() if k in fields}) for r in data["runs"]]
    return [r for r in rows if r.kind == "dense" and r.crossing in (None, "none")]


def summarize(groups: dict[str, list[results.RunResult]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, runs in groups.items():
        values = [r.final_metric for r in runs if r.final_metric is not None]
        out[name] = {
            "seeds": len(values),
            "per_seed": values,
            "mean": statistics.fmean(values) if values else None,
            "spread": (max(values) - min(values)) if len(values) > 1 else None,
        }
    return out


def verdict(better_by: float, noise_level: float | None) -> str:
    """'better' / 'worse' beyond the noise level (the largest seed spread), 'matches' within it."""
    if noise_level and abs(better_by) <= noise_level:
        return "matches"
    return "better" if better_by > 0 else "worse"


def claim_lines(summary: dict[str, dict[str, Any]], noise_level: float | None) -> list[str]:
    lines = [
        "| claim (the paper's, C4 at 60M-1B; the control rows: ours) | here: difference in val perplexity "
        "| reading | holds |",
        "|---|---|---|---|",
    ]
    for claim, method, other, wanted in CLAIMS:
        a, b = summary.get(method, {}).get("mean"), summary.get(other, {}).get("mean")
        if a is None or b is None:
            lines.append(f"| {claim} | not run | - | - |")
            continue
        reading = verdict(b - a, noise_level)  # lower perplexity is better
        holds = reading == "better" or (wanted == "matches" and reading == "matches")
        units = f" ({compare.in_noise_units(a - b, noise_level)} noise)" if noise_level else ""
        lines.append(
            f"| {claim} | {LABELS[method]} {a - b:+.2f}{units} vs {LABELS[other]} | {reading} | "
            f"{'yes' if holds else 'no'} |"
        )
    return lines


def write_report(
    out: Path,
    groups: dict[str, list[results.RunResult]],
    measured: dict[str, dict[str, Any]],
    *,
    notes: Sequence[str],
    meta: dict[str, Any],
) -> Path:
    summary = summarize(groups)
    spreads = [s["spread"] for s in summary.values() if s["spread"] is not None]
    noise_level = max(spreads) if spreads else None
    adamw = summary.get(ADAMW, {}).get("mean")
    adamw_bytes = measured.get(ADAMW, {}).get("state_bytes")
    rows = []
    for name in ORDER:
        s, m = summary.get(name), measured.get(name, {})
        if s is None:
            continue
        rows.append(
            [
                LABELS[name],
                str(s["seeds"]),
                ", ".join(f"{v:.2f}" for v in s["per_seed"]) or "-",
                report.num(s["mean"]),
                report.num(s["spread"]),
                "-" if name == ADAMW or adamw is None or s["mean"] is None else f"{s['mean'] - adamw:+.2f}",
                report.count(m.get("state_bytes")),
                report.num(m["state_bytes"] / adamw_bytes if m.get("state_bytes") and adamw_bytes else None),
                "1 (reference)" if name == ADAMW else report.num(m.get("step_ratio")),
                "-" if name == ADAMW else report.num(m.get("refresh_ratio")),
                "-" if name == ADAMW else report.num(m.get("amortized_ratio"), ".3f"),
            ]
        )
    header = [
        "optimizer",
        "seeds",
        "val perplexity per seed",
        "mean",
        "spread",
        "vs AdamW",
        "optimizer state (bytes)",
        "state vs AdamW",
        "step time vs AdamW",
        "refresh step vs AdamW",
        "amortized",
    ]
    lines = [
        "# Optimizer baselines: cpu_llama (nano LLaMA, Shakespeare)",
        "",
        *[f"- {n}" for n in notes],
        "",
        report.markdown_table(header, rows, "lrlrrrrrrrr"),
        "",
        "Noise level: "
        + (f"{noise_level:.2f}" if noise_level else "unknown (one seed)")
        + " (the largest seed spread of any row). Step times are paired ratios to AdamW's step, measured side "
        "by side in one process: an ordinary step, a step that refreshes the projectors (SVD for GaLore and "
        "Fira, a random draw for APOLLO), and their mix at update_proj_gap.",
        "",
        "## The papers' orderings at this scale",
        "",
        *claim_lines(summary, noise_level),
        "",
        "## Runs",
        "",
        compare.markdown_table([r for name in ORDER for r in groups.get(name, [])]),
        "",
        "![train loss](loss_curves.png)",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    report.plot_loss_curves([r for name in ORDER for r in groups.get(name, [])], out / "loss_curves.png")
    path = out / "results.md"
    path.write_text("\n".join(lines))
    (out / "results.json").write_text(
        json.dumps(
            {
                **meta,
                "summary": summary,
                "noise": noise_level,
                "measured": measured,
                "runs": {name: [r.__dict__ for r in runs] for name, runs in groups.items()},
            },
            indent=1,
            default=str,
        )
    )
    return path


# --------------------------------------------------------------------------------------------- the run


def run_comparison(
    out_dir: str | Path,
    *,
    tiny: bool = False,
    seeds: int = 2,
    steps: int | None = None,
    reference: Path = REFERENCE,
    repeats: int = 7,
    train: bool = True,
    timing_from: str | Path | None = None,
    command: str = "",
    log=print,
) -> tuple[dict[str, dict[str, Any]], Path]:
    """Trains the unfinished runs (unless `train` is False: the report of the runs as they are) and writes the
    report; `timing_from`: an earlier results.json whose measured state bytes and step times are reused
    instead of measuring again. Returns the runs' statuses and the report's path."""
    out = Path(out_dir)
    name, runs = sweep.load_sweep(SWEEP_FILE, seeds=seeds, steps=steps, tiny=tiny)
    machine, start = machine_info(), time.perf_counter()
    jobs = sweep.jobs(
        runs, out / "runs", name, {}, env={"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"} if tiny else None
    )
    if train:
        statuses = runner.run_jobs(jobs, title=f"optimizers in {out}", log=log)
    else:
        statuses = {job.name: {"status": runner.run_status(job.workdir, job.steps)} for job in jobs}
    groups: dict[str, list[results.RunResult]] = {}
    if not tiny and reference.is_file():
        groups[ADAMW] = reference_runs(reference)[:seeds]
    for run, job in zip(runs, jobs):
        groups.setdefault(group_of(run), []).append(results.load_run(job.workdir))
    methods = [r for r in runs if "train.seed" not in r.overrides and group_of(r) != CONTROL]
    configs = {ADAMW: run_config(adamw_run(methods[0])), **{group_of(r): run_config(r) for r in methods}}
    if timing_from is not None:
        earlier = json.loads(Path(timing_from).read_text())
        measured, timing = earlier["measured"], earlier.get("timing", {})
        log(f"[optimizers] state bytes and step times from {timing_from}")
    else:
        load_before = loadavg()
        measured = measure(configs, repeats=2 if tiny else repeats, log=log)
        timing = {"time": machine_info()["time_utc"], "load": {"before": load_before, "after": loadavg()}}
    load = {"before": machine["loadavg"], "after": loadavg()}
    first_run = runs[0]
    notes = [
        "Every run: the cpu_llama suite's dense nano LLaMA, data, budget and schedule (configs/sweeps/cpu.py); "
        "only the optimizer and its learning rate differ. Methods as their authors' LLaMA-60M scripts set "
        "them (configs/sweeps/optimizers.py): lr 0.01, update_proj_gap 200, GaLore / Fira scale 0.25, APOLLO "
        "scale 1 channel-wise, APOLLO-Mini rank 1 tensor-wise scale 128; rank 64 = the scripts' rank / "
        "d_model (128 / 512) at d_model 256. AdamW: the suite's own runs (lr 3e-3, eps 1e-8), not rerun: "
        + (str(reference) if not tiny else "none in the --tiny smoke version"),
        f"Budget per run: {sweep.target_steps(first_run)} steps x "
        f"{first_run.all_overrides().get('train.batch_size')} sequences x "
        f"{first_run.all_overrides().get('data.seq_len')} tokens; seeds 0..{max(seeds, 1) - 1}.",
        "Metric: validation perplexity (bytes) over the whole validation split after the last step "
        "(lower is better).",
        machine_line(machine, load, command)
        + f" Wall time of this command: {(time.perf_counter() - start) / 60:.1f} min.",
    ]
    notes.append(
        f"State bytes and step times measured {timing.get('time', 'earlier')} (load average 1/5/15 min "
        f"before {timing.get('load', {}).get('before')}, after {timing.get('load', {}).get('after')})"
        + (f", reused from {timing_from}." if timing_from is not None else ".")
    )
    meta = {
        "tiny": tiny,
        "seeds": seeds,
        "steps": steps,
        "command": command,
        "machine": machine,
        "load": load,
        "timing": timing,
    }
    path = write_report(out, groups, measured, notes=notes, meta=meta)
    log(f"[optimizers] {len(runs)} runs -> {path}")
    return statuses, path


def _parser():
    p = cli.parser("python -m lax_pretrain.experiments.optimizers", __doc__)
    p.add_argument("--out", default="runs/optimizers", help="output directory (runs in OUT/runs)")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke version (shrunk model, 2 steps)")
    p.add_argument("--seeds", type=int, default=2, help="seeds of every method (0..N-1)")
    p.add_argument("--steps", type=int, default=None, help="override the suite's step budget")
    p.add_argument(
        "--reference", default=str(REFERENCE), help="the cpu_llama suite's results.json (AdamW rows)"
    )
    p.add_argument("--repeats", type=int, default=7, help="timing rounds (paired step-time ratios)")
    p.add_argument(
        "--timing_from",
        default="",
        help="reuse the state bytes and step times of an earlier results.json instead of measuring again",
    )
    p.add_argument(
        "--report_only",
        action="store_true",
        help="report the runs as they are (train nothing; another sweep process may be training them)",
    )
    return p


def _run(a) -> int:
    if a.seeds < 1:
        raise ValueError(f"--seeds={a.seeds} must be >= 1")
    command = "python -m lax_pretrain.experiments.optimizers " + shlex.join(sys.argv[1:])
    statuses, _ = run_comparison(
        a.out,
        tiny=a.tiny,
        seeds=a.seeds,
        steps=a.steps,
        reference=Path(a.reference),
        repeats=a.repeats,
        train=not a.report_only,
        timing_from=a.timing_from or None,
        command=command,
    )
    return 0 if runner.all_done(statuses) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_parsed(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
