#!/usr/bin/env bash
# Everything a GPU session checks, in one device call (the device tool runs it in the repo root):
#   1. the GPU tests (CUDA-graph replay == eager, ORT CUDA IO binding == ORT CPU, TensorRT where it imports)
#   2. the LLaVA-NeXT-7B-shaped benchmark (real config, random fp16 weights) on $BACKENDS, TRIO with fp32
#      and with model-precision selection
# Results land in $OUT (device tool) or benchmarks/results/. Uses the machine's own torch/transformers
# (no install: the package runs from the checkout via PYTHONPATH). For onnxruntime-gpu, carry it first
# (../shared/tools/ortgpu-chunks.sh) so it sits in /tmp/site, and add onnxruntime (the tensorrt-target export) and
# onnxruntime-gqa (the onnxruntime target: GroupQueryAttention on shared past/present buffers, fp16) to BACKENDS.
# Full-size ONNX exports take minutes each on the host: for ORT within one 10-minute call, pass
# EXTRA="--layers 8" (the figures then say so). One call per part keeps each within the limit, e.g.
#   bash benchmarks/gpu_session.sh                                   (GPU tests + torch backends, h100.json)
#   TESTS=0 BACKENDS=onnxruntime,onnxruntime-gqa EXTRA="--layers 8" NAME=h100_ort bash benchmarks/gpu_session.sh
set -euo pipefail
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1 || echo "nvidia-smi failed" > "$out/gpu.txt"
if [ "${TESTS:-1}" != 0 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/runtime/test_cuda_graphs.py tests/runtime/test_onnxruntime_cuda.py \
    tests/runtime/test_tensorrt.py -k "cuda or tensorrt_engines" 2>&1 | tee "$out/gpu_tests.log" || true
fi
python3 benchmarks/llava_next_7b.py --device cuda --dtype fp16 --backends "${BACKENDS:-torch,torch-eager}" \
  --select-precision both --new-tokens 64 --sequential ${EXTRA:-} --out "$out/${NAME:-h100}.json" 2>&1 | tee "$out/${NAME:-h100}.log"
