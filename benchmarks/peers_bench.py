"""Time every exported method against the unpruned export in one run: TTFT and decode on ONNX Runtime CPU.

Exports trio-tiny unpruned and once per method at the layer-averaged budget every method reaches on its
4 layers (1/3; each at its authors' placement, as trio-eval), then measures each export with the same image,
prompt, warm-up and iterations. Prints a table and writes benchmarks/results/peers_bench_trio_tiny.json.

    python benchmarks/peers_bench.py [--iters 20] [--budget 1/3] [--methods trio,fastv,dart,pdrop,visionzip,trio-ve]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch


def main(argv=None) -> int:
    from trio_edge.calibration.evaluate import method_schedule, parse_budgets
    from trio_edge.cli.bench import synthetic_image
    from trio_edge.exporters.export import export
    from trio_edge.models.registry import load
    from trio_edge.runtime.bench import measure
    from trio_edge.runtime.open import open_pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="trio-tiny")
    parser.add_argument("--budget", default="1/3")
    parser.add_argument("--methods", default="trio,fastv,dart,pdrop,visionzip,trio-ve")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/peers_bench_trio_tiny.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = parse_budgets(args.budget)[0]
    loaded = load(args.model)
    adapter = loaded.adapter
    grid = adapter.default_grid()
    image, prompt = synthetic_image(), "what color is the circle?"
    rows = {}
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as tmp:
        plans = {"full": None}
        for method in args.methods.split(","):
            plans[method] = method_schedule(adapter, grid, method, budget)[0]
        for name, schedule in plans.items():
            out = Path(tmp) / name
            cuts = None if schedule is None else schedule.text()  # vision:T first for a vision-tower method
            export(loaded.source, out, cuts=cuts, method=None if name == "full" else name, loaded=loaded,
                   positions=None if schedule is None else schedule.positions, validate=False, progress=False,
                   max_new_tokens=16)
            with open_pipeline(out, backend="onnxruntime", threads=args.threads) as pipeline:
                report = measure(pipeline, image, prompt, warmup=args.warmup, iters=args.iters, new_tokens=8,
                                 progress=False, label=name)
            rows[name] = {"cuts": cuts or "none", "ttft_ms": report["ttft_ms"],
                          "decode_ms_per_token": report["decode_ms_per_token"], "kept": report["kept"],
                          "select_ms": sum(v["median_ms"] for k, v in report["stages"].items() if k.startswith("select"))}
    full = rows["full"]["ttft_ms"]
    print(f"{'method':<10}{'cuts':<20}{'TTFT ms':>9}{'vs full':>9}{'select ms':>11}{'decode ms/tok':>15}")
    for name, row in rows.items():
        row["ttft_speedup_vs_full"] = full / row["ttft_ms"]
        print(f"{name:<10}{row['cuts']:<20}{row['ttft_ms']:>9.2f}{row['ttft_speedup_vs_full']:>8.2f}x"
              f"{row['select_ms']:>11.2f}{row['decode_ms_per_token']:>15.2f}")
    body = {"command": " ".join(["python benchmarks/peers_bench.py", *(sys.argv[1:] if argv is None else argv)]),
            "model": args.model, "budget": budget, "backend": "onnxruntime CPU", "threads": args.threads,
            "iters": args.iters, "rows": rows}
    Path(args.json).write_text(json.dumps(body, indent=2))
    print(json.dumps({name: round(row["ttft_speedup_vs_full"], 3) for name, row in rows.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
