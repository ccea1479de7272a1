"""The Orin Nano proof: a 7B-shaped int4 export with TRIO answers one request on ONNX Runtime CPU within an
8 GB device's budget (peak process RSS <= 6 GiB). A benchmark run, not a test.

python benchmarks/orin_nano_proof.py EXPORT_DIR OUT_JSON [--new-tokens N] [--threads N] [--default-memory]

Peak RSS is the process's ru_maxrss (every page the weights, sessions and activations ever held at once),
measured from process start, so it includes Python, torch and the tokenizer. ONNX Runtime runs in its
low-memory mode (no CPU arena, no memory pattern, no weight prepacking, each graph opened at first use and the
vision tower and select stages closed after their run: what a memory-bound device uses) unless --default-memory.
Run it twice: the first load of an export optimizes each graph and writes ONNX Runtime's optimized-graph cache
(more memory while it serialises); the JSON records which it was ("ort_cache").
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export")
    parser.add_argument("out")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--default-memory", action="store_true", help="ONNX Runtime's CPU arena and memory pattern on")
    args = parser.parse_args()

    from trio_edge.artifact.manifest import read_manifest
    from trio_edge.cli.bench import DEFAULT_PROMPT, synthetic_image
    from trio_edge.runtime.open import open_pipeline

    started = time.perf_counter()
    manifest = read_manifest(args.export, verify_hashes=False)
    with open_pipeline(args.export, backend="onnxruntime", threads=args.threads, verify=False,
                       low_memory=not args.default_memory) as pipeline:
        opened = time.perf_counter()
        rss_after_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        stages = trace_stages(pipeline.backend)
        result = pipeline.generate(synthetic_image(), DEFAULT_PROMPT, max_new_tokens=args.new_tokens)
        done = time.perf_counter()
        ort_cache = sorted(set(pipeline.backend.cache.values()))  # low memory: graphs open during the request
        weight_format = pipeline.weight_format
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    body = {
        "command": f"python benchmarks/orin_nano_proof.py {args.export} {args.out} --new-tokens {args.new_tokens}"
                   + (" --default-memory" if args.default_memory else ""),
        "low_memory": not args.default_memory,
        "ort_cache": ort_cache,
        "rss_after_open_gib": rss_after_open / 2**30,
        "export": str(args.export),
        "weights": weight_format,
        "schedule": manifest.plan.describe(),
        "artifact_bytes": manifest.weights["graph_bytes"],
        "prompt_tokens": result.prompt_tokens,
        "kept": [len(k) for k in result.kept],
        "new_tokens": len(result.token_ids),
        "peak_rss_bytes": peak,
        "peak_rss_gib": peak / 2**30,
        "target_gib": 6.0,
        "within_target": peak <= 6 * 2**30,
        "open_seconds": opened - started,
        "request_seconds": done - opened,
        "wall_seconds": done - started,
        "ttft_ms": result.timings["ttft"],
        "stage_ms": {k: v for k, v in result.timings.items()},
        # after each graph's first run: the process's RSS now and its peak so far (GiB), the sessions then open
        "stage_rss": stages,
    }
    Path(args.out).write_text(json.dumps(body, indent=2))
    print(json.dumps({k: body[k] for k in ("weights", "ort_cache", "rss_after_open_gib", "peak_rss_gib", "within_target",
                                           "wall_seconds", "kept")}))
    for row in stages:
        print(f"{row['graph']:<20} RSS {row['rss_gib']:.2f} GiB (anonymous {row['anonymous_gib']:.2f}, files "
              f"{row['file_backed_gib']:.2f}), peak so far {row['peak_gib']:.2f} GiB, open: {row['open_sessions']}")


def trace_stages(backend) -> list[dict]:
    """Record, after the first run of every graph, the process's resident memory now and at its peak so far
    (/proc/self/status VmRSS, VmHWM) and the ONNX Runtime sessions open: where a request's peak comes from."""
    rows, seen, run = [], set(), backend.run

    def traced(graph, inputs):
        out = run(graph, inputs)
        if graph not in seen:
            seen.add(graph)
            status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                          if line.startswith(("VmRSS", "VmHWM", "RssFile", "RssAnon")))
            gib = {key: int(value.split()[0]) * 1024 / 2**30 for key, value in status.items()}
            rows.append({"graph": graph, "rss_gib": gib.get("VmRSS"), "peak_gib": gib.get("VmHWM"),
                         "file_backed_gib": gib.get("RssFile"), "anonymous_gib": gib.get("RssAnon"),
                         "open_sessions": sorted(getattr(backend, "sessions", {}))})
        return out

    backend.run = traced
    return rows


if __name__ == "__main__":
    main()
