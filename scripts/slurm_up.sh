#!/usr/bin/env bash
# Start a one-node SLURM on localhost (munged, slurmctld, slurmd), for the real-SLURM sweep test and trying sweeps.
#
#   bash scripts/slurm_up.sh            # prints "export SLURM_CONF=…" on its last line
#   bash scripts/slurm_down.sh          # stops every daemon this script started, by its pid file
#
# Needs root (the daemons run as root and munge). Installs Debian's slurm-wlm and munge when missing (~10 s).
# Idempotent: a daemon whose pid file names a live process is left running. Everything it writes (config,
# state, spool, logs, pid files) lives in $STEGO_SLURM_DIR (default /tmp/stego-slurm); no system file is changed
# except munge's run directory. Accounting is off: sacct does not work, squeue -t all shows recent job states.
set -euo pipefail
dir=${STEGO_SLURM_DIR:-/tmp/stego-slurm}
conf=$dir/slurm.conf
munge_pid=/run/munge/munged.pid

fail() { echo "slurm_up: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || fail "must run as root (the SLURM and munge daemons are started as root)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and there is no apt-get to install them"
  echo "slurm_up: installing slurm-wlm and munge" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 \
    || fail "apt-get could not install slurm-wlm and munge"
fi

mkdir -p "$dir"/state "$dir"/spool
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat > "$conf.new" <<EOF
ClusterName=stego
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=${STEGO_SLURMCTLD_PORT:-6817}
SlurmdPort=${STEGO_SLURMD_PORT:-6818}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=3600
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
mv "$conf.new" "$conf"
export SLURM_CONF=$conf

if ! alive "$munge_pid"; then
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  [ -s /etc/munge/munge.key ] || { command -v mungekey >/dev/null && runuser -u munge -- mungekey --create; } \
    || fail "no /etc/munge/munge.key and no mungekey to create one"
  runuser -u munge -- munged --pid-file="$munge_pid" || fail "munged did not start (see /var/log/munge/munged.log)"
  echo "$munge_pid" > "$dir/munged.pidfile"
fi
alive "$dir/slurmctld.pid" || slurmctld -f "$conf" || fail "slurmctld did not start (see $dir/slurmctld.log)"
alive "$dir/slurmd.pid" || slurmd -f "$conf" || fail "slurmd did not start (see $dir/slurmd.log)"

for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  case $state in idle*|mixed*|allocated*) echo "export SLURM_CONF=$conf"; exit 0 ;; esac
  sleep 0.5
done
fail "the node did not become idle in 30 s (state '${state:-none}'); see $dir/slurmctld.log and $dir/slurmd.log"
