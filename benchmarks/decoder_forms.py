"""Torch runtime form vs export form of the decoder segments, in one run (eager PyTorch, CPU or GPU).

The runtime form writes the KV buffer in place with fused SDPA and stops NMS at its fixed point; the
export form is what the ONNX graphs contain (one-hot Where KV update, explicit attention, unrolled NMS).
Same model (the llava-next-7b config scaled down, random weights), same requests.

python benchmarks/decoder_forms.py --out benchmarks/results/decoder_forms_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> dict:
    from trio_edge.runtime import bench

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_shape_arguments(parser, scale=0.0625, layers=4, vision_layers=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from trio_edge.artifact.graphs import graph_specs
    from trio_edge.artifact.plan import plan_for
    from trio_edge.cli.bench import DEFAULT_PROMPT, synthetic_image
    from trio_edge.models.random_weights import build_random
    from trio_edge.models.registry import load
    from trio_edge.models.split import build_modules
    from trio_edge.runtime.backends.torch_backend import TorchBackend
    from trio_edge.runtime.pipeline import Pipeline
    from trio_edge.trio.schedule import Schedule

    with tempfile.TemporaryDirectory(prefix="decoder-forms-") as tmp:
        source = build_random("llava-next-7b", Path(tmp) / "model", scale=args.scale, layers=args.layers,
                              vision_layers=args.vision_layers)
        loaded = load(str(source), device=args.device)
    adapter, grid = loaded.adapter, loaded.adapter.default_grid()

    def pipeline(schedule, runtime_form: bool) -> Pipeline:
        plan = plan_for(adapter, schedule, grid=grid, max_text_tokens=128, max_new_tokens=args.new_tokens,
                        nms_iterations=32)
        specs = graph_specs(plan, tile_count=adapter.tile_count(grid), pixel_shape=adapter.pixel_shape(grid), dtype="float32")
        backend = TorchBackend(specs, build_modules(adapter, plan, runtime_form=runtime_form), device=args.device,
                               cuda_graphs=False)
        return Pipeline(plan, backend, adapter, stop_token_ids=adapter.stop_token_ids(), dtype="float32")

    image, runs = synthetic_image(), {}
    for name, schedule in (("full", Schedule()), ("trio", adapter.schedule(grid, keep_ratio=0.111))):
        for form in ("runtime", "export"):
            report = bench.measure(pipeline(schedule, form == "runtime"), image, DEFAULT_PROMPT, warmup=1,
                                   iters=args.iters, new_tokens=args.new_tokens, label=f"{name} {form} form")
            runs[f"{name}_{form}_form"] = {"ttft_ms": report["ttft_ms"], "decode_ms_per_token": report["decode_ms_per_token"],
                                           "kept": report["kept"]}
    results = {"command": "python benchmarks/decoder_forms.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "environment": bench.environment("torch", args.device), "runs": runs,
               "speedup_runtime_over_export": {
                   name: {"ttft": runs[f"{name}_export_form"]["ttft_ms"] / runs[f"{name}_runtime_form"]["ttft_ms"],
                          "decode": runs[f"{name}_export_form"]["decode_ms_per_token"]
                          / runs[f"{name}_runtime_form"]["decode_ms_per_token"]} for name in ("full", "trio")}}
    assert runs["trio_runtime_form"]["kept"] == runs["trio_export_form"]["kept"], "the two forms selected differently"
    print(json.dumps(results["speedup_runtime_over_export"]))
    bench.write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
