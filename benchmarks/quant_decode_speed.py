"""ONNX Runtime CPU decode speed of a >= 1B-parameter random-weights model at fp32, int8 and int4, in one run.

The llava-1.5-7b architecture scaled to hidden 2048 and 20 decoder layers (1.14B parameters; 576 image
tokens, so the static KV buffer stays small), random fp32 weights, exported unpruned three times (fp32
weights, int8 and int4 RTN with fp32 activations); each export answers the same request and the median decode
ms/token is measured (bench.measure: warm-up, then timed requests, stop tokens disabled).

python benchmarks/quant_decode_speed.py [--scale 0.5 --layers 20 --new-tokens 16 --iters 2]
"""

from __future__ import annotations

import argparse
import gc
import json
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
    parser.add_argument("--iters", type=int, default=2)
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
    results, started = {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quant-decode-") as tmp:
        model_dir = build_random(args.alias, Path(tmp) / "model", dtype=torch.float32, scale=args.scale,
                                 layers=args.layers, vision_layers=2)
        parameters = sum(p.numel() for p in load(str(model_dir)).model.parameters())
        gc.collect()
        for weights in args.formats.split(","):  # each export loads the model itself: one copy in memory at a time
            out = Path(tmp) / weights
            t0 = time.perf_counter()
            export(str(model_dir), out, weights=None if weights == "fp32" else weights,
                   max_new_tokens=args.new_tokens, validate=False, progress=False)
            gc.collect()
            export_s = time.perf_counter() - t0
            with open_pipeline(out, backend="onnxruntime") as pipeline:
                report = bench.measure(pipeline, image, prompt, warmup=args.warmup, iters=args.iters,
                                       new_tokens=args.new_tokens, progress=False)
                weight_format = pipeline.weight_format
            size = sum(p.stat().st_size for p in out.glob("*.onnx*"))
            results[weights] = {"weights": weight_format, "graph_bytes": size, "export_seconds": export_s,
                                "decode_ms_per_token": report["decode_ms_per_token"],
                                "tokens_per_s": report["tokens_per_s"], "ttft_ms": report["ttft_ms"]}
            print(f"{weights}: {report['decode_ms_per_token']:.1f} ms/token ({report['tokens_per_s']:.2f} tok/s), "
                  f"TTFT {report['ttft_ms']:.0f} ms, graphs {size / 1e9:.2f} GB", flush=True)
            for path in out.glob("*"):
                path.unlink()
            gc.collect()
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
