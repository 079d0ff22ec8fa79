"""Where the target compilers live and how a process that uses them starts.

The TPU compiler (libtpu) and the GPU compiler (jax's CUDA plugin, with ptxas from nvidia-cuda-nvcc-cu12) are
installed by `make install-plan` into a venv of their own, `.venv-plan`, that sees the main venv's packages
through a .pth file: installed beside jax in the main venv they would change how jax starts for everything else
(it would look for TPUs and GPUs at every start). `lax-plan --target` runs its compile in a subprocess of that
venv's python with `plan_environment()`.

    python = plan_python()                      # None when `make install-plan` has not run
    missing_compiler(target)                    # None, or the one-line error naming the install step
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lax_pretrain.targets.catalog import Target

INSTALL_STEP = "make install-plan"
PLAN_VENV = ".venv-plan"
PLAN_PYTHON_VAR = "LAX_PLAN_PYTHON"  # overrides where the plan venv's python is
CHILD_VAR = "LAX_PLAN_TARGET_PROCESS"  # set in the subprocess: compile here, do not start another

# The module each compiler brings, as this interpreter would import it.
COMPILER_MODULES = {"tpu": "libtpu", "gpu": "jax_plugins.xla_cuda12"}


def repo_root() -> Path:
    """The checkout this package is installed from (editable install): where .venv-plan is made."""
    return Path(__file__).resolve().parents[2]


def plan_python() -> Path | None:
    """The plan venv's python ($LAX_PLAN_PYTHON, else <repo>/.venv-plan/bin/python), None if absent."""
    python = Path(os.environ.get(PLAN_PYTHON_VAR) or repo_root() / PLAN_VENV / "bin" / "python")
    return python if python.exists() else None


def plan_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a target compile runs in: JAX on CPU only (no chip to initialise: the target's devices
    come from a topology description), no TPU metadata server to ask, no TPU lock, no fake CPU device count."""
    env = dict(os.environ if base is None else base)
    env.update(
        JAX_PLATFORMS="cpu",
        TPU_SKIP_MDS_QUERY="1",
        # libtpu takes /tmp/libtpu_lockfile so that one process owns a host's TPUs; compiling for a topology
        # owns none, and plans (tests, the table script) may run side by side.
        ALLOW_MULTIPLE_LIBTPU_LOAD="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        **{CHILD_VAR: "1"},
    )
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def compiler_present(platform: str) -> bool:
    """Whether this interpreter can import `platform`'s compiler."""
    module = COMPILER_MODULES[platform]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (jax_plugins) is absent
        return False


def missing_compiler(target: Target, python: Path | None) -> str | None:
    """The one-line error when `target`'s compiler cannot run (no plan venv); None when it can."""
    if python is None:
        return (
            f"--target={target.name} needs {target.compiler}, which is not installed: run `{INSTALL_STEP}` "
            f"(it makes {PLAN_VENV}; or point ${PLAN_PYTHON_VAR} at a python that has it)"
        )
    return None


def compiler_missing_here(target: Target) -> str | None:
    """Inside the plan process: the one-line error when this interpreter lacks `target`'s compiler."""
    if compiler_present(target.platform):
        return None
    return f"--target={target.name} needs {target.compiler}, which this python does not have: run `{INSTALL_STEP}`"


def run_in_plan_venv(python: Path, argv: list[str]) -> tuple[int, str, str]:
    """Runs `python -m lax_pretrain.plan ARGV` (the target compile) with `plan_environment()`; returns (exit
    status, stdout, the stderr worth showing). The compilers log start-up warnings on stderr that say nothing
    about the plan (no TPU metadata, no CUDA driver): shown only when the process failed."""
    import subprocess

    proc = subprocess.run(
        [str(python), "-m", "lax_pretrain.plan", *argv],
        env=plan_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    if proc.returncode in (0, 1) and proc.stdout.strip():
        shown = ""  # a plan (1: it does not fit)
    elif errors:
        shown = "\n".join(errors[-1:])  # a bad input: its one line
    else:
        shown = "\n".join(proc.stderr.splitlines()[-40:])  # a crash: the end of its traceback
    return proc.returncode, proc.stdout, shown
