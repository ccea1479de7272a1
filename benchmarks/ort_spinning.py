"""ONNX Runtime's intra-op spinning in the TRIO pipeline: ORT's default, none, and short (the shipped setting,
ort_sessions.SESSION_SETTINGS: at most 200 us after the last task).

Each graph's session has its own intra-op thread pool; with ORT's default spinning its workers keep polling for
work after each run, while the next graph's workers and the host thread (preprocessing, sampling) need the same
cores. Builds the llava-next-7b architecture with random weights (--scale 0.0625: text hidden 256, the narrow
shape of the README; 2,928 image tokens), exports it with TRIO at 11.1% (fp32; --target, --keep-ratio 0 for
unpruned), opens it once per setting on ONNX Runtime CPU and alternates requests between them, so the machine's
drift falls on all. Reports median TTFT, decode step (every step of every request) and end-to-end, and each
prefill stage's median.

python benchmarks/ort_spinning.py --out benchmarks/results/ort_spinning_cpu.json
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

# session config entries of each setting; "spinning_short": workers spin at most 200 us after their last task
SPINNING = {"spinning_on": {"session.intra_op.allow_spinning": "1"},
            "spinning_off": {"session.intra_op.allow_spinning": "0"},
            "spinning_short": {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": "200"}}


def spinning_options(ort, threads, low_memory, entries: dict):
    """The backend's session options with its own spinning settings replaced by `entries` (without them, the
    shipped ones would stay under every setting)."""
    from trio_edge.runtime.backends import ort_sessions

    settings = {k: v for k, v in ort_sessions.SESSION_SETTINGS.items() if not k.startswith("session.intra_op.")}
    return ort_sessions.session_options(ort, threads, low_memory, settings={**settings, **entries})


def open_with_spinning(export_dir: Path, entries: dict):
    """The export on ONNX Runtime CPU with the session config `entries` in every session."""
    from trio_edge.runtime.backends import onnxruntime_backend
    from trio_edge.runtime.open import open_export

    chosen = onnxruntime_backend.session_options
    onnxruntime_backend.session_options = lambda ort, threads, low_memory=False: spinning_options(
        ort, threads, low_memory, entries)  # read while the backend opens its sessions, at load
    try:
        return open_export(export_dir, backend="onnxruntime", device="cpu", ort_cache=False)
    finally:
        onnxruntime_backend.session_options = chosen


def main(argv=None) -> dict:
    from trio_edge.runtime import bench

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_shape_arguments(parser, scale=0.0625, layers=4, vision_layers=2)
    parser.add_argument("--target", default="tensorrt", choices=("tensorrt", "onnxruntime"), help="export target")
    parser.add_argument("--keep-ratio", type=float, default=0.111, help="TRIO's layer-averaged budget; 0: unpruned")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--iters", type=int, default=6, help="requests per setting, alternating")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", help="JSON file to write (e.g. benchmarks/results/ort_spinning_cpu.json)")
    args = parser.parse_args(argv)

    import torch

    from trio_edge.cli.bench import DEFAULT_PROMPT, synthetic_image
    from trio_edge.exporters.export import export
    from trio_edge.models.random_weights import build_random
    from trio_edge.models.registry import load as load_model

    image, prompt = synthetic_image(), DEFAULT_PROMPT
    results = {"command": "python benchmarks/ort_spinning.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "environment": bench.environment("onnxruntime", "cpu"), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="ort-spinning-") as tmp:
        source = build_random("llava-next-7b", Path(tmp) / "model", dtype=torch.float32, scale=args.scale,
                              layers=args.layers, vision_layers=args.vision_layers)
        loaded = load_model(str(source), dtype=torch.float32)
        out = Path(tmp) / "export"
        export(loaded.source, out, keep_ratio=args.keep_ratio or None, target=args.target,
               max_new_tokens=args.new_tokens, validate=False, progress=False, loaded=loaded)
        pipelines = {name: open_with_spinning(out, entries) for name, entries in SPINNING.items()}
        for pipeline in pipelines.values():
            for _ in range(args.warmup):
                pipeline.generate(image, prompt, max_new_tokens=args.new_tokens)
        samples = {name: {"ttft": [], "decode_step": [], "end_to_end": [], "stages": {}} for name in pipelines}
        answers = {}
        for request in range(args.iters):  # ABC CBA ...: the machine's drift lands on every setting
            for name in (list(SPINNING) if request % 2 == 0 else list(SPINNING)[::-1]):
                start = time.perf_counter()
                result = pipelines[name].generate(image, prompt, max_new_tokens=args.new_tokens)
                taken = samples[name]
                taken["end_to_end"].append((time.perf_counter() - start) * 1e3)
                taken["ttft"].append(result.timings["ttft"])
                taken["decode_step"] += [ms for stage, _, ms in result.timeline if stage == "decode"]
                for stage, _, ms in result.timeline:
                    if stage != "decode":
                        taken["stages"].setdefault(stage, []).append(ms)
                answers[name] = (result.token_ids, result.kept)
        for pipeline in pipelines.values():
            pipeline.close()
    if any(answer != answers["spinning_on"] for answer in answers.values()):
        raise SystemExit("the settings answered differently: a thread setting must not change results")
    for name, taken in samples.items():
        results["runs"][name] = {
            "ttft_ms": statistics.median(taken["ttft"]),
            "decode_step_ms": {"median": statistics.median(taken["decode_step"]),
                               "p90": bench.percentile(taken["decode_step"], 0.9), "steps": len(taken["decode_step"])},
            "end_to_end_ms": statistics.median(taken["end_to_end"]),
            "stages_ms": {stage: statistics.median(ms) for stage, ms in taken["stages"].items()}}
    on = results["runs"]["spinning_on"]
    results["speedup_vs_spinning_on"] = {
        name: {"ttft": on["ttft_ms"] / run["ttft_ms"],
               "decode_step": on["decode_step_ms"]["median"] / run["decode_step_ms"]["median"],
               "end_to_end": on["end_to_end_ms"] / run["end_to_end_ms"]}
        for name, run in results["runs"].items() if name != "spinning_on"}
    print(f"{'run':<14}{'TTFT ms':>10}{'decode ms/step':>16}{'end-to-end ms':>15}  stages (median ms)")
    for name, run in results["runs"].items():
        stages = ", ".join(f"{stage} {ms:.0f}" for stage, ms in run["stages_ms"].items())
        print(f"{name:<14}{run['ttft_ms']:>10.1f}{run['decode_step_ms']['median']:>16.2f}"
              f"{run['end_to_end_ms']:>15.1f}  {stages}")
    for name, speedup in results["speedup_vs_spinning_on"].items():
        print(f"{name} vs spinning_on: " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    bench.write_results(args.out, results)
    print(json.dumps({"speedup_vs_spinning_on": results["speedup_vs_spinning_on"]}))
    return results


if __name__ == "__main__":
    main()
