"""Benchmark a pipeline: per-stage median/p90, TTFT, decode ms/token, memory, KV bytes, analytic FLOPs.

Stop tokens are disabled while measuring so every run decodes exactly `new_tokens` tokens.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
from pathlib import Path
from typing import NamedTuple

import torch


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def counted(count: int, progress: bool, label: str, unit: str):
    """range(count), behind a transient progress bar labelled "bench LABEL" when `progress`."""
    if not progress:
        return range(count)
    from tqdm.auto import tqdm

    return tqdm(range(count), desc=f"bench {label}".strip(), unit=unit, leave=False)


def measure(pipeline, image, prompt: str, *, warmup: int, iters: int, new_tokens: int, progress: bool = True,
            label: str = "", video=None) -> dict:
    """`warmup` + `iters` requests one after the other; the report summarises the last `iters` (summarize)."""
    loop = counted(warmup + iters, progress, label, "run")
    results = [request(pipeline, image, prompt, new_tokens, video=video) for _ in loop]
    return summarize(pipeline, results[warmup:], new_tokens)


class TimedRequest(NamedTuple):
    result: object  # the pipeline's GenerationResult: its timings and timeline
    peak_device_bytes: int | None  # torch's peak CUDA allocation during this request (None on CPU)


def request(pipeline, image, prompt: str, new_tokens: int, video=None) -> TimedRequest:
    """One timed request decoding exactly `new_tokens` tokens (stop tokens disabled for the call). Benchmarks
    that compare several pipelines call this in interleaved rounds, so a machine whose speed drifts over minutes
    weighs on every pipeline alike; the CUDA peak is taken per request so it stays this pipeline's own."""
    cuda = pipeline.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(pipeline.device)
    stops, pipeline.stop_token_ids = pipeline.stop_token_ids, set()
    try:
        result = pipeline.generate(image, prompt, max_new_tokens=new_tokens, video=video)
    finally:
        pipeline.stop_token_ids = stops
    return TimedRequest(result, torch.cuda.max_memory_allocated(pipeline.device) if cuda else None)


def interleaved_rounds(runners: dict, rounds: int, progress: bool = True, label: str = "") -> dict:
    """Call every runner (name -> zero-argument callable) once per round, each round starting one runner later
    than the last, and return name -> the results of its calls in order. Drift in the machine's speed over a long
    run (other tenants, clocks) then lands on every runner alike, so ratios between them hold."""
    names = list(runners)
    results = {name: [] for name in names}
    for index in counted(rounds, progress, label, "round"):
        for offset in range(len(names)):
            name = names[(index + offset) % len(names)]
            results[name].append(runners[name]())
    return results


def summarize(pipeline, results: list[TimedRequest], new_tokens: int) -> dict:
    """Per-stage median and p90 over `results` (requests of `pipeline`), the median of every decode step of
    every request, and the plan's KV bytes, peak memory and the last request's timeline."""
    runs = [r.result.timings for r in results]
    steps = [duration for r in results for name, _, duration in r.result.timeline if name == "decode"]
    last = results[-1].result
    stages = {key: {"median_ms": statistics.median(r[key] for r in runs), "p90_ms": percentile([r[key] for r in runs], 0.9)}
              for key in runs[0]}
    # every decode step of every measured request: the median step, not a mean per request
    decode_ms = statistics.median(steps) if steps else stages["decode_ms_per_token"]["median_ms"]
    element = torch.tensor([], dtype=pipeline.dtype).element_size()
    report = {
        "stages": stages,
        "ttft_ms": stages["ttft"]["median_ms"],
        "decode_ms_per_token": decode_ms,
        "decode_step_ms": {"median": decode_ms, "p90": percentile(steps, 0.9) if steps else decode_ms,
                           "steps": len(steps)},
        "tokens_per_s": 1e3 / decode_ms if decode_ms > 0 else None,
        "end_to_end_ms": stages["total"]["median_ms"],
        "new_tokens": new_tokens,
        "prompt_tokens": last.prompt_tokens,
        "kept": [len(k) for k in last.kept],
        "image_tokens": pipeline.plan.num_image_tokens,  # after a vision stage (VisionZip), fewer than the model's
        "kv_buffer_bytes": pipeline.plan.kv_bytes(element),
        "kv_used_bytes": kv_used_bytes(pipeline.plan, last.prompt_tokens, new_tokens, element),
        "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "timeline": last.timeline,
    }
    if pipeline.device.type == "cuda":
        report["peak_device_bytes_torch"] = max(r.peak_device_bytes for r in results)
    return report


def kv_used_bytes(plan, prompt_tokens: int, new_tokens: int, element: int) -> int:
    """KV entries actually written for one request: each group's own sequence length."""
    text = prompt_tokens - plan.num_image_tokens
    per_token = 2 * plan.num_kv_heads * plan.head_dim * element
    return sum((s.end - s.start) * (text + s.image_tokens + new_tokens) * per_token for s in plan.segments)


def add_flops(report: dict, config, plan, tiles: int) -> None:
    from ..models.cost import stage_flops

    report["flops"] = stage_flops(config, plan, report["prompt_tokens"], tiles)


