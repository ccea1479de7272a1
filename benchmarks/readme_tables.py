"""Markdown tables for docs/results.md from benchmarks/results/*.json (python benchmarks/readme_tables.py; with\n--several-images: the table of benchmarks/several_images.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def bench_table(path: Path) -> str:
    body = json.loads(path.read_text())
    env = body["environment"]
    device = env.get("gpu") or f"CPU ({env.get('cpu')})"
    arch = body.get("architecture", {})
    lines = [f"`{body['command']}` on {device}, torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}; "
             f"architecture: hidden {arch.get('hidden')}, {arch.get('layers')} layers, {arch.get('image_tokens')} image tokens; "
             f"measured peaks {body['peaks']['matmul_tflops']:.3f} TFLOP/s matmul, {body['peaks']['copy_gbs']:.1f} GB/s copy",
             "",
             "| run | TTFT ms | decode ms/token | end-to-end ms | prefill GFLOP | KV used MiB | TTFT / compute floor | decode / bandwidth floor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in body["runs"].items():
        lines.append("| " + " | ".join([name] + [_cell(v, f) for v, f in _row_values(run)]) + " |")
    lines.append("")
    for backend, ratios in body["ratios"].items():
        lines.append(f"- {backend}: TTFT speedup TRIO vs our full {ratios['ttft_speedup_vs_full']:.2f}x, end-to-end vs "
                     f"transformers generate {ratios['end_to_end_speedup_vs_transformers']:.2f}x, prefill FLOPs "
                     f"{ratios['prefill_flops_reduction']:.2f}x fewer, KV {ratios['kv_used_reduction']:.2f}x smaller")
    return "\n".join(lines)


def kv_capacity_table(path: Path) -> str:
    """The table of benchmarks/kv_capacity.py: decode step at two KV capacities, same prompt."""
    body = json.loads(path.read_text())
    lines = [f"`{body['command']}`", "", "| run | KV slots | decode ms/step (median) | p90 |", "|---|---:|---:|---:|"]
    for name, run in body["runs"].items():
        step = run["decode_step_ms"]
        lines.append(f"| {name} | {run['kv_slots']} | {step['median']:.2f} | {step['p90']:.2f} |")
    lines.append("")
    lines += [f"- {backend}: large / small capacity {ratio:.2f}x" for backend, ratio in body["ratios"].items()]
    return "\n".join(lines)


def decode_step_table(path: Path) -> str:
    """The table of benchmarks/decode_step.py: one decode step, graph run vs host work, and the top ONNX Runtime
    operator types of the segment graph (ONNX Runtime's profiler)."""
    body = json.loads(path.read_text())
    lines = [f"`{body['command']}` (prompt {body['prompt_length']} tokens, every KV group filled to it)", "",
             "| run | step ms (median) | graphs ms | host ms | top operators, ms per run (profiler) |",
             "|---|---:|---:|---:|---|"]
    for name, run in body["runs"].items():
        graphs = sum(run.get("graph_run_ms", {}).values())
        profile = next(iter(run.get("profile", {}).values()), {})
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(profile.get("ms_per_run_by_op", {}).items())[:4])
        lines.append(f"| {name} | {run['step_ms']:.2f} | {_cell(graphs or None, '.2f')} | "
                     f"{_cell(run.get('host_ms'), '.2f')} | {top} |")
    return "\n".join(lines)


# The configurations of benchmarks/several_images.sh, in its order
SEVERAL_IMAGES = ["llava1", "llava4", "qwen1", "qwen4", "qwenvideo", "qwen3_1", "qwen3_4", "qwen3video"]


def several_images_table() -> str:
    """One row per configuration of benchmarks/several_images.sh (each its own run: ratios within a row)."""
    lines = ["| configuration | visual tokens | matmul peak TFLOP/s | TTFT ms: transformers / unpruned / TRIO 11.1% | "
             "TTFT + 64 tokens ms: same | TRIO TTFT gain vs unpruned | TRIO + 64 vs transformers | KV MiB: unpruned -> "
             "TRIO | process peak RSS GiB |", "|---|---:|---:|---|---|---:|---:|---|---:|"]
    for config in SEVERAL_IMAGES:
        path = RESULTS / f"several_images_{config}_cpu_wide_64.json"
        if not path.is_file():
            continue
        body = json.loads(path.read_text())
        arch, (ratios,) = body["architecture"], body["ratios"].values()
        tf, full, trio = (body["runs"][name] for name in sorted(body["runs"], key=_run_order))
        what = (f"{arch['video_frames']}-frame video" if arch.get("video_frames") else
                f"{arch.get('images', 1)} image{'s' if arch.get('images', 1) > 1 else ''}")
        lines.append(
            f"| {_model(body['command'])}, {what} | {arch['image_tokens']} | {body['peaks']['matmul_tflops']:.3f} | "
            f"{tf['ttft_ms']:.0f} / {full['ttft_ms']:.0f} / {trio['ttft_ms']:.0f} | "
            f"{tf['end_to_end_ms']:.0f} / {full['end_to_end_ms']:.0f} / {trio['end_to_end_ms']:.0f} | "
            f"**{ratios['ttft_speedup_vs_full']:.2f}x** | {ratios['end_to_end_speedup_vs_transformers']:.2f}x | "
            f"{full['kv_used_bytes'] / 2**20:.1f} -> {trio['kv_used_bytes'] / 2**20:.1f} | "
            f"{trio['peak_host_rss_bytes'] / 2**30:.2f} |")
    return "\n".join(lines)


def _model(command: str) -> str:
    words = command.split()
    return words[words.index("--model") + 1] if "--model" in words else "llava-next-7b"


def _run_order(name: str) -> int:
    return 0 if name.startswith("transformers") else 1 if name.endswith("_full") else 2


def _row_values(run: dict):
    roof = run.get("roofline") or {}
    flops = run.get("flops", {}).get("prefill_total")
    kv = run.get("kv_used_bytes")
    return [(run["ttft_ms"], ".1f"), (run["decode_ms_per_token"], ".2f"), (run["end_to_end_ms"], ".1f"),
            (None if flops is None else flops / 1e9, ".1f"), (None if kv is None else kv / 2**20, ".1f"),
            (roof.get("ttft_of_floor"), ".2f"), (roof.get("decode_of_floor"), ".2f")]


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def main() -> None:
    if sys.argv[1:] == ["--several-images"]:
        print(several_images_table())
        return
    names = sys.argv[1:] or sorted(p.name for p in RESULTS.glob("*.json") if "runs" in json.loads(p.read_text()))
    for name in names:
        body = json.loads((RESULTS / name).read_text())
        if "peaks" in body:
            print(bench_table(RESULTS / name))
        elif "ratio_torch_over_ort" in body:
            print(decode_step_table(RESULTS / name))
        elif "ratios" in body and all("kv_slots" in run for run in body["runs"].values()):
            print(kv_capacity_table(RESULTS / name))
        else:
            continue
        print()


if __name__ == "__main__":
    main()
