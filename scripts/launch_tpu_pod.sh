#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice: install the code on all workers, then start the same
# training command on all of them (one JAX process per host; LAX_DISTRIBUTED=1 makes each call
# jax.distributed.initialize(), which finds the pod through the TPU metadata server).
#
#   scripts/launch_tpu_pod.sh --tpu=my-v4-32 --zone=us-central2-b --workdir=gs://my-bucket/runs/llama-1b \
#       [--project=P] [--repo=https://github.com/org/lax-pretrain.git --ref=main | (default) copy this tree] \
#       [--bucket=my-bucket --mount=/mnt/lax] [--remote_dir=lax-pretrain] [--slices=N] [--dry_run] \
#       -- --config=configs/llama.py:1b,kind=cola,lax=kron --config.mesh.fsdp=-1 --config.mesh.data=1
#
# Resume-safe: --workdir must be storage every worker shares: a gs:// URL (orbax writes each host's shards to
# the bucket itself; metrics and configs go there too), a gcsfuse mount of --bucket at --mount, or a
# Filestore/NFS path. Re-running the same command re-installs idempotently (git fetch + checkout, `make
# install` is stamped) and the run resumes from the newest checkpoint.
# --slices=N: a multi-slice TPU (slices joined by the data-centre network, DCN), made as a queued resource with
# --node-count=N --node-prefix=NAME: --tpu=NAME, nodes NAME-0 .. NAME-(N-1). Every step runs on every node's
# workers, the run on all nodes at once; Cloud TPU gives each worker its MEGASCALE_* slice variables, which
# jax.distributed reads. The train arguments must give the slices a mesh axis: --config.mesh.dcn_data=N (data
# parallel across slices) or --config.mesh.dcn_fsdp=N; `lax-plan --target=... --slices=N` compiles it first.
# --dry_run prints the commands, one per line, exactly as they would run, and runs nothing.
set -euo pipefail

TPU="" ZONE="" PROJECT="" WORKDIR="" REPO="" REF="main" BUCKET="" MOUNT="" REMOTE_DIR="lax-pretrain" SLICES=1 DRY_RUN=0
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --bucket=*) BUCKET="${1#*=}" ;;
    --mount=*) MOUNT="${1#*=}" ;;
    --remote_dir=*) REMOTE_DIR="${1#*=}" ;;
    --slices=*) SLICES="${1#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "launch_tpu_pod.sh: unknown option $1 (train arguments go after --)" >&2; usage 2 >&2 ;;
  esac
  shift
done
TRAIN_ARGS=("$@")

