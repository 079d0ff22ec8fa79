"""Compare runs: a markdown table and plots of local run directories (or W&B runs).

    python scripts/compare.py RUN_DIR_OR_GLOB... --out=REPORT_DIR [--title=...]
    python scripts/compare.py runs/sweep_cpu --out=reports/sweep_cpu          # every run of a sweep directory
    python scripts/compare.py --wandb=ENTITY/PROJECT [--group=SWEEP] --out=REPORT_DIR   # needs the network

Writes REPORT_DIR/report.md (the table: run, kind, crossing, params, non-embedding params, FLOPs/token, final
train loss, best val loss, best val perplexity or top-1, tokens/s or images/s, MFU, wall time, status),
loss_curves.png and val_vs_params.png, and prints the table. Runs in progress and failed runs are listed with
their status. The columns are defined in lax_pretrain/compare.py.
"""

from __future__ import annotations

from absl import app, flags

from lax_pretrain import compare

flags.DEFINE_string("out", None, "Report directory (created).")
flags.DEFINE_string(
    "wandb", None, "Read W&B runs of ENTITY/PROJECT through the public API instead of local dirs."
)
flags.DEFINE_string("group", None, "With --wandb: only this group (the sweep's name).")
flags.DEFINE_string("title", "Run comparison", "Report title.")
flags.mark_flags_as_required(["out"])


def main(argv: list[str]) -> None:
    paths, f = argv[1:], flags.FLAGS
    if f.wandb:
        runs = compare.load_wandb_runs(f.wandb, f.group)
    elif paths:
        runs = compare.load_runs(paths)
    else:
        raise app.UsageError("give run directories (or globs), or --wandb=ENTITY/PROJECT")
    report = compare.write_report(runs, f.out, title=f.title)
    print(compare.markdown_table(runs))
    print(f"\nwrote {report} and its plots")


if __name__ == "__main__":
    app.run(main)
