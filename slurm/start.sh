#!/usr/bin/env bash
# Start a single-node SLURM cluster with fake GPUs, for tests: munge, MariaDB (127.0.0.1, private port),
# slurmdbd, slurmctld, slurmd.  Everything lives in $HARNESS_SLURM_DIR (default /tmp/harness-slurm);
# stop it with slurm/stop.sh, which kills the daemons by their PID files.  Prints the SLURM_CONF to export.
# Settings are those FINDINGS "Real single-node SLURM" found to work and to be fast here.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
D="${HARNESS_SLURM_DIR:-/tmp/harness-slurm}"
DB_PORT="${HARNESS_SLURM_DB_PORT:-33061}"
DBD_PORT="${HARNESS_SLURM_DBD_PORT:-6919}"
CTL_PORT="${HARNESS_SLURM_CTL_PORT:-6917}"
D_PORT="${HARNESS_SLURM_D_PORT:-6918}"
CPUS="${HARNESS_SLURM_CPUS:-8}"       # advertised (config_overrides): several 1-CPU jobs at once on 2 cores
GPUS="${HARNESS_SLURM_GPUS:-2}"       # fake GPUs: character devices listed in gres.conf
CLUSTER=harness
HOST="$(hostname -s)"
bash "$HERE/install.sh"
PATH="/usr/sbin:$PATH"
mkdir -p "$D"/{state,spool,log,mysql,run}
chmod 755 "$D" "$D/run"
[ -f "$D/munge.key" ] || { dd if=/dev/urandom bs=1 count=1024 of="$D/munge.key" status=none; chmod 400 "$D/munge.key"; }
for i in $(seq 0 $((GPUS - 1))); do [ -e "$D/gpu$i" ] || mknod "$D/gpu$i" c 1 3; done

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() { for _ in $(seq 1 100); do if eval "$1" >/dev/null 2>&1; then return 0; fi; sleep 0.2; done; echo "timed out waiting for: $1" >&2; return 1; }

alive "$D/munged.pid" || munged --socket="$D/run/munge.socket" --key-file="$D/munge.key" --pid-file="$D/munged.pid" \
  --log-file="$D/log/munged.log" --seed-file="$D/munge.seed" --force
wait_for "[ -S $D/run/munge.socket ]"

if ! alive "$D/mysqld.pid"; then
  [ -d "$D/mysql/mysql" ] || mariadb-install-db --user=root --datadir="$D/mysql" --skip-test-db >"$D/log/mysql-install.log" 2>&1
  (mariadbd --user=root --datadir="$D/mysql" --socket="$D/run/mysql.sock" --port="$DB_PORT" --bind-address=127.0.0.1 \
     --pid-file="$D/mysqld.pid" --skip-grant-tables --log-error="$D/log/mysqld.log" >/dev/null 2>&1 &)
fi
wait_for "[ -S $D/run/mysql.sock ]"

cat > "$D/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$D/run/munge.socket
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$D/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StoragePass=unused
StorageLoc=slurm_acct_db
CONF
chmod 600 "$D/slurmdbd.conf"
cat > "$D/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmctldPort=$CTL_PORT
SlurmdPort=$D_PORT
AuthType=auth/munge
AuthInfo=socket=$D/run/munge.socket,cred_expire=10
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$D/run/munge.socket   # the munge socket for talking to slurmdbd (default: /run/munge)
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
GresTypes=gpu
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$HOST CPUs=$CPUS RealMemory=16000 Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
{ for i in $(seq 0 $((GPUS - 1))); do echo "NodeName=$HOST Name=gpu File=$D/gpu$i"; done; } > "$D/gres.conf"
export SLURM_CONF="$D/slurm.conf"

alive "$D/slurmdbd.pid" || slurmdbd   # reads slurmdbd.conf beside $SLURM_CONF
wait_for "sacctmgr -n show cluster"
sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
alive "$D/slurmctld.pid" || slurmctld -f "$D/slurm.conf"
wait_for "scontrol ping | grep -q UP"
alive "$D/slurmd.pid" || slurmd -f "$D/slurm.conf"
wait_for "sinfo -h -o %T | grep -Eq '^(idle|mixed|allocated)'"
echo "SLURM_CONF=$D/slurm.conf"
