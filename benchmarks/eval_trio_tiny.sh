#!/usr/bin/env bash
# Accuracy of TRIO vs the published peers on trio-tiny at 1/3, 2/9, 1/9 (torch; ONNX at 1/3), and the
# calibrated 11.1% schedule vs the default one on a held-out split. Results under benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-200}
out=benchmarks/results
trio-eval trio-tiny --n "$n" --json "$out/eval_peers_trio_tiny.json" --plot "$out/eval_peers_trio_tiny.png" --quiet
trio-eval trio-tiny --budgets 1/3 --methods full,trio,fastv,dart,pdrop --backend onnxruntime --n 40 \
  --json "$out/eval_peers_trio_tiny_onnx.json" --quiet
trio-calibrate trio-tiny --budget 0.111 --n 48 -o "$out/trio_tiny_calibrated_0.111.json" --quiet
python - "$out" "$n" <<'PY'
import json, sys
from pathlib import Path
from trio_edge.calibration.data import load_records
from trio_edge.calibration.evaluate import accuracy
from trio_edge.models.registry import load
from trio_edge.runtime.open import open_pipeline
from trio_edge.trio.schedule import Schedule

out, n = Path(sys.argv[1]), int(sys.argv[2])
loaded = load("trio-tiny")
grid = loaded.adapter.default_grid()
records = load_records("synthetic", n=n)  # the held-out split, not the calibration seed
calibrated = Schedule.from_json((out / "trio_tiny_calibrated_0.111.json").read_text())
default = loaded.adapter.schedule(grid, keep_ratio=0.111)
rows = {}
for name, schedule in (("default", default), ("calibrated", calibrated)):
    acc, _ = accuracy(open_pipeline(loaded, schedule=schedule, max_new_tokens=8), records)
    rows[name] = {"cuts": ",".join(f"{c.layer}:{c.keep}" for c in schedule.cuts), "threshold": schedule.threshold,
                  "budget": schedule.budget_ratio(loaded.adapter.num_layers, loaded.adapter.image_token_count(grid)),
                  "held_out_accuracy": acc}
(out / "calibration_vs_default_trio_tiny.json").write_text(json.dumps({"n": n, **rows}, indent=2))
print(json.dumps(rows))
PY
