"""Timing methodology shared by the suites (the machine record written next to every result is
`lax_pretrain.machine`).

Every candidate is a zero-argument callable that runs one unit of work (one jitted call, or one train step that
carries its own state) and returns something to block on. `time_interleaved`:

  1. warms each candidate up (`warmup` calls, each `block_until_ready`; compilation happened before, AOT),
  2. calibrates how many calls make one sample last at least `min_sample_s` (timer resolution, dispatch),
  3. takes `repeats` samples of every candidate round-robin, rotating the order each round, so a load spike on
     a shared machine lands on all candidates alike and ratios measured side by side stay meaningful,
  4. reports per call: median, min, max, quartiles and every sample (in round order, so two candidates'
     samples pair up: `paired_ratio`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass
class TimingStats:
    """Seconds per call."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    mean: float
    repeats: int
    calls_per_sample: int
    samples: list[float]

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["iqr"] = self.iqr
        return d


def summarize(samples: list[float], calls_per_sample: int = 1) -> TimingStats:
    if not samples:
        raise ValueError("no timing samples")
    s = sorted(samples)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return TimingStats(
        median=statistics.median(s),
        min=s[0],
        max=s[-1],
        q1=q1,
        q3=q3,
        mean=statistics.fmean(s),
        repeats=len(s),
        calls_per_sample=calls_per_sample,
        samples=list(samples),
    )


def _run(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    out = None
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - start


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    min_sample_s: float = 0.0,
    max_calls_per_sample: int = 1000,
) -> dict[str, TimingStats]:
    """Times every candidate of `fns` side by side (see the module docstring); seconds per call."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    calls: dict[str, int] = {}
    for name, fn in fns.items():
        first = math.inf
        for _ in range(max(warmup, 1)):  # at least one call: it also calibrates
            first = min(first, _run(fn, 1))
        calls[name] = max(1, min(max_calls_per_sample, math.ceil(min_sample_s / max(first, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(_run(fns[name], calls[name]) / calls[name])
    return {name: summarize(samples[name], calls[name]) for name in names}


def paired_ratio(a: TimingStats, b: TimingStats) -> float:
    """The median over rounds of a's sample / b's sample in the same round of `time_interleaved`: samples taken
    moments apart share the machine's load, so the ratio is steadier than a ratio of medians."""
    if len(a.samples) != len(b.samples):
        raise ValueError(
            f"paired_ratio needs samples of the same rounds, got {len(a.samples)} and {len(b.samples)}"
        )
    return statistics.median(x / y for x, y in zip(a.samples, b.samples))


def on_accelerator() -> bool:
    return jax.default_backend() in ("gpu", "tpu", "cuda", "rocm")


@contextlib.contextmanager
def fast_compile(enabled: bool = True):
    """`jax_disable_most_optimizations` for smoke runs: compiles about twice as fast, runs slower."""
    if not enabled:
        yield
        return
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
