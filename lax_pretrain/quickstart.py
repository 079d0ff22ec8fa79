"""`make run`: pretrain the nano LLaMA with CoLA + LaX (kron) on the embedded Shakespeare corpus, on CPU.

    python -m lax_pretrain.quickstart --workdir=runs/quickstart [--steps=500]

Builds the dataset on first use, trains (resuming if the workdir holds a run), then prints the validation
perplexity next to the same run's starting perplexity, writes loss.png into the workdir, and samples text.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import flags  # noqa: E402

from lax_pretrain import cli  # noqa: E402
from lax_pretrain.config import llama_config  # noqa: E402
from lax_pretrain.sample import generate  # noqa: E402
from lax_pretrain.train import train  # noqa: E402
from lax_pretrain.train.metrics import read_metrics  # noqa: E402

FLAGS = cli.new_flags()
flags.DEFINE_string("workdir", "runs/quickstart", "Run directory.", flag_values=FLAGS)
flags.DEFINE_integer("steps", 500, "Training steps.", flag_values=FLAGS)


def quickstart_config(steps: int):
    config = llama_config("nano", kind="cola", lax="kron")
    # Shakespeare's default data.eval_batches (8 global batches) keeps the evaluations at ~2% of the wall time.
    config.data.seq_len = 128
    config.train.update(
        steps=steps,
        batch_size=16,
        log_every=20,
        eval_every=max(steps // 4, 1),
        checkpoint_every=max(steps // 4, 1),
    )
    config.optim.update(lr=3e-3, warmup_steps=max(steps // 10, 1))
    config.wandb.mode = "offline"
    return config


def plot_losses(workdir: Path) -> Path:
    records = read_metrics(workdir)
    train_pts = [(r["step"], r["loss"]) for r in records if "loss" in r]
    eval_pts = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*train_pts), label="train loss")
    ax.plot(*zip(*eval_pts), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / byte)")
    ax.set_title("nano LLaMA, CoLA + LaX (kron), Shakespeare")
    ax.grid(alpha=0.3)
    ax.legend()
    path = workdir / "loss.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _run(fv: flags.FlagValues) -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    workdir = Path(fv.workdir)
    summary = train(quickstart_config(fv.steps), workdir)
    evals = [r for r in read_metrics(workdir) if "eval_ppl" in r]
    first, last = evals[0], evals[-1]
    print(f"\nrun {summary['status']} at step {summary['step']} in {workdir}")
    print(
        f"validation perplexity (byte-level): {first['eval_ppl']:.2f} at step {first['step']} -> "
        f"{last['eval_ppl']:.2f} at step {last['step']}"
    )
    print(f"loss curve: {plot_losses(workdir)}")
    print("sample:\n" + generate(workdir, "ROMEO:\n", max_new_tokens=300))


def main(argv: list[str] | None = None) -> int:
    return cli.run(_run, FLAGS, argv)


if __name__ == "__main__":
    sys.exit(main())
