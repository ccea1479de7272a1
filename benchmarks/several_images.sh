#!/usr/bin/env bash
# Several images and a video per request, the wide CPU shape: TRIO at 11.1% vs the unpruned pipeline vs transformers
# `generate` (TTFT, TTFT + 64 tokens, KV bytes, peak RSS), each configuration one run of benchmarks/llava_next_7b.py
# (ratios within a run; the run's matmul peak is in its JSON). ONNX Runtime, the onnxruntime export target.
#   LLaVA-NeXT-7B architecture (hidden 1024, 4 layers, 2,928 image tokens per image): 1 image, then 4 images
#   Qwen2.5-VL-7B architecture (hidden 896, 16 layers so TRIO's Qwen cuts, from layer 1, reach 11.1%): 1 image,
#     4 images, then a 16-frame video (8 frame pairs of 576 tokens)
#   Qwen3-VL-8B architecture (hidden 1024, 16 layers, DeepStack): 1 image, 4 images, then a 16-frame video
# Usage: bash benchmarks/several_images.sh [CONFIGS]
#   (default "llava1 llava4 qwen1 qwen4 qwenvideo qwen3_1 qwen3_4 qwen3video")
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
configs=${1:-llava1 llava4 qwen1 qwen4 qwenvideo qwen3_1 qwen3_4 qwen3video}
common="--device cpu --dtype fp32 --scale 0.25 --vision-layers 2 --new-tokens 64 --iters 2 --warmup 0 --backends onnxruntime-gqa"
for config in $configs; do
  case $config in
    llava1) args="--layers 4 --images 1" ;;
    llava4) args="--layers 4 --images 4" ;;
    qwen1) args="--model qwen2.5-vl-7b --layers 16 --images 1" ;;
    qwen4) args="--model qwen2.5-vl-7b --layers 16 --images 4" ;;
    qwenvideo) args="--model qwen2.5-vl-7b --layers 16 --video-frames 16" ;;
    qwen3_1) args="--model qwen3-vl-8b --layers 16 --images 1" ;;
    qwen3_4) args="--model qwen3-vl-8b --layers 16 --images 4" ;;
    qwen3video) args="--model qwen3-vl-8b --layers 16 --video-frames 16" ;;
    *) echo "unknown configuration $config" >&2; exit 2 ;;
  esac
  echo "== $config: $args"
  python "$here/llava_next_7b.py" $common $args --out "$here/results/several_images_${config}_cpu_wide_64.json"
done