def compare(pruned: dict, full: dict) -> dict:
    """Ratios measured in the same run (full / pruned): > 1 means the pruned pipeline is better."""
    return {
        "ttft_speedup": full["ttft_ms"] / pruned["ttft_ms"],
        "end_to_end_speedup": full["end_to_end_ms"] / pruned["end_to_end_ms"],
        "decode_speedup": full["decode_ms_per_token"] / pruned["decode_ms_per_token"],
        "prefill_flops_reduction": full["flops"]["prefill_total"] / pruned["flops"]["prefill_total"],
        "kv_used_reduction": full["kv_used_bytes"] / pruned["kv_used_bytes"],
        "kv_buffer_reduction": full["kv_buffer_bytes"] / pruned["kv_buffer_bytes"],
    }


def environment(backend: str, device: str) -> dict:
    from ..artifact.manifest import library_versions
    from .host_memory import keeping_allowed

    kept = device == "cpu" and keeping_allowed()  # what CPU pipelines do on opening (unless low-memory)
    env = {"backend": backend, "device": device, "platform": platform.platform(), "python": platform.python_version(),
           **library_versions(), "freed_host_memory": "kept (CPU pipelines unless low-memory)" if kept
           else "returned to the system"}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


# table labels of stages whose JSON key reads ambiguously beside the summary's median decode step
STAGE_LABELS = {"decode_ms_per_token": "decode/token (req mean)"}


def format_report(report: dict, title: str) -> str:
    kept = report["kept"] or (f"all {report['image_tokens']} image tokens" if "image_tokens" in report else "all")
    lines = [f"== {title}: prompt {report['prompt_tokens']} tokens, kept {kept}",
             f"{'stage':<24}{'median ms':>11}{'p90 ms':>10}{'GFLOP':>10}"]
    flops = report.get("flops", {})
    for name, stats in report["stages"].items():
        gflop = flops.get(name)
        label = STAGE_LABELS.get(name, name)
        lines.append(f"{label:<24}{stats['median_ms']:>11.2f}{stats['p90_ms']:>10.2f}"
                     f"{'' if gflop is None else f'{gflop / 1e9:>10.2f}'}")
    lines.append(f"TTFT {report['ttft_ms']:.2f} ms, decode {report['decode_ms_per_token']:.2f} ms/token (median step) "
                 f"({report['tokens_per_s']:.1f} tok/s), end-to-end {report['end_to_end_ms']:.1f} ms for "
                 f"{report['new_tokens']} tokens")
    lines.append(f"KV buffers {report['kv_buffer_bytes'] / 2**20:.1f} MiB allocated, "
                 f"{report['kv_used_bytes'] / 2**20:.1f} MiB used; peak host RSS of the process so far "
                 f"{report['peak_host_rss_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)


def add_shape_arguments(parser, *, scale: float | None, layers: int | None, vision_layers: int | None) -> None:
    """--scale / --layers / --vision-layers: the random-weights architecture a benchmark builds
    (models.random_weights.build_random: widths times scale, decoder and vision layer counts; None = the alias's)."""
    parser.add_argument("--scale", type=float, default=scale, help=f"width scale of the architecture (default {scale})")
    parser.add_argument("--layers", type=int, default=layers, help=f"decoder layers (default {layers or 'all'})")
    parser.add_argument("--vision-layers", type=int, default=vision_layers,
                        help=f"vision tower layers (default {vision_layers or 'all'})")


def write_results(path: str | Path | None, results: dict) -> None:
    """A benchmark's JSON (indented, folders made); nothing when `path` is None (no --out given)."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2) + "\n")


def write_chrome_trace(report: dict, path: str | Path) -> None:
    """The last measured request as a Chrome/Perfetto trace (one track)."""
    events = [{"name": name, "ph": "X", "ts": start * 1e3, "dur": dur * 1e3, "pid": 1, "tid": 1}
              for name, start, dur in report["timeline"]]
    Path(path).write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))


def write_timeline_png(reports: dict[str, dict], path: str | Path) -> None:
    """A stage timeline per pipeline (one row each) and a legend of colour swatches, drawn with PIL so no
    plotting library is needed. Every stage gets its own colour (hues spread by the golden ratio)."""
    import colorsys

    from PIL import Image, ImageDraw

    width, row, left, swatch = 1200, 60, 160, 14
    span = max(max(s + d for _, s, d in r["timeline"]) for r in reports.values())
    names = list(dict.fromkeys(name for r in reports.values() for name, _, _ in r["timeline"]))
    colours = {name: tuple(int(255 * c) for c in colorsys.hsv_to_rgb((0.13 + i * 0.618034) % 1.0, 0.65, 0.9))
               for i, name in enumerate(names)}
    per_line = (width - 10) // 200
    legend_top = 20 + row * len(reports)
    image = Image.new("RGB", (width, legend_top + 20 * -(-len(names) // per_line) + 10), "white")
    draw = ImageDraw.Draw(image)
    for index, (label, report) in enumerate(reports.items()):
        top = 20 + index * row
        draw.text((5, top + 20), label, fill="black")
        for name, start, dur in report["timeline"]:
            x0 = left + start / span * (width - left - 10)
            x1 = max(x0 + 1, left + (start + dur) / span * (width - left - 10))
            draw.rectangle([x0, top + 5, x1, top + row - 15], fill=colours[name])
    draw.text((left, 2), f"0 .. {span:.1f} ms", fill="black")
    for index, name in enumerate(names):
        x, y = 5 + (index % per_line) * 200, legend_top + (index // per_line) * 20
        draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=colours[name])
        draw.text((x + swatch + 6, y + 3), name, fill="black")
    image.save(path)
