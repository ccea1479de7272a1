#!/usr/bin/env bash
# Create .venv (if missing) and install trio-edge with its test extras. torch is pinned to the CPU
# wheel (2.13.0) in pyproject.toml; on a GPU machine install onnxruntime-gpu via the [gpu] extra.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
