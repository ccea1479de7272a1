"""Resident host memory of each graph of an export once ONNX Runtime has opened it (CPU, the runtime's own session
options in low-memory mode), one fresh process per graph, beside the graph's bytes on disk; optionally with
weight prepacking off. Says where an export's memory goes before any request runs.

python benchmarks/graph_resident_memory.py EXPORT_DIR OUT_JSON [--no-prepack]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys
import onnxruntime as ort
from pathlib import Path
from trio_edge.artifact.manifest import read_manifest
from trio_edge.artifact.weights import ort_disabled_optimizers
from trio_edge.runtime.backends.ort_sessions import session_options

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

directory, name, prepack = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
manifest = read_manifest(directory, verify_hashes=False)
spec = manifest.specs()[name]
skip = ort_disabled_optimizers(spec.kind, quantized=manifest.quantization is not None, dtype=manifest.model.dtype)
options = session_options(ort, None, low_memory=True)
options.add_session_config_entry("session.disable_prepacking", "0" if prepack else "1")
before = rss()
session = ort.InferenceSession(str(directory / manifest.graphs[name].file), options,
                               providers=["CPUExecutionProvider"], disabled_optimizers=list(skip) or None)
print(json.dumps({"resident_bytes": rss() - before}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export")
    parser.add_argument("out")
    parser.add_argument("--no-prepack", action="store_true", help="also measure with ORT weight prepacking off")
    args = parser.parse_args()

    from trio_edge.artifact.manifest import read_manifest

    directory = Path(args.export)
    manifest = read_manifest(directory, verify_hashes=False)
    rows, modes = {}, ["prepack"] + (["no_prepack"] if args.no_prepack else [])
    print(f"{'graph':18s} {'on disk':>9s} " + " ".join(f"{m:>12s}" for m in modes))
    for name, graph in manifest.graphs.items():
        on_disk = sum(p.stat().st_size for p in directory.glob(graph.file + "*"))
        row = rows[name] = {"kind": graph.kind, "file_bytes": on_disk}
        for mode in modes:
            child = subprocess.run([sys.executable, "-c", CHILD, str(directory), name, "1" if mode == "prepack" else "0"],
                                   capture_output=True, text=True, check=True)
            row[f"resident_bytes_{mode}"] = json.loads(child.stdout.strip().splitlines()[-1])["resident_bytes"]
        print(f"{name:18s} {on_disk / 2**30:7.2f} G " + " ".join(
            f"{row[f'resident_bytes_{m}'] / 2**30:10.2f} G" for m in modes), flush=True)
    totals = {m: sum(r[f"resident_bytes_{m}"] for r in rows.values()) for m in modes}
    body = {"command": f"python benchmarks/graph_resident_memory.py {args.export} {args.out}"
                       + (" --no-prepack" if args.no_prepack else ""),
            "weights": manifest.weight_format(), "file_bytes": sum(r["file_bytes"] for r in rows.values()),
            "resident_bytes_total": totals, "graphs": rows}
    print("total", {m: f"{v / 2**30:.2f} GiB" for m, v in totals.items()},
          f"on disk {body['file_bytes'] / 2**30:.2f} GiB")
    Path(args.out).write_text(json.dumps(body, indent=2))


if __name__ == "__main__":
    main()
