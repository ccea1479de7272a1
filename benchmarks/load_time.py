"""Load time of an export on ONNX Runtime: without the optimized-graph cache, cold (first load, which writes
the cache) and warm (later loads, which open the cached optimized graphs), each in a fresh process.

python benchmarks/load_time.py --export DIR [--repeats 3] [--out benchmarks/results/load_time_trio_tiny.json]
(DIR from e.g. `trio-export trio-tiny -o DIR --keep-ratio 0.111`). Prints a table and one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
started = time.perf_counter()
from trio_edge.runtime.open import open_export
after_import = time.perf_counter()
pipeline = open_export(sys.argv[1], verify=False, ort_cache=sys.argv[2] == "1")
done = time.perf_counter()
print(json.dumps({"open_ms": (done - after_import) * 1e3, "cache": sorted(set(pipeline.backend.cache.values()))}))
"""


def load_once(export: str, cache_dir: str | None) -> dict:
    env = dict(os.environ)
    if cache_dir is not None:
        env["TRIO_EDGE_CACHE"] = cache_dir
    out = subprocess.run([sys.executable, "-c", CHILD, export, "0" if cache_dir is None else "1"], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    from trio_edge.runtime import bench

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="export directory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args(argv)
    runs = {"no_cache": [], "cold": [], "warm": []}
    for _ in range(args.repeats):
        runs["no_cache"].append(load_once(args.export, None))
        with tempfile.TemporaryDirectory(prefix="trio-edge-cache-") as cache:
            runs["cold"].append(load_once(args.export, cache))
            runs["warm"].append(load_once(args.export, cache))
    medians = {name: statistics.median(r["open_ms"] for r in rows) for name, rows in runs.items()}
    result = {"command": "python benchmarks/load_time.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "export": Path(args.export).name, "open_ms_median": medians, "runs": runs,
              "warm_speedup_vs_no_cache": medians["no_cache"] / medians["warm"]}
    print(f"{'load':<10}{'open ms (median)':>18}")
    for name, value in medians.items():
        print(f"{name:<10}{value:>18.0f}")
    bench.write_results(args.out, result)
    print(json.dumps({"open_ms_median": medians}))
    return result


if __name__ == "__main__":
    main()
