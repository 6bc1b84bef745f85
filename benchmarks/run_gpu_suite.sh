#!/usr/bin/env bash
# The GPU suite in one command: install the wheels in .whl/, then run benchmarks/gpu_suite.py into $OUT.
#
#   OUT=suite_out bash benchmarks/run_gpu_suite.sh                 (in the repository root, .whl/ prepared)
#   extra arguments go to the suite:  bash benchmarks/run_gpu_suite.sh --sections env,attention
#
# .whl/*.whl (lpips; optionally xformers) are installed into /tmp/site and put on PYTHONPATH. A CUDA-12 runtime
# wheel in .whl/cuda12/ (nvidia-cuda-runtime-cu12) is only unpacked, and its lib folder put on LD_LIBRARY_PATH:
# xformers 0.0.35's extension needs libcudart.so.12, and installing that wheel into /tmp/site would shadow the
# image's own `nvidia` namespace package. See benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_suite_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if compgen -G ".whl/cuda12/*.whl" > /dev/null; then
    for wheel in .whl/cuda12/*.whl; do python3 -m zipfile -e "$wheel" /tmp/cuda12 || exit 1; done
    export PIXELGEN_CUDA12_RUNTIME_DIR=/tmp/cuda12/nvidia/cuda_runtime/lib
    export LD_LIBRARY_PATH="$PIXELGEN_CUDA12_RUNTIME_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv || true
python3 benchmarks/gpu_suite.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
