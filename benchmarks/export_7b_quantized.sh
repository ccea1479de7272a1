#!/usr/bin/env bash
# LLaVA-NeXT-7B-shaped exports (real config, random fp16 weights) at int4, int8 and fp16 with TRIO at 11.1%,
# selection in the model's precision (select graphs share the segments' weights): artifact bytes / fp16
# weight bytes and peak host RSS of each export (JSON per format via export_summary.py), trio-check, then the
# Orin Nano proof on the int4 export (orin_nano_proof.py). One multi-GB job at a time; ~40 GB free disk.
# Usage: bash benchmarks/export_7b_quantized.sh [WORKDIR] [FORMATS (default "int4 int8 fp16")]
# (ORIN_PROOF=0 skips the proof; KEEP_EXPORTS=1 keeps each export)
set -euo pipefail
work=${1:-/tmp/llava-next-7b-shaped}
formats=${2:-int4 int8 fp16}
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$work"
if [ ! -f "$work/model/config.json" ]; then
  python - "$work/model" <<'PY'
import sys, torch
from trio_edge.models.random_weights import build_random
build_random("llava-next-7b", sys.argv[1], dtype=torch.float16)
PY
fi
for weights in $formats; do
  run="$work/$weights"
  mkdir -p "$run"
  /usr/bin/time -v trio-export "$work/model" -o "$run/export" --keep-ratio 0.111 --dtype fp16 --weights "$weights" \
    --select-precision model --no-validate --force --quiet 2> "$run/time.txt"
  grep -E "Maximum resident|Elapsed" "$run/time.txt"
  trio-check "$run/export" > "$run/check.txt" || true
  tail -1 "$run/check.txt"
  python "$here/export_summary.py" "$run" "$here/results/export_llava_next_7b_shaped_$weights.json" \
    "bash benchmarks/export_7b_quantized.sh (trio-export MODEL -o DIR --keep-ratio 0.111 --dtype fp16 --weights $weights --select-precision model --no-validate)"
  if [ "$weights" = int4 ] && [ "${ORIN_PROOF:-1}" = 1 ]; then
    python "$here/orin_nano_proof.py" "$run/export" "$here/results/orin_nano_proof_int4.json"
  fi
  [ "${KEEP_EXPORTS:-0}" = 1 ] || rm -rf "$run/export"
done
