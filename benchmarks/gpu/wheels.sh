#!/usr/bin/env bash
# Fill .whl/ with what the GPU machine lacks for benchmarks/gpu/check.sh (device README: nothing can be fetched
# there; missing packages travel as wheels).  Run here, where PyPI answers, before the one device call:
#   bash benchmarks/gpu/wheels.sh && run(command="bash benchmarks/gpu/check.sh", carry=[".whl"], timeout_s=600)
# The device's Python is 3.12 (KINDS.md); the harness's pins (hydra-core, omegaconf, submitit, optuna, mlflow)
# are resolved for it with their dependencies, and whatever the device image already holds (its package list,
# as KINDS.md read it on 2026-11-17, below) is dropped, so the rest fits the 64 MiB that a call carries (~35 MB).
# antlr4-python3-runtime 4.9.3 (hydra-core's pin) is an sdist only: built here into a pure-Python wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> "$(git rev-parse --git-common-dir)/info/exclude"
rm -rf .whl && mkdir .whl
py=.venv/bin/python; [ -x "$py" ] || py=python3
"$py" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 2>&1 | grep -v "is ignored" || true
pins=$("$py" -m pip list --format=freeze 2>/dev/null | grep -iE "^(hydra-core|omegaconf|submitit|optuna|mlflow)==" || true)
[ -n "$pins" ] || pins="hydra-core==1.3.8 omegaconf==2.3.1 submitit==1.5.4 optuna==5.0.0 mlflow==3.17.2"
"$py" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any --find-links .whl -d .whl $pins 2>&1 | grep -v "is ignored" || true
ON_DEVICE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
"$py" - "$ON_DEVICE" <<'PY'
import os, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
have = {norm(p) for p in sys.argv[1].split()}
kept = 0
for f in sorted(os.listdir(".whl")):
    if norm(f.split("-")[0]) in have:
        os.remove(os.path.join(".whl", f))
    else:
        kept += os.path.getsize(os.path.join(".whl", f))
print(f".whl: {len(os.listdir('.whl'))} wheels, {kept / 2**20:.1f} MiB (the call carries at most 64 MiB with the tree)")
PY
