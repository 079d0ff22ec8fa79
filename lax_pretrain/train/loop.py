"""The one training loop: pretraining (every parameter trainable) and adapter fine-tuning (a filter picks the
trainable variables) both run through `train()`.

Per run, in the workdir: config.json (+ configs/<launch time>.json per launch), metrics.jsonl,
checkpoints/<step>/, wandb/ (unless disabled). Nothing is written there before the config is checked, the
workdir's checkpoints are found to hold this same run (train/resume.py) and the compiled step is known to fit
the device's memory (train/preflight.py; on CPU, each device's share of the host's available memory).
Resume is automatic, with one history per run (train/metrics.py). A preemption (SIGTERM; on a pod, any
process's notice) stops every process after the same step with one checkpoint, and train() returns. A NaN/Inf
loss stops with FloatingPointError and leaves the last good checkpoint as the newest. Evaluation streams the
eval split afresh each time (`data.eval_batches` global batches), so host memory holds a few batches of it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from lax_pretrain import data as data_lib
from lax_pretrain.models.stats import model_stats
from lax_pretrain.parallel import make_mesh
from lax_pretrain.parallel.distributed import Preemption, gather_json
from lax_pretrain.train.checkpoint import Checkpointer, abstract_like, read_params
from lax_pretrain.train.metrics import MetricWriter
from lax_pretrain.train.mfu import device_peak_flops
from lax_pretrain.train.preflight import check_fits
from lax_pretrain.train.program import ModelFactory, Program, build_program
from lax_pretrain.train.resume import check_init_from, check_resume
from lax_pretrain.train.storage import workdir_path
from lax_pretrain.train.validate import check_workdir, prepare_workdir, validate_config

log = logging.getLogger(__name__)


def _to_global(batch: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
    """Assembles the global batch from each process's slice (one process: a plain device_put)."""
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def train(
    config: Any,
    workdir: str | Path,
    *,
    model_factory: ModelFactory | None = None,
    trainable: nnx.filterlib.Filter = nnx.Param,
    init_values: Mapping[tuple, Any] | None = None,
) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds checkpoints). Returns the final metrics summary.

    `init_values` (flat state path -> host array, e.g. a pretrained base under adapters) replace the factory's
    initial values at those paths; they are placed straight into their shardings (`place_values`) and never
    become constants of a jitted function. Frozen values are not checkpointed: pass them again on resume."""
    workdir = workdir_path(workdir)  # a local path, or a gs:// URL (train/storage.py)
    mesh = make_mesh(config.mesh)
    data_info = validate_config(config, mesh)  # every config error before anything is read
    check_workdir(workdir)
    program_args = dict(model_factory=model_factory, trainable=trainable, init_values=init_values)
    abstract = build_program(config, mesh, abstract=True, **program_args)  # shapes only, nothing allocated
    changes = check_resume(workdir, config, abstract.params, abstract.opt_state)  # a workdir is one run
    check_init_from(config, abstract.params)
    data_lib.ensure_available(config.data)  # builds embedded data on first use; unprepared C4/ImageNet fail
    # The step is compiled for abstract state and checked against the device's memory before the workdir is
    # touched; training then runs this very executable (compiled once).
    compiled_step = abstract.lower_train_step().compile()
    local = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())  # stats are local
    check_fits(compiled_step, local)  # DoesNotFit names the terms and keys (CPU: against host memory)
    prepare_workdir(workdir, config, changes)
    # From here on a preemption is noticed: one during start-up stops the run before its first step.
    with Preemption() as preempt:
        program = build_program(config, mesh, **program_args)
        return _train(config, workdir, data_info, preempt, program, compiled_step)


def _train(
    config, workdir: Path, data_info: dict, preempt: Preemption, program: Program, step_fn
) -> dict[str, Any]:
    """train() once the config is checked and the step fits, with `preempt` watching."""
    t_cfg = config.train
    mesh = program.mesh
    stats = model_stats(config.model, data_info.get("seq_len", 0))
    task, params, frozen, opt_state = program.task, program.params, program.frozen, program.opt_state
    # Everything traced below (steps, eval) sees the mesh, the rules table and the TP implementation.
    with program.context():
        train_it = data_lib.make_train_iterator(
            config.data,
            global_batch_size=t_cfg.batch_size,
            seed=t_cfg.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        ckpt = Checkpointer(workdir / "checkpoints", keep=t_cfg.keep_checkpoints)
        start = 0
        restored = ckpt.restore(abstract_like(params), abstract_like(opt_state))
        if restored is None and t_cfg.get("init_from"):
            # A new run from another run's parameters (checked by check_init_from): fresh optimizer and data.
            source_step, params = read_params(t_cfg.init_from, abstract_like(params))
            log.info("starting from the parameters of %s (step %d)", t_cfg.init_from, source_step)
        elif restored is not None and restored[1]["opt_state"] is None:
            # An import: its parameters are initial values; the optimizer and the data order start fresh.
            params = restored[1]["params"]
            log.info("starting from the parameters-only checkpoint (an import) in %s", workdir)
        elif restored is not None:
            start, state = restored
            params, opt_state = state["params"], state["opt_state"]
            train_it.set_state(
                data_lib.state_for_process(state["data"], jax.process_index(), jax.process_count())
            )
            log.info("resumed from step %d in %s", start, workdir)

        data_state = train_it.get_state()  # before the first batch: what a checkpoint at `start` holds
        batch = next(train_it)
        batch_sh = program.batch_shardings
        # Re-iterable: each evaluation reads the same batches afresh, a few in flight (never the whole split).
        eval_batches = data_lib.make_eval_batches(
            config.data,
            global_batch_size=t_cfg.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

        def evaluate(p) -> dict[str, float]:
            began = time.perf_counter()
            sums = [
                jax.device_get(program.eval_step(p, frozen, _to_global(b, batch_sh))) for b in eval_batches
            ]
            return {**task.summarize(sums), "eval_time_s": time.perf_counter() - began}

        peak, device_kind = device_peak_flops()
        n_dev = mesh.size
        tokens_per_example = stats.seq_len
        writer = MetricWriter(workdir, config, run_name=config.name or workdir.name, resume_step=start)
        if start == 0:
            writer.write(
                {
                    "step": 0,
                    **(evaluate(params) if t_cfg.eval_at_start else {}),
                    "params": stats.total_params,
                    "non_embedding_params": stats.non_embedding_params,
                    "lax_params": stats.lax_params,
                    "flops_per_token": stats.flops_per_token,
                    **data_lib.corpus_counts(config.data),
                    "device": device_kind,
                    "num_devices": n_dev,
                }
            )
        if peak is None:
            log.info("MFU omitted: no peak FLOP/s known for device kind %r", device_kind)

        summary: dict[str, Any] = {"status": "running", "start_step": start}
        last_saved = start
        pending: tuple[int, dict] | None = None
        window_start, window_steps = time.perf_counter(), 0

        def check_finite(step_done: int, metrics: dict) -> dict:
            host = jax.device_get(metrics)
            if not math.isfinite(float(host["loss"])):
                ckpt.wait()
                raise FloatingPointError(
                    f"loss became {float(host['loss'])} at step {step_done}; stopping. The last good checkpoint "
                    f"(step {ckpt.latest_step()}) in {workdir / 'checkpoints'} is kept; lower optim.lr or raise "
                    "optim.warmup_steps and resume."
                )
            return host

        bar = tqdm(total=t_cfg.steps, initial=start, disable=jax.process_index() != 0, dynamic_ncols=True)
        step = start
        stop = preempt.should_stop(step)  # every process asks at every step, from the same first one
        try:
            while step < t_cfg.steps and not stop:
                params, opt_state, metrics = step_fn(
                    params, opt_state, frozen, _to_global(batch, batch_sh), step
                )
                step += 1
                window_steps += 1
                if pending is not None:  # check the previous step while this one runs
                    check_finite(*pending)
                pending = (step, metrics)
                bar.update(1)
                records = []
                if step % t_cfg.log_every == 0 or step == t_cfg.steps:
                    host = check_finite(*pending)
                    elapsed = time.perf_counter() - window_start
                    examples_per_s = window_steps * t_cfg.batch_size / elapsed
                    tokens_per_s = examples_per_s * tokens_per_example
                    tflops = stats.train_flops_per_token * tokens_per_s / 1e12
                    record = {
                        "step": step,
                        # Every key the step returns (loss, grad_norm, lr, each training metric), as it is:
                        # a new metric needs no change here (models/metrics.py).
                        **{name: float(value) for name, value in host.items()},
                        "tflops_per_s": tflops,
                        "mfu": tflops * 1e12 / (peak * n_dev) if peak else None,
                        "time": time.time(),
                    }
                    record[task.throughput_key] = task.throughput(examples_per_s, tokens_per_example)
                    local_data_state = train_it.get_state()
                    if "bad_records" in local_data_state:  # a stream of files: every process has its count
                        record.update(data_lib.skipped_records(gather_json(local_data_state["bad_records"])))
                    records.append(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                if step % t_cfg.eval_every == 0 or step == t_cfg.steps:
                    records.append({"step": step, **evaluate(params)})
                writer.write(*records)  # before this step's checkpoint: a resume from it keeps them
                if records:  # the throughput window restarts after logging and after an evaluation
                    window_start, window_steps = time.perf_counter(), 0
                # The iterator state as of the batches trained on: what every checkpoint must hold.
                data_state = train_it.get_state()
                if step % t_cfg.checkpoint_every == 0 or step == t_cfg.steps:
                    check_finite(*pending)  # never save parameters that came from a NaN step
                    # Every process's iterator state: orbax writes the JSON item from process 0 alone.
                    ckpt.save(step, params, opt_state, data_lib.combine_states(gather_json(data_state)))
                    last_saved = step
                stop = preempt.should_stop(step)
                if step < t_cfg.steps and not stop:
                    batch = next(train_it)
        finally:
            bar.close()
        if pending is not None:
            check_finite(*pending)
        if step != last_saved:  # preempted between checkpoints
            ckpt.save(step, params, opt_state, data_lib.combine_states(gather_json(data_state)), force=True)
        summary["status"] = "preempted" if preempt.requested and step < t_cfg.steps else "done"
        ckpt.close()
        writer.close()
        summary["step"] = step
        summary["final_params"] = params
        return summary
