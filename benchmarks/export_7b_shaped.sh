#!/usr/bin/env bash
# LLaVA-NeXT-7B-shaped export (real config, random fp16 weights): peak host RSS, artifact/weight ratio,
# and TensorRT readiness (trio-check). Needs ~40 GB free disk and ~24 GB RAM.
set -euo pipefail
work=${1:-/tmp/llava-next-7b-shaped}
mkdir -p "$work"
python - "$work/model" <<'PY'
import sys, torch
from trio_edge.models.random_weights import build_random
build_random("llava-next-7b", sys.argv[1], dtype=torch.float16)
PY
/usr/bin/time -v trio-export "$work/model" -o "$work/export" --keep-ratio 0.111 --dtype fp16 --no-validate --force \
  2> "$work/time.txt"
grep -E "Maximum resident|Elapsed" "$work/time.txt"
trio-check "$work/export" > "$work/check.txt" || true  # the summary records the verdict either way
tail -3 "$work/check.txt"
python "$(dirname "$0")/export_summary.py" "$work" "$(dirname "$0")/results/export_llava_next_7b_shaped.json"
