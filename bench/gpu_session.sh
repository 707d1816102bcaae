#!/usr/bin/env bash
# The checks that need a CUDA device (issue 9), as one script for a short GPU lease:
#   1. the gpu-marked tests (CPU vs CUDA builds agree, --read-to-device, GPU memory budget);
#   2. bench/build_bench.py with --also-device cuda (cold build on CPU vs CUDA, same run);
#   3. bench/methods_bench.py --compare-device cuda (every method, CPU vs CUDA, same run).
# Logs and JSON go to $OUT (default bench/work/gpu). On a machine whose Python has torch but not
# mergebuild's small pure dependencies, put their wheels in .whl/ first (docs/scale.md):
# they are installed into /tmp/site and the checkout is used through PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/work/gpu}"
PY="${PY:-python3}"
mkdir -p "$OUT"
rm -f bench/last_run.json bench/work/methods_devices_last_run.json  # no stale figures
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    nproc
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
timeout "${TESTS_S:-240}" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
    tests/run/test_gpu_build.py tests/methods/test_gpu.py 2>&1 | tee "$OUT/pytest_gpu.log"
timeout "${BUILD_S:-200}" "$PY" bench/build_bench.py --also-device cuda 2>&1 | tee "$OUT/build_bench.log"
cp bench/last_run.json "$OUT/build_bench.json" 2>/dev/null
timeout "${METHODS_S:-150}" "$PY" bench/methods_bench.py --compare-device cuda --hidden 1024 2>&1 | tee "$OUT/methods_devices.log"
cp bench/work/methods_devices_last_run.json "$OUT/methods_devices.json" 2>/dev/null
exit 0
