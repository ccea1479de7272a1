"""ONNX Runtime CPU decode speed of a >= 1B-parameter random-weights model at fp32, int8 and int4, in one run.

The llava-1.5-7b architecture scaled to hidden 2048 and 20 decoder layers (1.14B parameters; 576 image
tokens, so the static KV buffer stays small), random fp32 weights, exported unpruned three times (fp32
weights, int8 and int4 RTN with fp32 activations). All three are opened at once and answer the same request
in interleaved rounds (fp32, int8, int4, fp32, ...), so a shared machine's load falls on each alike; the figure
is the median over rounds of each request's median decode step (bench.measure, stop tokens disabled).

python benchmarks/quant_decode_speed.py [--scale 0.5 --layers 20 --new-tokens 16 --iters 5]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alias", default="llava-1.5-7b")
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--formats", default="fp32,int8,int4")
    parser.add_argument("--out", default="benchmarks/results/quant_decode_speed_cpu.json")
    args = parser.parse_args()

    import torch

    from trio_edge.cli.bench import synthetic_image
    from trio_edge.exporters.export import export
    from trio_edge.models.random_weights import build_random
    from trio_edge.models.registry import load
    from trio_edge.runtime import bench
    from trio_edge.runtime.open import open_pipeline

    prompt = "what is in the picture ?"
    image = synthetic_image()
    formats = args.formats.split(",")
    results, started = {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quant-decode-") as tmp, contextlib.ExitStack() as stack:
        model_dir = build_random(args.alias, Path(tmp) / "model", dtype=torch.float32, scale=args.scale,
                                 layers=args.layers, vision_layers=2)
        parameters = sum(p.numel() for p in load(str(model_dir)).model.parameters())
        gc.collect()
        pipelines = {}
        for weights in formats:  # each export loads the model itself: one copy in memory at a time
            out = Path(tmp) / weights
            t0 = time.perf_counter()
            export(str(model_dir), out, weights=None if weights == "fp32" else weights,
                   max_new_tokens=args.new_tokens, validate=False, progress=False)
            gc.collect()
            results[weights] = {"export_seconds": time.perf_counter() - t0,
                                "graph_bytes": sum(p.stat().st_size for p in out.glob("*.onnx*"))}
        for weights in formats:  # opened after every export, so no export shares memory with open sessions
            pipelines[weights] = stack.enter_context(open_pipeline(Path(tmp) / weights, backend="onnxruntime"))
            results[weights]["weights"] = pipelines[weights].weight_format
        # Interleaved rounds: every format answers once per round, so load on a shared machine hits all alike;
        # each figure is the median over rounds of that round's median decode step.
        rounds = {weights: [] for weights in formats}
        for round_index in range(args.iters):
            for weights in formats:
                report = bench.measure(pipelines[weights], image, prompt, warmup=args.warmup if round_index == 0 else 0,
                                       iters=1, new_tokens=args.new_tokens, progress=False)
                rounds[weights].append(report)
                print(f"round {round_index + 1}/{args.iters} {weights}: {report['decode_ms_per_token']:.1f} ms/token, "
                      f"TTFT {report['ttft_ms']:.0f} ms", flush=True)
        for weights in formats:
            decode = statistics.median(r["decode_ms_per_token"] for r in rounds[weights])
            results[weights].update(decode_ms_per_token=decode, tokens_per_s=1e3 / decode,
                                    decode_ms_per_round=[r["decode_ms_per_token"] for r in rounds[weights]],
                                    ttft_ms=statistics.median(r["ttft_ms"] for r in rounds[weights]))
            print(f"{weights}: {decode:.1f} ms/token ({1e3 / decode:.2f} tok/s), TTFT {results[weights]['ttft_ms']:.0f} "
                  f"ms, graphs {results[weights]['graph_bytes'] / 1e9:.2f} GB", flush=True)
    base = results.get("fp32", {}).get("tokens_per_s")
    for row in results.values():
        row["speedup_vs_fp32"] = row["tokens_per_s"] / base if base else None
    body = {"command": "python benchmarks/quant_decode_speed.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
            "model": f"{args.alias} architecture, hidden scaled by {args.scale}, {args.layers} layers, random weights",
            "parameters": parameters, "environment": bench.environment("onnxruntime", "cpu"),
            "seconds": time.perf_counter() - started, "results": results, "goal": "int4 >= 2.5x fp32 tokens/s"}
    Path(args.out).write_text(json.dumps(body, indent=2))
    print(json.dumps({k: {"tok/s": round(v["tokens_per_s"], 2), "x": round(v["speedup_vs_fp32"] or 0, 2)}
                      for k, v in results.items()}))


if __name__ == "__main__":
    main()
