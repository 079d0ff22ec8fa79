"""The LaX paper's comparison scaled to a 2-core CPU: the suites of configs/sweeps/cpu.py (the one CPU grid),
trained by the runner and reported by compare.

    python scripts/reproduce.py --suite=cpu_llama --out=runs/reproduce/cpu_llama     # about an hour
    python scripts/reproduce.py --suite=cpu_vit   --out=runs/reproduce/cpu_vit       # about 90 minutes
    python scripts/reproduce.py --suite=cpu_llama --tiny --out=/tmp/smoke            # seconds-long smoke run
    python scripts/reproduce.py --suite=cpu_llama --steps=30 --out=/tmp/reduced      # a reduced budget

Each run trains in OUT/runs/<run name> (`python -m lax_pretrain.train`, one at a time). Resumable: running the
command again skips finished runs and resumes the interrupted one from its last checkpoint. Written to OUT:
results.md (the runs, the per-variant means over seeds with their spread, the difference to dense and the LaX
gain), results.json (the same numbers, the machine, the command), val_vs_params.png (final headline metric vs
non-embedding parameters) and loss_curves.png. Exit status 0 when every run finished, 1 otherwise, 2 on bad
input.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lax_pretrain import cli
from lax_pretrain.experiments import compare, report, results, runner, sweep
from lax_pretrain.layers import KINDS
from lax_pretrain.machine import loadavg, machine_info, machine_line
from lax_pretrain.models.tasks import get_task

SWEEP_FILE = Path("configs/sweeps/cpu.py")
# Smoke runs compile about twice as fast without XLA's optimizations (and run slower, which they can afford).
FAST_COMPILE_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


def budget_text(run: sweep.Run, extra: dict[str, Any]) -> str:
    """'300 steps x 16 examples x 128 tokens = 614,400 tokens', or '... = N examples' where the task counts
    examples."""
    overrides, config = run.all_overrides(extra), sweep.load_recipe(run.config)
    steps, batch = (
        sweep.target_steps(run, extra),
        int(overrides.get("train.batch_size", config.train.batch_size)),
    )
    task = get_task(config.model)
    if not task.counts_tokens:
        return f"{steps} steps x {batch} examples = {steps * batch:,} examples"
    tokens = task.tokens_per_example(config.model, int(overrides.get("data.seq_len", config.data.seq_len)))
    return f"{steps} steps x {batch} examples x {tokens} tokens = {steps * batch * tokens:,} tokens"


def low_rank_kinds() -> tuple[str, ...]:
    """The registered kinds that have a latent (so a LaX variant): svd, cola, tt and any registered since."""
    return tuple(name for name, kind in KINDS.items() if kind.has_latent)


def _verdict(better_by: float, noise_level: float | None) -> str:
    """How `better_by` (positive = better) reads against the noise: within it is a match, not a win."""
    if not noise_level:
        return "better" if better_by > 0 else "worse" if better_by < 0 else "equal"
    if abs(better_by) <= noise_level:
        return "within the noise"
    return "better" if better_by > 0 else "worse"


def claims(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The papers' claims read against this suite's per-variant summary (`compare.variant_summary`), as
    markdown lines. A claim of a match holds where the variant is better or within the noise level (the
    largest seed spread) of dense; a gain holds where it exceeds the noise level."""
    dense = summary.get("dense")
    if dense is None:
        return []
    noise_level = compare.noise(summary)
    sign = 1.0 if dense["higher_is_better"] else -1.0
    fmt = lambda v: report.metric(v, dense["metric"], signed=True)  # noqa: E731
    units = lambda v: f" ({compare.in_noise_units(v, noise_level)} noise)" if noise_level else ""  # noqa: E731
    lines = [
        "## The papers' claims at this scale",
        "",
        f"Noise level: {report.metric(noise_level, dense['metric'], difference=True)} (largest seed spread)"
        if noise_level
        else "Noise level: unknown (one seed per variant): no difference is resolved.",
        "",
        "| claim | variant | vs dense | fewer params | FLOPs/token vs dense | reading | holds |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(claim: str, name: str) -> None:
        s = summary.get(name)
        if s is None or s.get("delta_vs_dense") is None:
            return
        better_by = sign * s["delta_vs_dense"]
        reading = _verdict(better_by, noise_level)
        holds = reading in ("better", "within the noise")  # both claims are of a match
        flops = (
            f"{dense['flops_per_token'] / s['flops_per_token']:.2f}x less"
            if s.get("flops_per_token") and dense.get("flops_per_token")
            else "-"
        )
        lines.append(
            f"| {claim} | {name} | {fmt(s['delta_vs_dense'])}{units(s['delta_vs_dense'])} | "
            f"{report.num(s.get('params_vs_dense'), '.2f')}x | {flops} | {reading} | "
            f"{'yes' if holds else 'no'} |"
        )

    for kind in low_rank_kinds():
        row("LaX: low-rank + LaX matches or beats full rank at 2-3x fewer parameters", f"{kind}+kron")
    row("CoLA: matches full rank at about 2x less compute", "cola")
    gains = [
        f"{kind}: {fmt(summary[f'{kind}+kron']['lax_gain'])}{units(summary[f'{kind}+kron']['lax_gain'])}, "
        + _verdict(summary[f"{kind}+kron"]["lax_gain"], noise_level)
        for kind in low_rank_kinds()
        if summary.get(f"{kind}+kron", {}).get("lax_gain") is not None
    ]
    if gains:
        lines += [
            "",
            "LaX gain over the same factorization without it (positive = better): " + "; ".join(gains),
        ]
    return lines


def run_suite(
    suite: str,
    out_dir: str | Path,
    *,
    tiny: bool = False,
    seeds: int = 2,
    steps: int | None = None,
    data_dir: str = "",
    variants: Sequence[str] | None = None,
    command: str = "",
    log=print,
) -> tuple[dict[str, dict[str, Any]], list[results.RunResult]]:
    """Trains the unfinished runs of `suite` into OUT/runs/ and writes the report; returns the runner's
    {run name: status} and the runs' results."""
    module = sweep.load_module(SWEEP_FILE)
    name, runs = sweep.load_sweep(SWEEP_FILE, suite=suite, seeds=seeds, steps=steps, tiny=tiny)
    if variants:
        known = list(dict.fromkeys(r.variant for r in runs))
        unknown = [v for v in variants if v not in known]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(known)}")
        runs = [r for r in runs if r.variant in variants]
    extra = {"data.data_dir": data_dir} if data_dir else {}
    out = Path(out_dir)
    machine, start = machine_info(), time.perf_counter()
    jobs = sweep.jobs(runs, out / "runs", name, extra, env=FAST_COMPILE_ENV if tiny else None)
    statuses = runner.run_jobs(jobs, title=f"reproduce {suite} in {out}", log=log)
    rows = [results.load_run(job.workdir) for job in jobs]
    wall_s = time.perf_counter() - start
    train_s = sum(r.wall_time_s or 0.0 for r in rows)
    load = {"before": machine["loadavg"], "after": loadavg()}
    task = get_task(sweep.load_recipe(runs[0].config).model)
    notes = [
        module.SUITES[suite].notes
        + (" --tiny smoke version: shrunk model, 2 steps." if tiny else "")
        + (f" Reduced: --steps={steps}." if steps else ""),
        f"Budget per run: {budget_text(runs[0], extra)}; seeds 0..{max(seeds, 1) - 1} for every variant.",
        f"Metric: {task.headline_label} after the last step "
        f"({'higher' if task.higher_is_better else 'lower'} is better).",
        machine_line(machine, load, command)
        + f" Wall time of this command: {wall_s / 60:.1f} min; the {len(rows)} runs' training steps took "
        f"{train_s / 60:.1f} min in all (earlier invocations of a resumed suite included; start-up and "
        "evaluation not).",
    ]
    meta = {
        "suite": suite,
        "tiny": tiny,
        "seeds": seeds,
        "steps": steps,
        "command": command,
        "machine": machine,
        "load": load,
        "wall_s": wall_s,
        "train_s": train_s,
    }
    title = f"Reproduction: {suite}" + (" (--tiny smoke run)" if tiny else "")
    path = compare.write_report(
        rows,
        out,
        title=title,
        notes=notes,
        meta=meta,
        stem="results",
        x="non_embedding_params",
        y="final_metric",
        sections=claims(compare.variant_summary(rows)),
    )
    log(f"[reproduce] {suite}: {len(rows)} runs in {wall_s:.0f}s -> {path}")
    return statuses, rows


