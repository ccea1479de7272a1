#!/usr/bin/env bash
# LLaVA-NeXT-7B-shaped exports (real config, random fp16 weights) at int4, int8 and fp16 with TRIO at 11.1%,
# selection in the model's precision (select graphs share the segments' weights): artifact bytes / fp16
# weight bytes and peak host RSS of each export (JSON per format via export_summary.py), trio-check, then the
# Orin Nano proof on the int4 export (orin_nano_proof.py). One multi-GB job at a time; ~40 GB free disk.
# Usage: bash benchmarks/export_7b_quantized.sh [WORKDIR] [FORMATS (default "int4 int8 fp16")]
# (ORIN_PROOF=0 skips the proof; KEEP_EXPORTS=1 keeps each export; MODEL=qwen2.5-vl-7b another alias with a
# shipped config, SCHEDULE="--preset trio-qwen" its schedule: results then carry the model's name)
set -euo pipefail
export MODEL=${MODEL:-llava-next-7b}
model=$MODEL
schedule=${SCHEDULE:---keep-ratio 0.111}
slug=$(echo "$model" | tr '.-' '__')
work=${1:-/tmp/$model-shaped}
formats=${2:-int4 int8 fp16}
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$work"
if [ ! -f "$work/model/config.json" ]; then
  python - "$work/model" "$model" <<'PY'
import sys, torch
from trio_edge.models.random_weights import build_random
build_random(sys.argv[2], sys.argv[1], dtype=torch.float16)
PY
fi
for weights in $formats; do
  run="$work/$weights"
  mkdir -p "$run"
  /usr/bin/time -v trio-export "$work/model" -o "$run/export" $schedule --dtype fp16 --weights "$weights" \
    --select-precision model --no-validate --force --quiet 2> "$run/time.txt"
  grep -E "Maximum resident|Elapsed" "$run/time.txt"
  trio-check "$run/export" > "$run/check.txt" || true
  tail -1 "$run/check.txt"
  python "$here/export_summary.py" "$run" "$here/results/export_${slug}_shaped_$weights.json" \
    "MODEL=$model bash benchmarks/export_7b_quantized.sh (trio-export MODEL -o DIR $schedule --dtype fp16 --weights $weights --select-precision model --no-validate)"
  if [ "$weights" = int4 ] && [ "${ORIN_PROOF:-1}" = 1 ]; then
    proof=orin_nano_proof_int4.json
    [ "$model" = llava-next-7b ] || proof=orin_nano_proof_${slug}_int4.json
    python "$here/orin_nano_proof.py" "$run/export" "$here/results/$proof"
  fi
  [ "${KEEP_EXPORTS:-0}" = 1 ] || rm -rf "$run/export"
done
