"""Decode cost vs KV capacity: the same prompt, the same model, exports with ~0.4k and ~4.4k KV slots.

A decode step must cost the same whatever the export's KV capacity (its --max-new-tokens): the graphs read only
the filled slots and scatter only the new one into a cache bound in place. Builds the llava-next-7b
architecture at text hidden 512 (scale 0.125) with 2 decoder layers and random weights, one cut before layer 0
keeping 320 image tokens (one layer group: KV capacity = 128 text + 320 image + max new tokens), and times every
decode step (median over all steps of several requests) on ONNX Runtime (the export) and torch (the runtime
form). Both capacities are open at once and their requests alternate, so the machine's drift hits both.

CPU:  python benchmarks/kv_capacity.py --out benchmarks/results/kv_capacity_cpu.json
      python benchmarks/kv_capacity.py --target onnxruntime --backends onnxruntime \
          --out benchmarks/results/kv_capacity_cpu_gqa.json
Prints a table and one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

CAPACITIES = {"small": 16, "large": 4000}  # --max-new-tokens of the two exports


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--iters", type=int, default=6, help="requests per capacity, alternating")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--backends", default="onnxruntime,torch")
    parser.add_argument("--target", default="tensorrt", help="export target of the ONNX Runtime runs (onnxruntime: "
                        "GroupQueryAttention on a shared past/present buffer)")
    parser.add_argument("--out", help="JSON file to write (e.g. benchmarks/results/kv_capacity_cpu.json)")
    args = parser.parse_args(argv)

    import torch

    from trio_edge import load
    from trio_edge.cli.bench import DEFAULT_PROMPT, synthetic_image
    from trio_edge.exporters.export import export
    from trio_edge.models.random_weights import build_random
    from trio_edge.models.registry import load as load_model
    from trio_edge.runtime import bench

    image, prompt = synthetic_image(), DEFAULT_PROMPT
    results = {"command": "python benchmarks/kv_capacity.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "environment": bench.environment(args.backends, "cpu"), "target": args.target, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="kv-capacity-") as tmp:
        source = build_random("llava-next-7b", Path(tmp) / "model", dtype=torch.float32, scale=0.125, layers=2,
                              vision_layers=1)
        loaded = load_model(str(source), dtype=torch.float32)
        for backend in args.backends.split(","):
            pipelines = {}
            for size, max_new in CAPACITIES.items():
                if backend == "torch":
                    pipelines[size] = load(loaded, cuts="0:320", max_new_tokens=max_new)
                else:
                    out = Path(tmp) / f"export-{args.target}-{size}"
                    if not out.exists():
                        export(loaded.source, out, cuts="0:320", max_new_tokens=max_new, validate=False,
                               progress=False, loaded=loaded, target=args.target)
                    pipelines[size] = load(out, backend=backend)
                for _ in range(args.warmup):
                    pipelines[size].generate(image, prompt, max_new_tokens=args.new_tokens)
            # requests alternate between the two capacities (each round starts with the other one), so a drift of
            # the machine's speed during the run lands on both sides instead of deciding the ratio
            runners = {size: (lambda pipeline=pipeline: bench.request(pipeline, image, prompt, args.new_tokens))
                       for size, pipeline in pipelines.items()}
            measured = bench.interleaved_rounds(runners, args.iters, progress=False)
            for size, pipeline in pipelines.items():
                report = bench.summarize(pipeline, measured[size], args.new_tokens)
                slots = max(pipeline.plan.kv_shape(s)[3] for s in pipeline.plan.segments)
                results["runs"][f"{backend}_{size}"] = {
                    "kv_slots": slots, "prompt_tokens": report["prompt_tokens"],
                    "decode_step_ms": report["decode_step_ms"], "ttft_ms": report["ttft_ms"]}
                pipeline.close()
    results["ratios"] = {backend: results["runs"][f"{backend}_large"]["decode_step_ms"]["median"]
                         / results["runs"][f"{backend}_small"]["decode_step_ms"]["median"]
                         for backend in args.backends.split(",")}
    print(f"{'run':<20}{'KV slots':>10}{'decode ms/step (median)':>26}{'p90':>8}")
    for name, run in results["runs"].items():
        step = run["decode_step_ms"]
        print(f"{name:<20}{run['kv_slots']:>10}{step['median']:>26.2f}{step['p90']:>8.2f}")
    for backend, ratio in results["ratios"].items():
        print(f"{backend}: decode at {CAPACITIES['large']}-token vs {CAPACITIES['small']}-token capacity: {ratio:.2f}x")
    bench.write_results(args.out, results)
    print(json.dumps({"ratios": results["ratios"]}))
    return results


if __name__ == "__main__":
    main()
