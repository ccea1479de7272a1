"""TRIO's select stages on ONNX Runtime CPU at the wide LLaVA-NeXT-7B shape: their ms and share of TRIO's TTFT.

Builds the llava-next-7b architecture with random weights (hidden 1024 at --scale 0.25, 2,928 image tokens),
exports it with TRIO at 11.1% (the tensorrt target, fp32), runs the ONNX Runtime pipeline on one request
`--iters` times and reports the median TTFT and every select stage's median ms; then times each select graph
alone on that request's recorded inputs, and (--profile) lists its costliest ONNX ops from ORT's profiler.

python benchmarks/select_stage.py --scale 0.25 --layers 4 --vision-layers 2 --iters 5 \
    --out benchmarks/results/select_stage_cpu_wide.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def graph_alone(path: Path, inputs: dict, iters: int, profile: bool) -> dict:
    """Median ms of one select graph on `inputs` in its own session, and its ops by total time (profile)."""
    import onnxruntime as ort

    from trio_edge.runtime.backends.ort_profile import op_times
    from trio_edge.runtime.backends.ort_sessions import session_options

    options = session_options(ort, None)  # the pipeline's own settings
    options.enable_profiling = profile
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"select_stage_{path.stem}")  # not the cwd
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    session.run(None, feed)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    result = {"median_ms": statistics.median(times)}
    if profile:
        profile_ms = op_times(Path(session.end_profiling()))
        result["ops_ms"] = dict(list(profile_ms["ms_per_run_by_op"].items())[:12])
    return result


def main(argv=None) -> dict:
    from trio_edge.runtime import bench

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_shape_arguments(parser, scale=0.25, layers=4, vision_layers=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also list each select graph's costliest ops")
    parser.add_argument("--out", help="JSON file to write, e.g. benchmarks/results/select_stage_cpu_wide.json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from trio_edge import load as load_pipeline
    from trio_edge.cli.bench import DEFAULT_PROMPT, synthetic_image
    from trio_edge.exporters.export import export
    from trio_edge.models.random_weights import build_random
    from trio_edge.models.registry import load

    command = "python benchmarks/select_stage.py " + " ".join(sys.argv[1:] if argv is None else argv)
    image, prompt = synthetic_image(), DEFAULT_PROMPT
    with tempfile.TemporaryDirectory(prefix="select-stage-") as tmp:
        source = build_random("llava-next-7b", Path(tmp) / "model", dtype=torch.float32, scale=args.scale,
                              layers=args.layers, vision_layers=args.vision_layers)
        loaded = load(str(source), dtype=torch.float32, device="cpu")
        out = Path(tmp) / "export"
        export(loaded.source, out, dtype="fp32", max_new_tokens=8, validate=False, progress=False, loaded=loaded,
               keep_ratio=0.111)
        pipeline = load_pipeline(out, backend="onnxruntime", device="cpu")
        report = bench.measure(pipeline, image, prompt, warmup=args.warmup, iters=args.iters, new_tokens=1,
                               label="onnxruntime trio")
        selects = {k: v["median_ms"] for k, v in report["stages"].items() if k.startswith("select")}
        recorded = {}
        backend = pipeline.backend
        run = backend.run

        def recording(graph, inputs):
            if graph.startswith("select"):
                recorded[graph] = {k: np.ascontiguousarray(v.cpu().numpy()) for k, v in inputs.items()}
            return run(graph, inputs)

        backend.run = recording
        pipeline.generate(image, prompt, max_new_tokens=1)
        backend.run = run
        pipeline.close()
        alone = {name: graph_alone(out / f"{name}.onnx", inputs, args.iters, args.profile)
                 for name, inputs in recorded.items()}
    result = {"command": command, "environment": bench.environment("onnxruntime", "cpu"),
              "ttft_ms": report["ttft_ms"], "select_stage_ms": selects,
              "select_share_of_ttft": sum(selects.values()) / report["ttft_ms"], "select_graph_alone": alone}
    print(f"TRIO TTFT {result['ttft_ms']:.1f} ms; select stages {sum(selects.values()):.1f} ms "
          f"({100 * result['select_share_of_ttft']:.1f}% of TTFT)")
    for name, ms in selects.items():
        alone_ms = alone.get(name, {}).get("median_ms", float("nan"))
        print(f"  {name}: {ms:.1f} ms in the pipeline, {alone_ms:.1f} ms alone")
        for op, op_ms in alone.get(name, {}).get("ops_ms", {}).items():
            print(f"      {op:<24}{op_ms:>8.1f} ms")
    bench.write_results(args.out, result)
    return result


if __name__ == "__main__":
    main()
