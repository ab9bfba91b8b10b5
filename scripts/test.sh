#!/usr/bin/env bash
# The test command of the README (and of CI): install what is missing, then run every test.
# Fails when pytest fails, when it collects nothing (exit 5), and when every test was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One line on what this machine has, first in the log: a CI failure from a full disk or a starved box reads here.
echo "test machine: $(nproc) cores, $(free -g | awk '/^Mem:/{print $7}') GiB memory available," \
     "$(df -h --output=avail . | tail -1 | tr -d ' ') free here, $(df -h --output=avail "${TMPDIR:-/tmp}" | tail -1 | tr -d ' ') free in ${TMPDIR:-/tmp}"
# Two pytest-xdist workers, one thread each: many tests wait on subprocesses (SLURM jobs, the MLflow UI,
# spawned ranks), so two workers overlap the waiting; tests sharing a SLURM cluster or picking TCP ports
# run on one worker (their xdist_group).  HARNESS_TEST_WORKERS=0 runs everything in this process.
workers="${HARNESS_TEST_WORKERS:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$([ "$workers" -gt 1 ] && echo 1 || echo 2)}"
report="$(mktemp -d)/junit.xml"
xdist=()
[ "$workers" -gt 0 ] && xdist=(-n "$workers" --dist loadgroup)
.venv/bin/python -m pytest "${xdist[@]}" --junitxml="$report" "$@"
.venv/bin/python - "$report" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
ran = sum(int(s.get("tests", 0)) - int(s.get("skipped", 0)) for s in suites)
if ran <= 0:
    sys.exit("no test ran: failing on purpose")
print(f"{ran} tests ran")
PY
