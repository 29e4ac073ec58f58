#!/usr/bin/env bash
# zfprobe's GPU checks in one run: the tests marked `gpu` and the GPU benchmarks (torch backend
# vs Captum on the same device). For a machine with a CUDA build of torch but no network:
# wheels of packages it lacks and the test assets travel in a folder (default .gpucarry/):
#   .gpucarry/whl/*.whl     e.g. captum, onnx2torch (pip download --no-deps ...)
#   .gpucarry/assets/       the asset cache's records and wheels (tests/assets.py layout)
# Usage: scripts/gpu_check.sh [OUT_DIR]     (the log is written to OUT_DIR/gpu_log.txt)
set -uo pipefail
out="${1:-${OUT:-/tmp/zfprobe-gpu}}"
carry="${ZFPROBE_GPU_CARRY:-.gpucarry}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  if compgen -G "$carry/whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$carry"/whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 3
  [ -d "$carry/assets" ] && export ZFPROBE_ASSET_CACHE="$PWD/$carry/assets"
  python3 -c "import sys, torch, onnxruntime as ort, numpy, zfprobe; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA', 'onnxruntime', ort.__version__, ort.get_available_providers(), 'numpy', numpy.__version__)"
  echo "== tests (-m gpu)"
  timeout 360 python3 -m pytest -q -m gpu -p no:cacheprovider -rs --durations=5 tests/adapters/test_gpu_torch.py tests/adapters/test_gpu.py \
    tests/engine/test_exactness.py
  echo "== benchmark: 64 conv5 projections, torch backend vs Captum, cuda"
  timeout 120 python3 benchmarks/torch_backend.py --device cuda --repeats 5 --captum-repeats 2
  echo "== benchmark: occlusion probability map, torch backend vs Captum, cuda"
  timeout 150 python3 benchmarks/occlude.py --device cuda --ppe 64,256 --threads 8
  date -u
} 2>&1 | tee "$out/gpu_log.txt"
