"""Run (or print) every run of a sweep file, each in its own workdir, skipping finished runs.

    python scripts/sweep.py --sweep=configs/sweeps/cpu.py --workdir=runs/sweep_cpu [--dry_run] [--only=REGEX]
        [--parallel=N] [--launcher=local|tpu|slurm] [--launcher_args='...'] [--set=train.steps=150 ...]
        [--wandb_spec=sweep.yaml]

Each run trains in WORKDIR/<run name> through `python -m lax_pretrain.train` (or the TPU/SLURM launch
script, which takes the trainer's arguments after `--`), with W&B group = the sweep's name and tags from its
overrides. Finished runs are skipped, unfinished ones re-run (training resumes by itself), failures are
recorded in WORKDIR/<run>/sweep_status.json and the sweep carries on; it exits 1 if any run failed or is
left unfinished (SIGTERM/Ctrl-C: running runs are checkpointed and stopped, no new ones start). `--set`
overrides apply to every run and stay out of the run names. "Finished" is defined in lax_pretrain/sweep.py.
Run it from the repository root (recipe paths in sweep files are relative to it).
"""

from __future__ import annotations

import shlex
import sys

from absl import app, flags

from lax_pretrain import sweep

flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep(), e.g. configs/sweeps/cpu.py.")
flags.DEFINE_string("workdir", None, "Sweep directory: one sub-directory per run.")
flags.DEFINE_bool("dry_run", False, "Print one command per run to stdout instead of running.")
flags.DEFINE_string("only", "", "Regular expression: only runs whose name matches (re.search).")
flags.DEFINE_integer("parallel", 1, "How many runs at once.")
flags.DEFINE_enum("launcher", "local", list(sweep.LAUNCHERS), "Run locally or through scripts/launch_*.sh.")
flags.DEFINE_string("launcher_args", "", "Arguments for the launch script, before its '--' (shell-quoted).")
flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every run, not part of the names.")
flags.DEFINE_string("wandb_spec", None, "Also write a W&B grid sweep spec (YAML) of the selected runs here.")
flags.mark_flags_as_required(["sweep", "workdir"])


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise app.UsageError(f"--set={item!r}: expected KEY=VALUE, e.g. --set=train.steps=150")
        out[key.removeprefix("config.")] = value
    return out


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    name, runs = sweep.load_sweep(f.sweep)
    runs = sweep.select(runs, f.only)
    if not runs:
        raise app.UsageError(f"no run of {f.sweep} matches --only={f.only!r}")
    extra = parse_sets(f.set)
    launcher_args = shlex.split(f.launcher_args)
    if f.wandb_spec:
        path = sweep.write_wandb_spec(sweep.wandb_spec(runs, name, f.workdir, extra), f.wandb_spec)
        print(f"wrote W&B grid spec of {len(runs)} runs to {path}", file=sys.stderr)
    if f.dry_run:
        for run in runs:
            run_dir = f"{f.workdir}/{run.name}"
            if sweep.is_finished(run_dir, sweep.target_steps(run, extra)):
                print(f"# finished, skipped: {run.name}")
                continue
            argv_ = sweep.command(run, run_dir, name, extra, launcher=f.launcher, launcher_args=launcher_args)
            print(sweep.shell_line(argv_, sweep.tags_env(run)))
        return 0
    results = sweep.run_sweep(
        runs,
        f.workdir,
        name,
        extra=extra,
        parallel=f.parallel,
        launcher=f.launcher,
        launcher_args=launcher_args,
    )
    print(sweep.summary_table(results))
    done = ("finished", "skipped (finished)", "launched")
    return 0 if all(r["status"] in done for r in results.values()) else 1


if __name__ == "__main__":
    app.run(main)
