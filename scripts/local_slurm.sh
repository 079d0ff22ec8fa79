#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to run scripts/launch_slurm.sh for real (tests/test_slurm.py).
#
#   scripts/local_slurm.sh install   apt-get install Debian's slurm-wlm and munge (root; no-op when installed)
#   scripts/local_slurm.sh start     configure and start munged, slurmctld and slurmd; wait for an idle node
#   scripts/local_slurm.sh stop      cancel every job, stop the daemons, remove everything `start` created
#   scripts/local_slurm.sh status    sinfo and squeue
#
# No systemd (this may be a container): the daemons are started directly, as root, and everything they use
# (config, munge key and socket, state, logs, pid files) lives in one private directory, LOCAL_SLURM_DIR
# (default /run/lax-local-slurm). /etc/slurm/slurm.conf, where sbatch/srun/sinfo look, is made a link to the
# private config (a machine that already has a SLURM config is refused) and removed again by `stop`.
# The node is this machine (`hostname -s`) with max(2, nproc) CPUs, so two one-CPU tasks fit, and a generic
# resource gpu:2 with stand-in devices (no GPUs), so the launcher's `#SBATCH --gpus-per-node=2` is accepted
# unchanged while the processes compute on the CPU (JAX_PLATFORMS=cpu). No cgroups (they need systemd here):
# processes are tracked through /proc, tasks are not bound, nothing is accounted.
set -euo pipefail

DIR="${LOCAL_SLURM_DIR:-/run/lax-local-slurm}"
CONF="$DIR/etc/slurm.conf"
SYSTEM_CONF=/etc/slurm/slurm.conf # where SLURM's commands look when SLURM_CONF is not set
MUNGE_SOCKET="$DIR/munge/munge.socket"
NODE="$(hostname -s)"
export SLURM_CONF="$CONF" # this script's own sinfo/squeue/scancel talk to this cluster, whatever the link

die() {
  echo "local_slurm.sh: $*" >&2
  exit 1
}
need_root() { [[ $EUID -eq 0 ]] || die "$1 needs root (the daemons run as root; apt-get installs)"; }
installed() {
  local c
  for c in slurmctld slurmd munged sbatch; do command -v "$c" >/dev/null || return 1; done
}

# The pid in a daemon's pid file, if that process is alive.
alive_pid() {
  local pid
  [[ -f "$1" ]] || return 1
  pid="$(cat "$1")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}
PIDFILES=("$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/munge/munged.pid") # stop order
all_running() {
  local f
  for f in "${PIDFILES[@]}"; do alive_pid "$f" >/dev/null || return 1; done
}
any_running() {
  local f
  for f in "${PIDFILES[@]}"; do alive_pid "$f" >/dev/null && return 0; done
  return 1
}
node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }

cmd_install() {
  if installed; then
    echo "local_slurm.sh: slurm-wlm and munge are installed"
    return
  fi
  need_root install
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # The packages' service scripts do not start anything without systemd: `start` starts the daemons.
  apt-get install -y -q --no-install-recommends slurm-wlm munge
  installed || die "apt-get finished but slurmctld/slurmd/munged/sbatch are still missing"
}

write_config() {
  local cpus
  cpus="$(nproc)"
  ((cpus >= 2)) || cpus=2 # two task slots even on one core (config_overrides below accepts the mismatch)
  mkdir -p "$DIR"/{etc,dev,munge,run,log,state,spool}
  chmod 711 "$DIR/munge" # the socket is for every local user; the key stays root's
  cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh start: a one-node cluster on localhost, removed by local_slurm.sh stop.
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire (default 120 s) is also how long a requeued job waits before it may start again.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups, no accounting: what works without systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
# FIFO scheduling, on submission and every second (a requeued job becomes eligible by the clock alone);
# a quick kill after a job's SIGTERM.
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
KillWait=5
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$NODE CPUs=$cpus Gres=gpu:2 State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  # gpu:2 with nothing behind it. SLURM 22.05 drops a gpu line without File= ("Removing file-less GPU"), so
  # each stand-in is a character device equal to /dev/null (or, where mknod is not allowed, a plain file:
  # slurmd then logs "not a valid character or block device" and counts it all the same). Nothing opens
  # them: no cgroup device limits (task/none); SLURM only counts and numbers them (CUDA_VISIBLE_DEVICES=0,1).
  # slurmd reads gres.conf next to slurm.conf.
  local i
  for i in 0 1; do
    mknod -m 666 "$DIR/dev/gpu$i" c 1 3 2>/dev/null || touch "$DIR/dev/gpu$i"
  done
  echo "Name=gpu File=$DIR/dev/gpu[0-1]" >"$DIR/etc/gres.conf"
  # A private munge key: the daemons and this machine's clients share it through the private socket only.
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
}

