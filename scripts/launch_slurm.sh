#!/usr/bin/env bash
# Multi-node GPU training under SLURM: writes an sbatch script into WORKDIR/slurm/ and submits it.
#
#   scripts/launch_slurm.sh --nodes=4 --gpus_per_node=8 --workdir=/shared/runs/llama-1b \
#       [--per=gpu|node] [--partition=P] [--account=A] [--time=24:00:00] [--job_name=NAME] \
#       [--cpus_per_task=N] [--python=PATH] [--dry_run] \
#       -- --config=configs/llama.py:1b,kind=cola,lax=kron --config.mesh.fsdp=-1 --config.mesh.data=1
#
# `srun` starts one `python -m lax_pretrain.train` per GPU (--per=gpu, the default: each process sees the
# job's GPUs on its node, SLURM's CUDA_VISIBLE_DEVICES, and JAX's SLURM detection gives it the one at
# SLURM_LOCALID) or per node (--per=node: JAX_LOCAL_DEVICE_IDS hands it all of them). JAX's SLURM cluster
# detection supplies the coordinator, process count and ids to jax.distributed.initialize().
# Resume-safe: WORKDIR is on the shared filesystem. SLURM's SIGTERM to the tasks (120 s before the time limit,
# or `scancel --signal=TERM JOBID`) makes the run checkpoint and exit; the batch script then requeues the job,
# which resumes from the checkpoint (as does resubmitting the same command). Run for real on a one-node
# SLURM 22.05 by tests/test_slurm.py (scripts/local_slurm.sh).
# The repository (this checkout, by default) must be on a filesystem every node mounts, installed (make install).
# --dry_run prints the sbatch script and then the submit command (last line), and writes nothing.
set -euo pipefail

NODES="" GPUS="" WORKDIR="" PER="gpu" PARTITION="" ACCOUNT="" TIME="24:00:00" JOB_NAME="" CPUS="" PYTHON="" DRY_RUN=0
usage() { sed -n '2,/^set /p' "$0" | sed -n 's/^# \{0,1\}//p'; exit "${1:-0}"; } # the comment above
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes=*) NODES="${1#*=}" ;;
    --gpus_per_node=*) GPUS="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --per=*) PER="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --account=*) ACCOUNT="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --job_name=*) JOB_NAME="${1#*=}" ;;
    --cpus_per_task=*) CPUS="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "launch_slurm.sh: unknown option $1 (train arguments go after --)" >&2; usage 2 >&2 ;;
  esac
  shift
done
TRAIN_ARGS=("$@")

