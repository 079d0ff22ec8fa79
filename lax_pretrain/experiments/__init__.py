"""Experiments: sweeps of training runs, running them, and reading and reporting their results.

sweep        sweep files (configs/sweeps/*.py), their runs, the run and variant names, commands; `lax-sweep`
runner       the finished-run test (orbax's committed steps), run statuses, running jobs locally or through
             scripts/launch_{slurm,tpu_pod}.sh, resumably
wandb_sweep  a sweep as a W&B grid spec (`wandb agent`)
results      runs as `RunResult`s from their workdirs or from W&B
report       the markdown tables, number formats and figures every report is written with
compare      comparison tables, per-variant means over seeds, report.md; `lax-compare`
reproduce    the LaX comparison at CPU scale: configs/sweeps/cpu.py run and reported (scripts/reproduce.py)
cli          the commands' shared argument handling (one-line errors, exit status 2)
"""