cmd_start() {
  installed || die "SLURM is not installed: run scripts/local_slurm.sh install (as root)"
  if all_running; then
    case "$(node_state)" in
      idle | mixed | allocated | completing)
        echo "local_slurm.sh: already running (node $NODE $(node_state))"
        return
        ;;
    esac
  fi
  need_root start
  if any_running; then
    echo "local_slurm.sh: partly running: restarting" >&2
    cmd_stop
  fi
  if [[ -e "$SYSTEM_CONF" || -L "$SYSTEM_CONF" ]] && [[ "$(readlink "$SYSTEM_CONF" || true)" != "$CONF" ]]
  then
    die "$SYSTEM_CONF exists: this machine has a SLURM configuration of its own; not touching it"
  fi
  rm -rf "$DIR"
  write_config
  mkdir -p "$(dirname "$SYSTEM_CONF")"
  ln -sfn "$CONF" "$SYSTEM_CONF"

  # Each daemon forks into the background and writes its pid file; its log says why when it does not.
  munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" --force ||
    die "munged did not start: $(tail -n5 "$DIR/log/munged.log" 2>/dev/null)"
  slurmctld -f "$CONF" || die "slurmctld did not start: $(tail -n5 "$DIR/log/slurmctld.log" 2>/dev/null)"
  slurmd -f "$CONF" || die "slurmd did not start: $(tail -n5 "$DIR/log/slurmd.log" 2>/dev/null)"

  # Ready when the controller answers and the node has registered as idle.
  local state="" i
  for ((i = 0; i < 120; i++)); do
    state="$(node_state)"
    case "$state" in
      idle | inval* | drain* | fail*) break ;; # idle, or refused (sinfo -R says why)
    esac
    all_running || break
    sleep 0.5
  done
  if [[ "$state" != idle ]]; then
    echo "local_slurm.sh: node $NODE is '${state:-not reported}', not idle; logs in $DIR/log:" >&2
    sinfo -R 2>&1 | sed 's/^/  /' >&2 || true
    tail -n 15 "$DIR"/log/*.log 2>&1 | sed 's/^/  /' >&2 || true
    cmd_stop >&2
    die "start failed"
  fi
  echo "local_slurm.sh: running: node $NODE idle (config $CONF, logs in $DIR/log)"
}

# Stops one daemon by its pid file: TERM, then KILL after 15 s.
stop_daemon() {
  local pid i
  pid="$(alive_pid "$1")" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "local_slurm.sh: $(basename "$1" .pid) (pid $pid) ignored SIGTERM: killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_stop() {
  need_root stop
  if all_running; then
    # Jobs first, so that no job step (slurmstepd and the job's processes) outlives the daemons.
    local jobs i
    jobs="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
    if [[ -n "${jobs// /}" ]]; then
      # shellcheck disable=SC2086 # one job id a word
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 300; i++)); do
        [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
        sleep 0.1
      done
      [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] || echo "local_slurm.sh: jobs still listed after 30 s:" \
        "$(squeue -h -o '%i %T' | tr '\n' ' ')" >&2
    fi
  fi
  local f
  for f in "${PIDFILES[@]}"; do stop_daemon "$f"; done
  if pgrep -x slurmstepd >/dev/null; then
    echo "local_slurm.sh: slurmstepd still running (pids $(pgrep -x slurmstepd | tr '\n' ' '))" >&2
  fi
  if [[ -L "$SYSTEM_CONF" && "$(readlink "$SYSTEM_CONF")" == "$CONF" ]]; then
    rm -f "$SYSTEM_CONF"
  fi
  rm -rf "$DIR"
  echo "local_slurm.sh: stopped"
}

cmd_status() {
  all_running || {
    echo "local_slurm.sh: not running"
    return 1
  }
  sinfo
  squeue
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
