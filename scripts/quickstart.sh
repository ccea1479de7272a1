#!/usr/bin/env bash
# The main job on the embedded default model: set up, export trio-tiny at 11.1% layer-averaged image
# tokens (ONNX graphs with TRIO inside, validated against PyTorch), and answer a question with the export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
trio-export trio-tiny -o exports/trio-tiny --keep-ratio 0.111 --force
trio-check exports/trio-tiny
trio-run exports/trio-tiny --image "$(python -m trio_edge.samples color)" --prompt "what color is the triangle?" --json
