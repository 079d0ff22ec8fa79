"""Loop suite: what `train()` adds to its own train step, at steady state (issue 17: <= 10% at nano on CPU).

Per case, `repeats` rounds, each timing both candidates back to back (the order alternates per round, so a
load spike on a shared machine lands on both alike):
  step  the loop's own program (`train.program.build_program`, exactly what `train()` runs) called back to back
        on one batch already on the device, `steps` calls with one block at the end: the step alone.
  loop  `train()` itself in a fresh workdir for `warmup_steps + steps` steps, logging every `log_every`,
        evaluating only at the end (not timed: the loop's throughput window restarts after an evaluation) and
        checkpointing only at the end. Its steady-state seconds per step come from its own throughput records
        (the `log_every` windows after the warm-up, which holds compilation): what a user's run sees.
ratio = loop / step per round; the median over rounds is the loop's overhead (target: <= 1.10 at nano on CPU).
User and system CPU seconds per step of each candidate are recorded: on a 2-core machine, threads that compete
with XLA's (the input pipeline's reader threads) show up there first.
"""

from __future__ import annotations

import copy
import resource
import statistics
import tempfile
import time
from typing import Any

import jax

from lax_pretrain import data as data_lib
from lax_pretrain.bench.models import TINY, Case, model_config, parse_cases
from lax_pretrain.layers.variants import variant_name
from lax_pretrain.machine import loadavg
from lax_pretrain.parallel import make_mesh
from lax_pretrain.train.loop import train
from lax_pretrain.train.metrics import read_metrics
from lax_pretrain.train.program import build_program

DEFAULT_CASES = "llama:nano:32x128,vit:tiny:128"  # the measurement (nano, 32 x 128 bytes); images


def _cpu_seconds() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def loop_config(case: Case, kind: str, crossing: str, *, steps: int, log_every: int, dtype: str):
    config = model_config(case.family, case.preset, kind, crossing, dtype=dtype, shrink=case.shrink)
    config.train.update(
        steps=steps,
        batch_size=case.batch_size,
        log_every=log_every,
        eval_every=steps,
        checkpoint_every=steps,
        keep_checkpoints=1,
        eval_at_start=False,
        grad_accum=1,
    )
    config.mesh.update(data=1, fsdp=1, tensor=1, num_devices=1)
    config.data.eval_batches = 1
    if case.seq_len:
        config.data.seq_len = case.seq_len
    config.wandb.mode = "disabled"
    return config


def time_step(config, steps: int) -> dict[str, float]:
    """Seconds (wall, user, system) per call of the loop's compiled step on one device-resident batch."""
    program = build_program(copy.deepcopy(config), make_mesh(config.mesh))
    batch_np = next(
        data_lib.make_train_iterator(
            config.data, global_batch_size=config.train.batch_size, seed=config.train.seed
        )
    )
    with program.context():
        batch = {k: jax.device_put(v, program.batch_shardings[k]) for k, v in batch_np.items()}
        params, opt_state = program.params, program.opt_state
        for i in range(2):  # compile and warm up
            params, opt_state, metrics = program.train_step(params, opt_state, program.frozen, batch, i)
        jax.block_until_ready(metrics)
        user0, sys0 = _cpu_seconds()
        t0 = time.perf_counter()
        for i in range(steps):
            params, opt_state, metrics = program.train_step(params, opt_state, program.frozen, batch, i)
        jax.block_until_ready((params, metrics))
        wall = time.perf_counter() - t0
        user1, sys1 = _cpu_seconds()
    return {"s": wall / steps, "user_s": (user1 - user0) / steps, "sys_s": (sys1 - sys0) / steps}


