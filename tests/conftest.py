"""Shared pytest set-up. Runs before any test module imports jax.

The XLA flag must be in the environment before jax is first imported: it gives the host platform 8 (fake)
CPU devices, so sharding tests can build a mesh on a laptop. Tests compute in float32 (x64 stays off) with
the default matmul precision; each test states its own tolerance.

The suite starts from nothing, as on a fresh machine: one temporary root per session holds the TFDS data dir
(`TFDS_DATA_DIR`, where each embedded dataset is built once, under a file lock, by whichever test needs it
first) and a HOME of its own (matplotlib's and W&B's caches and settings). It is made by the first process
that loads this file and inherited through the environment by pytest-xdist workers and by every command-line
subprocess a test starts; the process that made it removes it at the end. The user's ~/tensorflow_datasets,
caches and credentials are never read or written.
"""

import os
import shutil
import tempfile

SESSION_ROOT_VAR = "LAX_PRETRAIN_TEST_ROOT"
_made_here = SESSION_ROOT_VAR not in os.environ
if _made_here:
    _root = tempfile.mkdtemp(prefix="lax-pretrain-tests-")
    os.environ[SESSION_ROOT_VAR] = _root
    for _sub in ("tfds", "home"):
        os.makedirs(os.path.join(_root, _sub))
_root = os.environ[SESSION_ROOT_VAR]
os.environ["TFDS_DATA_DIR"] = os.path.join(_root, "tfds")
os.environ["HOME"] = os.path.join(_root, "home")
for _var in (
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "MPLCONFIGDIR",
    "WANDB_DIR",
    "WANDB_CONFIG_DIR",
    "WANDB_API_KEY",
):
    os.environ.pop(_var, None)  # paths outside the session's HOME; a key tests must never see

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Implicit rank promotion ((B, L, D) + (D,)) is an error in every test and in the subprocesses tests start.
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", False)  # float32 everywhere: no silent float64 promotion in tests


def pytest_sessionfinish(session, exitstatus):
    if _made_here and not hasattr(session.config, "workerinput"):  # the controller, not an xdist worker
        shutil.rmtree(_root, ignore_errors=True)


@pytest.fixture(scope="session")
def tfds_dir() -> str:
    """The session's TFDS data dir (what `data.data_dir=''` resolves to in-process and in subprocesses)."""
    return os.environ["TFDS_DATA_DIR"]