def _parser():
    p = cli.parser("scripts/reproduce.py", __doc__)
    p.add_argument("--suite", required=True, help=f"a suite of {SWEEP_FILE}: cpu_llama or cpu_vit")
    p.add_argument("--out", default=None, help="output directory (default runs/reproduce/<suite>[_tiny])")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke version (shrunk model, 2 steps)")
    p.add_argument("--seeds", type=int, default=2, help="seeds of every variant (0..N-1)")
    p.add_argument("--steps", type=int, default=None, help="override the suite's step budget (reduced runs)")
    p.add_argument(
        "--data_dir", default="", help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    p.add_argument("--variants", default=None, help="comma-separated subset, e.g. dense,cola+kron")
    return p


def _run(a) -> int:
    logging.getLogger("absl").setLevel(logging.WARNING)
    out = Path(a.out or f"runs/reproduce/{a.suite}" + ("_tiny" if a.tiny else ""))
    command = "python scripts/reproduce.py " + " ".join(shlex.quote(x) for x in a.argv)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()] if a.variants else None
    statuses, rows = run_suite(
        a.suite,
        out,
        tiny=a.tiny,
        seeds=a.seeds,
        steps=a.steps,
        data_dir=a.data_dir,
        variants=variants,
        command=command.strip(),
    )
    unfinished = [r.name for r in rows if r.status != "finished"]
    print(f"wrote {out / 'results.md'}" + (f"; not finished: {', '.join(unfinished)}" if unfinished else ""))
    return 0 if runner.all_done(statuses) and not unfinished else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    p.set_defaults(argv=argv)  # the report records the command
    return cli.run_parsed(p, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
