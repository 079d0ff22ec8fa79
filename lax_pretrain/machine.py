"""What ran a result: the machine record written next to every benchmark and experiment report
(`machine_info`), the load average, and the one line a report shows of both (`machine_line`).

Below every package (level 0), so that the benchmarks and the experiments both read it without importing
each other.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import jax


def machine_info() -> dict[str, Any]:
    """Backend, device kind and count, CPUs, load, library versions, the time."""
    import flax
    import jaxlib

    dev = jax.devices()[0]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    return {
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _cpu_model(),
        "loadavg": loadavg(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "platform_string": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load average (None where the OS has none): a shared machine's load is part of a
    timing's context."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_line(machine: dict[str, Any], load: dict[str, Any], command: str) -> str:
    """What ran it: device, CPUs, jax, the load average (1/5/15 min) before and after, the time, the
    command."""
    m = machine

    def loads(v: Sequence[float] | None) -> str:
        return "/".join(f"{x:.1f}" for x in v) if v else "n/a"

    return (
        f"Machine: {m.get('device_kind')} ({m.get('backend')}, {m.get('device_count')} device(s)), "
        f"{m.get('cpu_count')} CPUs ({m.get('cpu_model', '')}), jax {m.get('jax')}; load average "
        f"(1/5/15 min) before {loads(load.get('before'))}, after {loads(load.get('after'))}; "
        f"{m.get('time_utc', '')}. Command: `{command}`"
    )
