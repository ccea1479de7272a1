#!/usr/bin/env bash
# The test command (README and .ci/run): set up, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers (CI has two cores); a test file stays on one worker so its module fixtures are built once.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=25 "$@"
