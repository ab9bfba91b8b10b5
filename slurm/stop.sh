#!/usr/bin/env bash
# Stop the test cluster started by slurm/start.sh: each daemon by its own PID file (never by name).
set -uo pipefail
D="${HARNESS_SLURM_DIR:-/tmp/harness-slurm}"
# Cancel this cluster's jobs first and let slurmd reap them: a job step outlives a stopped slurmd.
if [ -f "$D/slurmctld.pid" ] && kill -0 "$(cat "$D/slurmctld.pid")" 2>/dev/null; then
  export SLURM_CONF="$D/slurm.conf"
  scancel --quiet --full --user="$(id -un)" 2>/dev/null
  for _ in $(seq 1 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
fi
for name in slurmd slurmctld slurmdbd mysqld munged; do
  pidfile="$D/$name.pid"
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
done
