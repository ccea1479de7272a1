"""Where one decode step's time goes: ONNX Runtime (both export targets) vs the torch runtime form, one run.

Builds the llava-next-7b architecture at the wide shape (hidden 1024, 4 layers, the real 2928 image tokens;
--scale/--layers), exports it unpruned for `--target tensorrt` and `--target onnxruntime`, fills every KV buffer
as a prefill of the prompt would (random values: a step's cost does not depend on them) and times
`Pipeline.decode_step` at the prompt's length, with no prefill per request; transformers' own step (greedy
`generate`, every step timestamped inside it, unpruned) is measured beside it. For ONNX Runtime it splits each
step into the graphs' own run time (`run_with_iobinding`) and the host work around it (inputs, IO binding,
output allocation, the step's small position/length tensors), and profiles each graph with ONNX Runtime's
profiler (`SessionOptions.enable_profiling`): time per operator type.

CPU:  python benchmarks/decode_step.py --out benchmarks/results/decode_step_cpu_wide.json
Prints a table and one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


class TimedSession:
    """An InferenceSession whose run_with_iobinding is timed (the graph's own run); everything else delegates."""

    def __init__(self, session, times: list):
        self._session, self._times = session, times

    def run_with_iobinding(self, binding):
        start = time.perf_counter()
        self._session.run_with_iobinding(binding)
        self._times.append((time.perf_counter() - start) * 1e3)

    def __getattr__(self, name):
        return getattr(self._session, name)


def fill_kv(pipeline, seed: int = 0) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    for name, buffer in pipeline.kv.items():
        buffer.copy_(torch.randn(buffer.shape, generator=generator, dtype=torch.float32).to(buffer.dtype))


def time_steps(pipeline, prompt_length: int, steps: int, warmup: int, graph_times: dict | None = None) -> dict:
    """Median ms of `steps` decode steps after `warmup`, every KV group filled as the prompt's prefill fills it."""
    import torch

    text = prompt_length - pipeline.plan.num_image_tokens  # each layer group holds text + its image tokens
    lengths = {seg.name: text + seg.image_tokens for seg in pipeline.plan.segments}
    features = {spec.name: torch.zeros(spec.shape, dtype=pipeline.dtype)  # the embed graph's vision inputs
                for spec in pipeline.backend.specs["embed"].inputs if spec.name != "input_ids"}
    token, totals = 1, []
    with torch.inference_mode():
        for step in range(warmup + steps):
            if graph_times is not None and step == warmup:
                for times in graph_times.values():
                    times.clear()
            start = time.perf_counter()
            logits = pipeline.decode_step(token, features, step, prompt_length, lengths)
            token = int(logits[0].argmax())
            if step >= warmup:
                totals.append((time.perf_counter() - start) * 1e3)
    report = {"step_ms": statistics.median(totals), "steps": len(totals)}
    if graph_times is not None:
        graphs = {name: statistics.median(times) for name, times in graph_times.items() if times}
        report["graph_run_ms"] = graphs
        report["host_ms"] = report["step_ms"] - sum(graphs.values())
    return report


def ort_profile(pipeline, graph: str, path: Path, inputs: dict, runs: int) -> dict:
    """ms per operator type of one graph run (mean of `runs` - 1, the first dropped), from ONNX Runtime's
    profiler, on a session opened with the backend's own settings plus profiling."""
    import onnxruntime as ort

    from trio_edge.runtime.backends.ort_profile import op_times
    from trio_edge.runtime.backends.ort_sessions import session_options

    backend = pipeline.backend
    options = session_options(ort, None)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / graph)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        original = backend.sessions[graph]
        backend.sessions[graph] = session
        try:
            for _ in range(runs):
                backend.run(graph, inputs)
        finally:
            backend.sessions[graph] = original
        return op_times(Path(session.end_profiling()))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--targets", default="tensorrt,onnxruntime")
    parser.add_argument("--keep-ratio", type=float, help="TRIO at this layer-averaged ratio (default: unpruned)")
    parser.add_argument("--transformers-requests", type=int, default=2,
                        help="requests of transformers generate (16 new tokens, every step timed; 0: skip)")
    parser.add_argument("--export-dir", help="keep the exports here (reused when present) instead of a temp dir")
    parser.add_argument("--baseline-dir", help="a directory of exports made by an earlier version of this script "
                        "(--export-dir there): they are timed too, as before_<target>, for a before/after in one run")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    import torch

    from trio_edge import Schedule, load
    from trio_edge.artifact.graphs import cache_inputs
    from trio_edge.artifact.manifest import read_manifest
    from trio_edge.cli.bench import DEFAULT_PROMPT, synthetic_image
    from trio_edge.exporters.export import export
    from trio_edge.models.random_weights import build_random
    from trio_edge.models.registry import load as load_model
    from trio_edge.runtime import bench

    results = {"command": "python benchmarks/decode_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "environment": bench.environment("torch,onnxruntime", "cpu"), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="decode-step-") as tmp:
        root = Path(args.export_dir or tmp)
        model_dir = root / "model"
        if not (model_dir / "config.json").exists():
            build_random("llava-next-7b", model_dir, dtype=torch.float32, scale=args.scale, layers=args.layers,
                         vision_layers=1)
        loaded = load_model(str(model_dir), dtype=torch.float32)
        grid = loaded.adapter.default_grid()
        prompt_length = loaded.adapter.prompt_ids(DEFAULT_PROMPT, loaded.adapter.image_token_count(grid)).shape[1]
        if args.transformers_requests:  # transformers' own per-step decode, timestamped inside generate
            from llava_next_7b import hf_inputs, hf_request, hf_summary

            inputs = hf_inputs(loaded, {"image": synthetic_image()}, DEFAULT_PROMPT, "cpu")
            hf = hf_summary([hf_request(loaded, inputs, 16, "cpu") for _ in range(args.transformers_requests)])
            results["runs"]["transformers_generate"] = {"step_ms": hf["decode_ms_per_token"],
                                                        "steps": hf["decode_step_ms"]["steps"]}
            print("transformers", results["runs"]["transformers_generate"], flush=True)
        schedule = loaded.adapter.schedule(grid, keep_ratio=args.keep_ratio) if args.keep_ratio else Schedule()
        torch_pipeline = load(loaded, schedule=schedule, max_new_tokens=64)
        fill_kv(torch_pipeline)
        results["runs"]["torch"] = time_steps(torch_pipeline, prompt_length, args.steps, args.warmup)
        print("torch", results["runs"]["torch"], flush=True)
        torch_pipeline.close()
        variant = f"-trio{args.keep_ratio}" if args.keep_ratio else ""
        exports = [(f"onnxruntime_{target}", root / f"export-{target}{variant}", target)
                   for target in args.targets.split(",")]
        if args.baseline_dir:
            exports = [(f"before_{target}", Path(args.baseline_dir) / f"export-{target}{variant}", None)
                       for target in args.targets.split(",")] + exports
        for label, out, target in exports:
            if not (out / "manifest.json").exists():
                if target is None:
                    parser.error(f"--baseline-dir: {out} holds no export")
                export(loaded.source, out, max_new_tokens=64, validate=False, progress=False, loaded=loaded,
                       target=target, keep_ratio=args.keep_ratio)
            pipeline = load(out, backend="onnxruntime")
            fill_kv(pipeline)
            graph_times = {}
            for name, session in list(pipeline.backend.sessions.items()):
                graph_times[name] = []
                pipeline.backend.sessions[name] = TimedSession(session, graph_times[name])
            run = time_steps(pipeline, prompt_length, args.steps, args.warmup, graph_times)
            for name, session in list(pipeline.backend.sessions.items()):
                pipeline.backend.sessions[name] = session._session
            segment = pipeline.plan.segments[0]
            past = prompt_length - pipeline.plan.num_image_tokens + segment.image_tokens
            inputs = {"hidden": torch.zeros(1, 1, pipeline.plan.hidden_size),
                      "position_ids": torch.full((1, 1), past), "past_length": torch.tensor(past),
                      **cache_inputs(pipeline.backend.specs[segment.name], pipeline.kv[segment.name])}
            path = out / read_manifest(out, verify_hashes=False).graphs[segment.name].file
            run["profile"] = {segment.name: ort_profile(pipeline, segment.name, path, inputs, args.profile_runs)}
            results["runs"][label] = run
            print(label, json.dumps(run, indent=1), flush=True)
            pipeline.close()
    results["prompt_length"] = prompt_length
    torch_ms = results["runs"]["torch"]["step_ms"]
    results["ratio_torch_over_ort"] = {name: torch_ms / run["step_ms"] for name, run in results["runs"].items()
                                       if name not in ("torch", "transformers_generate")}
    if "transformers_generate" in results["runs"]:  # above 1: faster than transformers' own step
        hf_ms = results["runs"]["transformers_generate"]["step_ms"]
        results["ratio_transformers_over"] = {name: hf_ms / run["step_ms"] for name, run in results["runs"].items()
                                              if name != "transformers_generate"}
    print(f"{'run':<26}{'step ms':>10}{'graphs ms':>11}{'host ms':>9}")
    for name, run in results["runs"].items():
        graphs = sum(run.get("graph_run_ms", {}).values())
        print(f"{name:<26}{run['step_ms']:>10.2f}{graphs:>11.2f}{run.get('host_ms', 0.0):>9.2f}")
    bench.write_results(args.out, results)
    ratios = ("ratio_torch_over_ort", "ratio_transformers_over")
    print(json.dumps({key: results[key] for key in ratios if key in results}))
    return results


if __name__ == "__main__":
    main()
