"""Peak host memory of one request on ONNX Runtime CPU, per export form, beside the artifact's bytes.

The LLaVA-NeXT-7B architecture scaled down (hidden 1024, 4 decoder layers, 2 vision layers, the real 2,928
image tokens), random weights, TRIO at 11.1%. Each form is exported once (kept in --workdir, reused when
present) and answers one request in a fresh process (`open_pipeline`, 4 new tokens), which reports its RSS
after opening the sessions and its peak RSS (ru_maxrss, so Python, torch and the tokenizer are included):
twice, with an empty ONNX Runtime optimized-graph cache (cold: ORT optimizes and saves) and then with it (warm);
with ONNX Runtime's default memory settings and with --low-memory (no CPU arena, no memory pattern).

python benchmarks/runtime_memory.py [--workdir /tmp/trio-memory] [--forms fp16-int4,fp32-int4,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from trio_edge.cli.bench import DEFAULT_PROMPT, synthetic_image
from trio_edge.runtime.open import open_pipeline
started = time.perf_counter()
with open_pipeline(sys.argv[1], backend="onnxruntime", verify=False, low_memory=sys.argv[2] == "low") as pipeline:
    opened = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = pipeline.generate(synthetic_image(), DEFAULT_PROMPT, max_new_tokens=4)
print(json.dumps({"rss_after_open_bytes": opened, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "seconds": time.perf_counter() - started, "kept": [len(k) for k in result.kept]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/trio-memory")
    parser.add_argument("--forms", default="fp16-int4,fp32-int4,fp32-int4-onnxruntime",
                        help="DTYPE-WEIGHTS[-TARGET] per export")
    parser.add_argument("--out", default="benchmarks/results/runtime_memory_cpu.json")
    args = parser.parse_args()

    import torch

    from trio_edge.exporters.export import export
    from trio_edge.models.random_weights import build_random

    root = Path(args.workdir)
    model = root / "model"
    if not model.exists():
        build_random("llava-next-7b", model, dtype=torch.float32, scale=0.25, layers=4, vision_layers=2)
    rows = {}
    for form in args.forms.split(","):
        dtype, weights, *target = form.split("-")
        out = root / form
        if not out.exists():
            export(str(model), out, keep_ratio=0.111, dtype=dtype, weights=None if weights == "fp" else weights,
                   target=target[0] if target else "tensorrt", validate=False, progress=False, max_new_tokens=8)
        artifact = sum(p.stat().st_size for p in out.glob("*.onnx*"))
        rows[form] = {"artifact_bytes": artifact}
        for memory in ("default", "low"):
            with tempfile.TemporaryDirectory(prefix="ort-cache-") as cache:
                for load in ("cold", "warm"):
                    child = subprocess.run([sys.executable, "-c", CHILD, str(out), memory], capture_output=True,
                                           text=True, check=True, env={**os.environ, "TRIO_EDGE_CACHE": cache})
                    row = json.loads(child.stdout.strip().splitlines()[-1])
                    rows[form][load if memory == "default" else f"{load}_low_memory"] = row
                    print(f"{form:24s} {memory:7s} {load}  artifact {artifact / 2**20:5.0f} MiB  after open "
                          f"{row['rss_after_open_bytes'] / 2**30:5.2f} GiB  peak {row['peak_rss_bytes'] / 2**30:5.2f} "
                          f"GiB  {row['seconds']:5.1f} s  kept {row['kept']}", flush=True)
    body = {"command": "python benchmarks/runtime_memory.py --forms " + args.forms,
            "model": "llava-next-7b architecture, hidden 1024, 4 layers, 2 vision layers, random weights, TRIO 11.1%",
            "date": time.strftime("%Y-%m-%d"), "results": rows}
    Path(args.out).write_text(json.dumps(body, indent=2))


if __name__ == "__main__":
    main()
