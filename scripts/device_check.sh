#!/usr/bin/env bash
# One command for the first session with a GPU: install, then measure the paper presets in bf16 on one device
# (lax_pretrain/bench/device.py: dense, cola, cola+LaX at 1b, 60m, 350m; the largest batch that fits; step
# time, tokens/s, TFLOP/s, MFU, planner vs measured peak memory; jax.devices(); cuDNN vs XLA attention) and
# write OUT/bench.json + OUT/bench.md, all inside 8 minutes on one H100/H200. Then the measured peaks beside
# the target-compiled plans of the same configs (scripts/plan_vs_measured.py: lax-plan --target=<gpu>x1, the
# GPU compiler run deviceless as on a CPU host; measured / plan = the plan's error): OUT/plan_vs_measured.md.
#
#   scripts/device_check.sh [--out=DIR] [--budget_s=S]   install + measure (default out docs/benchmarks/device)
#   scripts/device_check.sh --dry_run [--out=DIR]        no install: the same code on CPU at tiny sizes (CI)
#   scripts/device_check.sh --fetch_wheels               on a machine with PyPI: the wheels a GPU machine
#                                                        without network needs, into .whl/ (carry that folder)
#
# Install, by what the machine has (the first that applies):
#   .whl/ holds wheels     pip --no-index --no-deps --target $SITE from .whl/ (an image with CUDA jax, offline)
#   python3 has GPU jax    pip --no-deps --target $SITE of DEVICE_PACKAGES from PyPI (keeps the image's jax)
#   otherwise              make install, then jax[cuda12] at requirements.txt's jax version into .venv
# Every other flag goes to `scripts/bench.py --suite=device` (e.g. --presets=1b --repeats=3).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
TOTAL_S=480   # the whole check, install included
SITE=${SITE:-/tmp/lax-site}
JAX_VERSION=$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' requirements.txt)
# What our package imports that a CUDA image with jax, flax's dependencies and numpy may lack: pinned as in
# requirements.txt (flax, optax, orbax too, so the model code runs against the versions it is tested with).
DEVICE_PACKAGES="ml-collections==1.1.0 flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 grain==0.2.18
  array-record==0.8.6 tensorflow-datasets==4.9.10 importlib_resources==7.1.0 tensorflow-metadata==1.21.0
  immutabledict==4.3.1 promise==2.3 toml==0.10.2 portpicker==1.6.0"

DRY=0 FETCH=0 OUT=docs/benchmarks/device BUDGET="" PASS=()
for arg in "$@"; do
  case "$arg" in
    --dry_run) DRY=1 ;;
    --fetch_wheels) FETCH=1 ;;
    --out=*) OUT=${arg#--out=} ;;
    --budget_s=*) BUDGET=${arg#--budget_s=} ;;
    *) PASS+=("$arg") ;;
  esac
done

if [[ $FETCH == 1 ]]; then
  mkdir -p .whl
  PLATFORMS=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    PLATFORMS+=(--platform "$p")
  done
  for pkg in $DEVICE_PACKAGES; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl "$pkg" \
      || python3 -m pip wheel --quiet --no-deps -w .whl "$pkg"  # a pure-Python sdist (promise): build it
  done
  [[ -d .git ]] && { grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude; }
  du -sh .whl
  echo "wheels in .whl/: carry that folder to the GPU machine and run scripts/device_check.sh there"
  exit 0
fi

if [[ $DRY == 1 ]]; then
  PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
  env JAX_PLATFORMS=cpu "$PY" scripts/bench.py --suite=device --tiny --out="$OUT" ${PASS[@]+"${PASS[@]}"}
  # One row against its plan: the plan venv's GPU compiler when `make install-plan` has run (else the row
  # names that step).
  exec "$PY" scripts/plan_vs_measured.py --bench="$OUT/bench.json" --max_rows=1
fi

PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  echo "install: wheels from .whl/ into $SITE (offline), the image's jax"
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  echo "install: $PY has a GPU jax; our other packages from PyPI into $SITE"
  # shellcheck disable=SC2086  # the list splits into package specs
  "$PY" -m pip install --quiet --no-deps --target "$SITE" $DEVICE_PACKAGES
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "install: make install, then jax[cuda12]==$JAX_VERSION into .venv"
  make install PY="$PY"
  .venv/bin/pip install --quiet "jax[cuda12]==$JAX_VERSION"
  PY=.venv/bin/python
fi
"$PY" -c 'import jax, sys; print("jax", jax.__version__, jax.devices()); sys.exit(jax.default_backend() == "cpu")' \
  || { echo "error: jax sees no accelerator here (use --dry_run for the CPU smoke run)" >&2; exit 2; }

ELAPSED=$(( $(date +%s) - START ))
BUDGET=${BUDGET:-$(( TOTAL_S - ELAPSED - 120 ))}  # 30 s for writing and exiting, 90 s for the plans
echo "install took ${ELAPSED}s; measuring for at most ${BUDGET}s"
PYTHONUNBUFFERED=1 "$PY" scripts/bench.py --suite=device --out="$OUT" --budget_s="$BUDGET" ${PASS[@]+"${PASS[@]}"}
# The 1b rows (they run first) against their target-compiled plans, compiled here by this python's CUDA plugin
# without touching the GPU (the plan's subprocess runs with JAX_PLATFORMS=cpu).
LAX_PLAN_PYTHON=$(command -v "$PY") "$PY" scripts/plan_vs_measured.py --bench="$OUT/bench.json" --max_rows=3 \
  || echo "plan_vs_measured failed: the measurements in $OUT/bench.json stand"
echo "device check done in $(( $(date +%s) - START ))s: $OUT/bench.md, $OUT/plan_vs_measured.md"
