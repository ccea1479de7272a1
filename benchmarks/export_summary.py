"""JSON summary of a 7B-shaped export run (benchmarks/export_7b_shaped.sh writes its inputs).

python benchmarks/export_summary.py WORKDIR OUT_JSON [COMMAND]: reads WORKDIR/export/manifest.json, the
`/usr/bin/time -v` output WORKDIR/time.txt and the trio-check report WORKDIR/check.txt; adds the Jetson Orin
fit of the export (runtime.roofline.orin_fit_for_export: weights + KV per module, decode bandwidth bound).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path


def summary(work: Path, command: str | None = None) -> dict:
    from trio_edge.artifact.manifest import read_manifest
    from trio_edge.runtime.roofline import orin_fit_for_export

    parsed = read_manifest(work / "export", verify_hashes=False)
    manifest = parsed.to_dict()
    timing = (work / "time.txt").read_text()
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", timing).group(1)
    check = (work / "check.txt").read_text().strip().splitlines()
    weights = manifest["weights"]
    return {
        "command": command or ("bash benchmarks/export_7b_shaped.sh (trio-export MODEL -o DIR --keep-ratio 0.111 "
                               "--dtype fp16 --no-validate; trio-check DIR)"),
        "weight_format": manifest.get("quantization") or manifest["model"]["dtype"],
        "model": f"{os.environ.get('MODEL', 'llava-next-7b')} architecture ({manifest['model']['architecture']}), "
                 "random fp16 weights (trio_edge.models.random_weights)",
        "schedule": manifest["plan"]["schedule"],
        "image_tokens": manifest["plan"]["num_image_tokens"],
        "graphs": {name: {"kind": g["kind"], "bytes": g["bytes"]} for name, g in manifest["graphs"].items()},
        "weights": weights,
        "peak_rss_bytes": peak_kib * 1024,
        "peak_rss_over_fp16_weight_bytes": peak_kib * 1024 / weights["model_parameter_bytes"],
        "wall_clock": wall,
        "trio_check": check[-1] if check else "",
        "orin_fit": orin_fit_for_export(parsed),
        "tool": manifest["tool"],
    }


if __name__ == "__main__":
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    body = summary(work, sys.argv[3] if len(sys.argv) > 3 else None)
    out.write_text(json.dumps(body, indent=2))
    print(json.dumps({k: body[k] for k in ("peak_rss_over_fp16_weight_bytes", "wall_clock", "trio_check")}))
