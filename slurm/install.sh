#!/usr/bin/env bash
# Install the Debian packages of a single-node SLURM test cluster (FINDINGS "Real single-node SLURM"):
# slurm-wlm (slurmctld, slurmd, clients), slurmdbd + MariaDB (accounting: without it sacct fails and
# submitit's job states stay UNKNOWN), munge (authentication).  Idempotent; needs root (or sudo).
set -euo pipefail
need=()
for cmd in slurmctld slurmd slurmdbd sbatch munged mariadbd mariadb-install-db; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$cmd")
done
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else echo "cannot install SLURM: not root and no passwordless sudo" >&2; exit 3; fi
fi
command -v apt-get >/dev/null || { echo "cannot install SLURM: no apt-get on this machine" >&2; exit 3; }
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends slurm-wlm slurmdbd munge mariadb-server-core mariadb-client-core >/dev/null