die() { echo "launch_tpu_pod.sh: $*" >&2; exit 2; }
[[ -n "$TPU" ]] || die "--tpu=NAME is required"
[[ -n "$ZONE" ]] || die "--zone=ZONE is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required (shared storage: the run resumes from it)"
[[ "$WORKDIR" != *://* || "$WORKDIR" == gs://* ]] || die "--workdir=$WORKDIR: give a gs:// URL, or a path on storage every worker shares"
[[ -z "$BUCKET" || -n "$MOUNT" ]] || die "--bucket needs --mount=/mnt/PATH (where gcsfuse mounts it on every worker)"
for arg in "${TRAIN_ARGS[@]}"; do
  [[ "$arg" != --workdir=* && "$arg" != --workdir ]] || die "give the workdir as a launcher option (--workdir=...), not after --"
done
[[ ${#TRAIN_ARGS[@]} -gt 0 ]] || die "no train arguments after -- (at least --config=...)"
[[ "$SLICES" =~ ^[1-9][0-9]*$ ]] || die "--slices=$SLICES must be a positive integer"
if [[ $SLICES -gt 1 && "${TRAIN_ARGS[*]}" != *--config.mesh.dcn_* ]]; then
  die "--slices=$SLICES: give the slices a mesh axis after -- (--config.mesh.dcn_data=$SLICES, or --config.mesh.dcn_fsdp)"
fi
NODES=("$TPU")  # one TPU VM per slice
if [[ $SLICES -gt 1 ]]; then NODES=(); for ((s = 0; s < SLICES; s++)); do NODES+=("$TPU-$s"); done; fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")

# Shell-quotes each argument readably: bare when safe, else in single quotes (--flag='value' for flags).
quote1() {
  local a="$1" sq="'\\''"
  if [[ "$a" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$a"
  elif [[ "$a" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/$sq}"
  else printf "'%s'" "${a//\'/$sq}"; fi
}
quote() { local out="" a; for a in "$@"; do out+="$(quote1 "$a") "; done; printf '%s' "${out% }"; }
run() {  # prints the command (dry run) or runs it
  if [[ $DRY_RUN -eq 1 ]]; then quote "$@"; echo; else "$@"; fi
}
on_all_workers() {  # $1 on every worker of every node, one node after the other
  local node
  for node in "${NODES[@]}"; do run "${GCLOUD[@]}" ssh "$node" "${WHERE[@]}" --worker=all --command="$1"; done
}

# 1. Code on every worker, installed (idempotent: re-running updates and re-installs only what changed).
JAX_PIN='$(sed -n "s/^jax==//p" requirements.txt)'
INSTALL="make install && .venv/bin/pip install --quiet \"jax[tpu]==$JAX_PIN\""
if [[ -n "$REPO" ]]; then
  D="$(quote "$REMOTE_DIR")"
  # A branch is checked out at its fetched head (origin/REF), a tag or commit as is.
  on_all_workers "set -e; if [ -d $D/.git ]; then git -C $D fetch --quiet --tags origin; else git clone --quiet $(quote "$REPO") $D; fi; cd $D; git checkout --quiet --detach $(quote "origin/$REF") 2>/dev/null || git checkout --quiet --detach $(quote "$REF"); $INSTALL"
else
  TARBALL="/tmp/lax-pretrain-src.tar.gz"
  run tar -czf "$TARBALL" -C "$REPO_ROOT" --exclude=.venv --exclude=.git --exclude=runs --exclude=__pycache__ .
  for node in "${NODES[@]}"; do run "${GCLOUD[@]}" scp "$TARBALL" "$node:lax-pretrain-src.tar.gz" "${WHERE[@]}" --worker=all; done
  on_all_workers "set -e; mkdir -p $(quote "$REMOTE_DIR") && tar -xzf lax-pretrain-src.tar.gz -C $(quote "$REMOTE_DIR") && cd $(quote "$REMOTE_DIR") && $INSTALL"
fi

# 2. Shared storage for the workdir on every worker.
if [[ -n "$BUCKET" ]]; then
  on_all_workers "set -e; sudo mkdir -p $(quote "$MOUNT") && sudo chown \$USER $(quote "$MOUNT"); mountpoint -q $(quote "$MOUNT") || gcsfuse --implicit-dirs $(quote "${BUCKET#gs://}") $(quote "$MOUNT")"
fi

# 3. The run, on all workers at once; the same command resumes from --workdir. The slices start together (each
# waits for the others in jax.distributed), so every node's ssh runs in the background; the launcher waits for all.
TRAIN="cd $(quote "$REMOTE_DIR") && LAX_DISTRIBUTED=1 .venv/bin/python -m lax_pretrain.train --workdir=$(quote "$WORKDIR") $(quote "${TRAIN_ARGS[@]}")"
if [[ ${#NODES[@]} -eq 1 || $DRY_RUN -eq 1 ]]; then on_all_workers "$TRAIN"; else
  PIDS=()
  for node in "${NODES[@]}"; do "${GCLOUD[@]}" ssh "$node" "${WHERE[@]}" --worker=all --command="$TRAIN" & PIDS+=($!); done
  STATUS=0
  for pid in "${PIDS[@]}"; do wait "$pid" || STATUS=$?; done
  exit "$STATUS"
fi