die() { echo "launch_slurm.sh: $*" >&2; exit 2; }
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes=N (a positive integer) is required"
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--gpus_per_node=G (a positive integer) is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required (on the shared filesystem: the run resumes from it)"
[[ "$PER" == gpu || "$PER" == node ]] || die "--per=$PER must be gpu or node"
[[ ${#TRAIN_ARGS[@]} -gt 0 ]] || die "no train arguments after -- (at least --config=...)"
for arg in "${TRAIN_ARGS[@]}"; do
  [[ "$arg" != --workdir=* && "$arg" != --workdir ]] || die "give the workdir as a launcher option (--workdir=...), not after --"
done

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ "$WORKDIR" = /* ]] || WORKDIR="$PWD/$WORKDIR"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
JOB_NAME="${JOB_NAME:-lax-$(basename "$WORKDIR")}"
if [[ "$PER" == gpu ]]; then TASKS_PER_NODE="$GPUS"; else TASKS_PER_NODE=1; fi
if [[ "$PER" == gpu ]]; then CPUS="${CPUS:-8}"; else CPUS="${CPUS:-$(( 8 * GPUS ))}"; fi
SCRIPT="$WORKDIR/slurm/$JOB_NAME.sbatch"

quote1() {
  local a="$1" sq="'\\''"
  if [[ "$a" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$a"
  elif [[ "$a" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/$sq}"
  else printf "'%s'" "${a//\'/$sq}"; fi
}
quote() { local out="" a; for a in "$@"; do out+="$(quote1 "$a") "; done; printf '%s' "${out% }"; }

sbatch_script() {
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$(quote1 "$JOB_NAME")"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$TASKS_PER_NODE"
  echo "#SBATCH --gpus-per-node=$GPUS"
  echo "#SBATCH --cpus-per-task=$CPUS"
  echo "#SBATCH --time=$TIME"
  [[ -n "$PARTITION" ]] && echo "#SBATCH --partition=$(quote1 "$PARTITION")"
  [[ -n "$ACCOUNT" ]] && echo "#SBATCH --account=$(quote1 "$ACCOUNT")"
  echo "#SBATCH --output=$(quote1 "$WORKDIR/slurm/%j.out")"
  echo "#SBATCH --open-mode=append"
  echo "#SBATCH --requeue"
  echo "#SBATCH --signal=TERM@120"
  cat <<'EOF'
# Preemption, as SLURM delivers it: `--signal=TERM@120` and `scancel --signal=TERM JOB` signal the training
# tasks, not this shell; the run agrees on a stop step, checkpoints and exits 0 ("preempted at step k").
# SLURM does not requeue a job that ends that way (--requeue only covers node failures and the like), so this
# script requeues it, and the next start resumes from the checkpoint. A TERM for this shell itself
# (`scancel --batch`, `--signal=B:TERM@..`) is forwarded to the tasks. (`scancel --full` also reaches srun,
# which turns its own SIGTERM into SIGKILL for the tasks: the run resumes from its last periodic checkpoint.)
set -euo pipefail
EOF
  echo "cd $(quote1 "$REPO_ROOT")"
  if [[ "$PER" == node ]]; then
    echo "export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $(( GPUS - 1 )))  # one process per node drives all its GPUs"
  fi
  echo "OUT=$(quote1 "$WORKDIR/slurm")/\$SLURM_JOB_ID.out"
  cat <<'EOF'
echo "launch_slurm: job $SLURM_JOB_ID, start $((${SLURM_RESTART_COUNT:-0} + 1)), on $SLURM_JOB_NODELIST"
START_BYTES=$(stat -c %s "$OUT" 2>/dev/null || echo 0) # this start's output begins here
TOLD=0
forward() {
  TOLD=1
  echo "launch_slurm: SIGTERM for the batch shell: forwarded to the tasks"
  scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || true # every step, not this shell
}
trap forward TERM
# srun in the background, so that the trap runs while it does; its own --cpus-per-task (SLURM >= 22.05 no
# longer passes sbatch's on to srun).
EOF
  local train
  train="$(quote "$PYTHON" -m lax_pretrain.train --workdir="$WORKDIR" "${TRAIN_ARGS[@]}")"
  echo "srun --kill-on-bad-exit=1 --cpus-per-task=$CPUS $train &"
  cat <<'EOF'
SRUN=$!
while kill -0 "$SRUN" 2>/dev/null; do wait "$SRUN" || true; done # a trapped signal interrupts wait
RC=0
wait "$SRUN" || RC=$?
said() { grep -aq "$1" < <(tail -c "+$((START_BYTES + 1))" "$OUT"); } # in this start's output
job_state() {
  [[ "$(scontrol show job --oneliner "$SLURM_JOB_ID")" =~ JobState=([A-Z_]+) ]] && echo "${BASH_REMATCH[1]}"
}
if said "preempted at step" || { [[ $TOLD == 1 ]] && ! said "done at step"; }; then
  # Still RUNNING: only signalled. Cancelled (scancel JOBID: SIGTERM, then SIGKILL), past its time limit or
  # preempted by SLURM, the job is COMPLETING and is not requeued here.
  STATE="$(job_state || true)"
  if [[ "$STATE" == RUNNING ]]; then
    echo "launch_slurm: the run stopped early (srun exit $RC): requeueing job $SLURM_JOB_ID to resume"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "launch_slurm: the run stopped early, the job is ${STATE:-unknown to scontrol}: not requeued"
fi
echo "launch_slurm: srun exit $RC"
exit "$RC"
EOF
}

if [[ $DRY_RUN -eq 1 ]]; then
  echo "# $SCRIPT"
  sbatch_script
  echo "sbatch $(quote1 "$SCRIPT")"
else
  mkdir -p "$WORKDIR/slurm"
  sbatch_script > "$SCRIPT"
  sbatch "$SCRIPT"
fi
