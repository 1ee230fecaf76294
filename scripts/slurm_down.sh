#!/usr/bin/env bash
# Stop the one-node SLURM started by scripts/slurm_up.sh: cancel its jobs, then stop slurmd, slurmctld and munged
# (if slurm_up started it), each by the PID in its pid file, waiting until each has exited. Safe to run when
# nothing is running. Same $STEGO_SLURM_DIR as slurm_up.sh (default /tmp/stego-slurm).
set -euo pipefail
dir=${STEGO_SLURM_DIR:-/tmp/stego-slurm}

stop() {  # stop NAME PIDFILE
  local pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "slurm_down: $1 (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# Jobs' step daemons outlive slurmd: cancel this cluster's jobs first and give them a moment to end.
if [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
  export SLURM_CONF=$dir/slurm.conf
  scancel --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 40); do [ -z "$(squeue -h -t running,completing 2>/dev/null)" ] && break; sleep 0.5; done
fi
stop slurmd "$dir/slurmd.pid"
stop slurmctld "$dir/slurmctld.pid"
if [ -s "$dir/munged.pidfile" ]; then
  stop munged "$(cat "$dir/munged.pidfile")"
  rm -f "$dir/munged.pidfile"
fi