def time_loop(config, warmup_steps: int) -> dict[str, float]:
    """Steady-state seconds per step of `train(config)` from its own throughput records, and CPU seconds per
    step over the whole run (compilation included, so only comparable between loop rows)."""
    with tempfile.TemporaryDirectory() as workdir:
        user0, sys0 = _cpu_seconds()
        t0 = time.perf_counter()
        train(config, workdir)
        wall = time.perf_counter() - t0
        user1, sys1 = _cpu_seconds()
        records = [r for r in read_metrics(workdir) if "loss" in r and r["step"] > warmup_steps]
    if not records:
        raise ValueError(f"the loop logged no step after warm-up step {warmup_steps}: raise steps")
    key = "tokens_per_s" if "tokens_per_s" in records[0] else "images_per_s"
    per_example = config.data.seq_len if key == "tokens_per_s" else 1
    step_s = [config.train.batch_size * per_example / r[key] for r in records]
    n = config.train.steps
    return {
        "s": statistics.median(step_s),
        "windows_s": step_s,
        "wall_s": wall,
        "user_s": (user1 - user0) / n,
        "sys_s": (sys1 - sys0) / n,
    }


def run_loop(
    *,
    dtype: str = "float32",
    cases: list[Case] | None = None,
    variants: tuple[tuple[str, str], ...] = (("dense", "none"), ("cola", "kron")),
    steps: int = 40,
    warmup_steps: int = 10,
    log_every: int = 10,
    repeats: int = 3,
    tiny: bool = False,
    log=print,
) -> dict[str, Any]:
    """Times every (case, variant) as described above; returns the suite's result (rows, settings)."""
    if tiny:
        cases, steps, warmup_steps, log_every, repeats = (
            [Case("llama", "nano", 4, 32, shrink=TINY)],
            4,
            2,
            2,
            1,
        )
    cases = cases or parse_cases(DEFAULT_CASES)
    load_before = loadavg()
    if warmup_steps % log_every or steps % log_every:
        raise ValueError(f"steps={steps} and warmup_steps={warmup_steps} must be multiples of log_every")
    rows = []
    for case in cases:
        for kind, crossing in variants:
            config = loop_config(
                case,
                kind,
                crossing,
                steps=warmup_steps + steps,
                log_every=log_every,
                dtype=dtype,
            )
            rounds = []
            for r in range(repeats):
                order = ("step", "loop") if r % 2 == 0 else ("loop", "step")
                timed = {}
                for name in order:
                    timed[name] = (
                        time_step(config, steps) if name == "step" else time_loop(config, warmup_steps)
                    )
                rounds.append(
                    {**timed, "ratio": timed["loop"]["s"] / timed["step"]["s"], "loadavg": loadavg()}
                )
                log(
                    f"[loop] {case.label} {variant_name(kind, crossing)} round {r + 1}/{repeats}: step "
                    f"{timed['step']['s'] * 1e3:.1f} ms, loop {timed['loop']['s'] * 1e3:.1f} ms, "
                    f"ratio {rounds[-1]['ratio']:.3f}"
                )
            rows.append(
                {
                    "case": case.label,
                    "family": case.family,
                    "kind": kind,
                    "crossing": crossing,
                    "batch_size": case.batch_size,
                    "seq_len": case.seq_len,
                    "step_s": statistics.median(x["step"]["s"] for x in rounds),
                    "loop_s": statistics.median(x["loop"]["s"] for x in rounds),
                    "ratio": statistics.median(x["ratio"] for x in rounds),
                    "ratio_min": min(x["ratio"] for x in rounds),
                    "ratio_max": max(x["ratio"] for x in rounds),
                    **{
                        f"{who}_{cpu}_s": statistics.median(x[who][f"{cpu}_s"] for x in rounds)
                        for who in ("step", "loop")
                        for cpu in ("user", "sys")
                    },
                    "rounds": rounds,
                }
            )
    settings = {"steps": steps, "warmup_steps": warmup_steps, "log_every": log_every, "repeats": repeats}
    load = {"before": load_before, "after": loadavg()}
    return {"rows": rows, "settings": {**settings, "dtype": dtype}, "load": load}
