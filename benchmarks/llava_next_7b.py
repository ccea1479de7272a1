"""LLaVA-NeXT-7B-shaped benchmark: transformers generate vs our unpruned pipeline vs TRIO at 11.1%.

Builds the llava-next-7b architecture (its real config; --model qwen2.5-vl-7b for Qwen2.5-VL) with random weights, exports it, and measures
in one run on one device: (a) transformers `generate` (sdpa, unpruned), (b) our unpruned pipeline,
(c) our TRIO pipeline, for each backend asked for; plus a roofline: TTFT against the compute floor
(analytic FLOPs / measured matmul peak) and decode against the bandwidth floor (bytes per token /
measured copy bandwidth), and a Jetson AGX Orin projection from the same analytic model.

Requests are interleaved: every pipeline (and transformers) stays open and each round gives each one a turn
(--turn-warmup discarded requests, then one measured request per --new-tokens length), so a machine whose speed
drifts during the run weighs on every row alike; medians over the rounds after --warmup. --sequential opens one
backend's pipelines at a time (for a 7B model on one GPU), transformers first.

GPU:  python benchmarks/llava_next_7b.py --device cuda --dtype fp16 --backends torch,torch-eager,onnxruntime \
      --sequential
CPU:  python benchmarks/llava_next_7b.py --scale 0.0625 --layers 4 --vision-layers 2 --new-tokens 8
Prints a table and one final JSON line; --out writes the JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def measured_peaks(device: str, dtype) -> dict:
    """Matmul throughput (model dtype and fp32) and copy bandwidth measured on this device, in this run."""
    n = 4096 if device.startswith("cuda") else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a32, b32 = a.float(), b.float()
    big = torch.empty(256 * 2**20 // a.element_size() if device.startswith("cuda") else 32 * 2**20 // 4,
                      device=device, dtype=dtype if device.startswith("cuda") else torch.float32)
    out = torch.empty_like(big)

    def timed(fn, repeat):
        fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        sync(device)
        return (time.perf_counter() - start) / repeat

    repeat = 20 if device.startswith("cuda") else 3
    matmul_s, fp32_s = timed(lambda: a @ b, repeat), timed(lambda: a32 @ b32, repeat)
    copy_s = timed(lambda: out.copy_(big), 20 if device.startswith("cuda") else 5)
    return {"matmul_tflops": 2 * n**3 / matmul_s / 1e12, "matmul_fp32_tflops": 2 * n**3 / fp32_s / 1e12,
            "copy_gbs": 2 * big.numel() * big.element_size() / copy_s / 1e9}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class StepClock:
    """A transformers LogitsProcessor that timestamps every generated token (it runs once per step, right after
    that step's forward): step i's decode time is stamp[i] - stamp[i-1], TTFT is stamp[0] - start."""

    def __init__(self, device: str):
        self.device, self.stamps = device, []

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


def hf_inputs(loaded, visual: dict, prompt: str, device: str) -> dict:
    """transformers' inputs for the request: `visual` {"image": one or a list} or {"video": a SampledVideo}."""
    grid = loaded.adapter.default_grid()
    inputs = {k: v.to(device) for k, v in loaded.adapter.hf_inputs(visual.get("image"), prompt, grid,
                                                                    video=visual.get("video")).items()}
    for name in ("pixel_values", "pixel_values_videos"):
        if name in inputs:
            inputs[name] = inputs[name].to(loaded.model.dtype)
    return inputs


def request_visual(images: int, video_frames: int) -> dict:
    """What each request shows the model: one synthetic image, `images` different ones, or a synthetic video of
    `video_frames` frames (already decoded, as for images: both sides of the comparison start from pixels)."""
    from trio_edge.cli.bench import synthetic_image
    from trio_edge.exporters.probe_inputs import frames_as_video

    base = synthetic_image()
    pictures = [base.rotate(90 * (i % 4)).transpose(0) if i % 2 else base.rotate(90 * (i % 4))
                for i in range(max(images, video_frames, 1))]
    if video_frames:
        return {"video": frames_as_video(pictures)}
    return {"image": pictures if images > 1 else pictures[0]}


def hf_request(loaded, inputs: dict, new_tokens: int, device: str) -> dict:
    """One transformers `generate` request, greedy, unpruned, every step timed inside generate (StepClock)."""
    from transformers import LogitsProcessorList

    clock = StepClock(device)
    sync(device)
    start = time.perf_counter()
    loaded.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          logits_processor=LogitsProcessorList([clock]))
    sync(device)
    end = time.perf_counter()
    return {"ttft": (clock.stamps[0] - start) * 1e3, "total": (end - start) * 1e3,
            "steps": [(b - a) * 1e3 for a, b in zip(clock.stamps, clock.stamps[1:])]}


def hf_summary(requests: list[dict]) -> dict:
    """Medians of TTFT, of every decode step of every request and of end to end."""
    median = statistics.median
    steps = [step for r in requests for step in r["steps"]]
    return {"ttft_ms": median(r["ttft"] for r in requests), "end_to_end_ms": median(r["total"] for r in requests),
            "decode_ms_per_token": median(steps) if steps else 0.0,
            "decode_step_ms": {"median": median(steps) if steps else 0.0, "steps": len(steps)}}


def turn(one_request, lengths: list[int], warmup: int):
    """One runner's turn in a round: `warmup` discarded requests at the shortest length (caches and allocator
    warm again after the other runners' turns), then one measured request per length -> {length: result}."""
    def run():
        for _ in range(warmup):
            one_request(min(lengths))
        return {n: one_request(n) for n in lengths}
    return run


TRIO_VARIANTS = {"fp32": "trio", "model": "trio_model_precision"}  # select precision -> run name


def our_pipelines(loaded, backend: str, device: str, dtype: str, new_tokens: int, workdir: Path,
                  precisions: tuple[str, ...] = ("fp32",), sparsevlm_budgets: tuple[int, ...] = (),
                  keep_ratio: float = 0.111, preset: str | None = None, peers: tuple[str, ...] = (),
                  images: int = 1, video_frames: int = 0):
    """{"full": ..., "trio": ... (fp32 selection), "trio_model_precision": ..., "sparsevlm_64": ...} for one
    backend; SparseVLM at its authors' table budgets (its own cut layers). `preset`: the TRIO runs take that
    authors' schedule (e.g. trio-qwen: TRIO's Qwen vision stage, then its cut) instead of `keep_ratio`."""
    from trio_edge import Schedule, load
    from trio_edge.exporters.export import export
    from trio_edge.trio.presets import method_for

    variants = {"full": {}}
    budget = {"preset": preset} if preset else {"keep_ratio": keep_ratio}
    variants.update({TRIO_VARIANTS[p]: {**budget, "precision": p} for p in precisions})
    variants.update({f"sparsevlm_{b}": {"method": "sparsevlm", "budget": b} for b in sparsevlm_budgets})
    variants.update({peer: {"method": peer, "keep_ratio": keep_ratio} for peer in peers})  # at its authors' layers
    pipelines = {}
    visual = {"images": images, "video_frames": video_frames}
    items = loaded.adapter.video_items(video_frames) if video_frames else images
    for name, options in variants.items():
        if backend in ("torch", "torch-eager"):  # torch: CUDA graphs on CUDA; torch-eager: never
            schedule = (loaded.adapter.schedule(loaded.adapter.default_grid(), items, **options) if options
                        else Schedule())
            pipelines[name] = load(loaded, schedule=schedule, max_new_tokens=new_tokens, device=device,
                                   method=method_for(options.get("method"), options.get("preset"), "trio"),
                                   cuda_graphs=backend == "torch" and device.startswith("cuda"), **visual)
            continue
        out = workdir / f"{backend}-{name}"
        target = "onnxruntime" if backend == "onnxruntime-gqa" else "tensorrt"
        export(loaded.source, out, dtype=dtype, max_new_tokens=new_tokens, validate=False, progress=False,
               loaded=loaded, target=target, **visual, **options)
        if backend == "tensorrt":  # engines are built from the export, on this GPU
            from trio_edge.exporters.engine_build import build_engines

            build_engines(out, precision=dtype, progress=False)
        pipelines[name] = load(out, backend=backend.removesuffix("-gqa"), device=device)
    return pipelines


def roofline(report: dict, prefill_flops: float, fp32_flops: float, peaks: dict, bytes_per_token: float) -> dict:
    """Floors from the peaks measured in this run, and how close the run came to them."""
    from trio_edge.runtime.roofline import floors

    measured = {"fp16_tflops": peaks["matmul_tflops"], "fp32_tflops": peaks["matmul_fp32_tflops"],
                "bandwidth_gbs": peaks["copy_gbs"]}
    floor = floors(prefill_flops, fp32_flops, bytes_per_token, measured, new_tokens=1)
    return {"ttft_floor_ms": floor["ttft_floor_ms"], "ttft_of_floor": floor["ttft_floor_ms"] / report["ttft_ms"],
            "decode_floor_ms": floor["decode_floor_ms"],
            "decode_of_floor": floor["decode_floor_ms"] / report["decode_ms_per_token"]}


def stage_roofline(report: dict, peaks: dict, fp32_stages: tuple[str, ...]) -> dict:
    """Each prefill stage's median ms against its own compute floor: its analytic FLOPs (models/cost.py) at the
    matmul peak measured in this run (fp32 peak for `fp32_stages`, the model dtype's for the rest). `over_floor`
    = ms / floor_ms: 1.0 runs at the measured matmul peak, so a reader sees where time goes on any machine."""
    rows = {}
    for stage, flops in report["flops"].items():
        if stage not in report["stages"]:
            continue
        tflops = peaks["matmul_fp32_tflops" if stage in fp32_stages else "matmul_tflops"]
        ms, floor_ms = report["stages"][stage]["median_ms"], flops / (tflops * 1e12) * 1e3
        rows[stage] = {"ms": ms, "gflop": flops / 1e9, "floor_ms": floor_ms, "over_floor": ms / floor_ms,
                       "tflops": flops / (ms * 1e9)}
    return rows


def main(argv=None) -> dict:
    from trio_edge.runtime import bench

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava-next-7b",
                        help="the architecture built with random weights: llava-next-7b (default), qwen2.5-vl-7b, ...")
    parser.add_argument("--preset", help="the TRIO runs take this authors' schedule instead of --keep-ratio (e.g. "
                        "trio-qwen: TRIO's Qwen vision stage, then a third after half depth)")
    parser.add_argument("--keep-ratio", type=float, default=0.111,
                        help="TRIO's layer-averaged image-token ratio (default 0.111, the paper's 11.1%%)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16" if torch.cuda.is_available() else "fp32")
    parser.add_argument("--backends", default="torch,onnxruntime",
                        help="comma-separated: torch (CUDA graphs on CUDA), torch-eager, onnxruntime (the tensorrt "
                             "export target run by ONNX Runtime), onnxruntime-gqa (the onnxruntime target), tensorrt")
    bench.add_shape_arguments(parser, scale=1.0, layers=None, vision_layers=None)
    parser.add_argument("--new-tokens", default="64",
                        help="answer lengths, comma-separated (e.g. 8,64): one export, one result per length")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--images", type=int, default=1, help="images per request (default 1; each a different "
                        "synthetic picture), one export taking that many")
    parser.add_argument("--video-frames", type=int, default=0, help="Qwen models: each request is one synthetic "
                        "video of this many frames instead of images")
    parser.add_argument("--warmup", type=int, default=0, help="whole rounds discarded (default 0)")
    parser.add_argument("--select-precision", choices=["fp32", "model", "both"], default="fp32",
                        help="precision of TRIO's select stages (see trio-export --help); both: one TRIO run each")
    parser.add_argument("--peers", default="", help="comma-separated decoder methods also run at --keep-ratio, at "
                        "their authors' cut layers (e.g. dart,fastv)")
    parser.add_argument("--sparsevlm-budgets", default="",
                        help="also SparseVLM at these authors' table budgets, e.g. 64,192 (same run as TRIO)")
    parser.add_argument("--turn-warmup", type=int, default=1,
                        help="discarded requests at the start of each runner's turn in a round (default 1)")
    parser.add_argument("--sequential", action="store_true",
                        help="one backend's pipelines open at a time (less memory: a 7B model on one GPU) instead of "
                             "every pipeline open and requests interleaved across all of them")
    parser.add_argument("--out", help="JSON file to write (e.g. benchmarks/results/h100.json); with several "
                        "--new-tokens, one file per length (NAME_8.json, NAME_64.json)")
    args = parser.parse_args(argv)
    lengths = [int(n) for n in str(args.new_tokens).split(",")]

    from trio_edge.cli.bench import DEFAULT_PROMPT
    from trio_edge.models.cost import decode_bytes_per_token, fp32_prefill_flops
    from trio_edge.models.random_weights import build_random
    from trio_edge.models.registry import load
    from trio_edge.runtime.roofline import DATASHEETS, floors

    if args.device == "cpu":  # as our CPU pipelines do on opening; set first, so transformers' runs get it too
        from trio_edge.runtime.host_memory import keep_freed_host_memory

        keep_freed_host_memory()
    dtype = getattr(torch, {"fp16": "float16", "fp32": "float32"}[args.dtype])
    visual, prompt = request_visual(args.images, args.video_frames), DEFAULT_PROMPT
    command = "python benchmarks/llava_next_7b.py " + " ".join(sys.argv[1:] if argv is None else argv)
    environment = bench.environment(",".join(args.backends.split(",")), args.device)
    peaks = measured_peaks(args.device, dtype)
    by_length = {n: {"command": command, "new_tokens": n, "environment": environment, "peaks": peaks, "runs": {}}
                 for n in lengths}
    with tempfile.TemporaryDirectory(prefix="llava-next-7b-") as tmp:
        source = build_random(args.model, Path(tmp) / "model", dtype=dtype, scale=args.scale, layers=args.layers,
                              vision_layers=args.vision_layers)
        loaded = load(str(source), dtype=dtype, device=args.device)
        items = loaded.adapter.video_items(args.video_frames) if args.video_frames else args.images
        architecture = {"hidden": loaded.adapter.decoder.hidden_size, "layers": loaded.adapter.num_layers,
                        "image_tokens": items * loaded.adapter.image_token_count(loaded.adapter.default_grid()),
                        "images": 0 if args.video_frames else args.images, "video_frames": args.video_frames}
        for results in by_length.values():
            results["architecture"] = architecture
        element = torch.tensor([], dtype=dtype).element_size()
        precisions = ("fp32", "model") if args.select_precision == "both" else (args.select_precision,)
        budgets = tuple(int(b) for b in args.sparsevlm_budgets.split(",") if b.strip())
        peers = tuple(m for m in args.peers.split(",") if m.strip())
        inputs = hf_inputs(loaded, visual, prompt, args.device)
        backends = args.backends.split(",")
        # Interleaved (default): every pipeline of every backend open at once, one request of each per round.
        # --sequential (memory-bound devices): transformers alone first, then one backend's pipelines at a time,
        # interleaved among themselves.
        groups = [[b] for b in backends] if args.sequential else [backends]
        rounds = args.warmup + args.iters
        hf_runner = {"transformers_generate": turn(lambda n: hf_request(loaded, inputs, n, args.device), lengths,
                                                   args.turn_warmup)}
        measured = bench.interleaved_rounds(hf_runner, rounds, label="transformers") if args.sequential else {}
        for index, group in enumerate(groups):
            pipelines = {f"{backend}_{name}": pipeline for backend in group
                         for name, pipeline in our_pipelines(loaded, backend, args.device, args.dtype, max(lengths),
                                                             Path(tmp), precisions, budgets, args.keep_ratio,
                                                             args.preset, peers, args.images,
                                                             args.video_frames).items()}
            runners = {run: turn(lambda n, p=pipeline: bench.request(p, visual.get("image"), prompt, n,
                                                                     video=visual.get("video")),
                                 lengths, args.turn_warmup)
                       for run, pipeline in pipelines.items()}
            if index == 0 and not args.sequential:
                runners = {**hf_runner, **runners}
            measured.update(bench.interleaved_rounds(runners, rounds, label=" + ".join(group)))
            if index == 0:
                for n, results in by_length.items():
                    results["runs"]["transformers_generate"] = hf_summary(
                        [turn_results[n] for turn_results in measured["transformers_generate"][args.warmup:]])
            for run, pipeline in pipelines.items():
                for n, results in by_length.items():
                    report = bench.summarize(pipeline, [r[n] for r in measured[run][args.warmup:]], n)
                    bench.add_flops(report, loaded.model.config, pipeline.plan,
                                    loaded.adapter.tile_count(loaded.adapter.default_grid()))
                    per_token = decode_bytes_per_token(loaded.model.config, pipeline.plan, element,
                                                       report["prompt_tokens"])
                    fp32 = fp32_prefill_flops(loaded.model.config, pipeline.plan,
                                              report["prompt_tokens"] - pipeline.plan.num_image_tokens)
                    prefill = report["flops"]["prefill_total"]
                    report["roofline"] = roofline(report, prefill, fp32, peaks, per_token)
                    report["orin_projection"] = {"label": "projection from datasheet peaks, not measured",
                                                 **floors(prefill, fp32, per_token, DATASHEETS["jetson_agx_orin_64gb"],
                                                          n)}
                    select_ms = sum(v["median_ms"] for k, v in report["stages"].items() if k.startswith("select"))
                    report["select_share_of_ttft"] = select_ms / report["ttft_ms"]
                    report["vision_share_of_ttft"] = report["stages"]["vision"]["median_ms"] / report["ttft_ms"]
                    fp32_stages = tuple(s.name for s in pipeline.plan.selects
                                        if pipeline.plan.schedule.precision == "fp32")
                    report["stage_roofline"] = stage_roofline(report, peaks, fp32_stages)
                    report["select_ms"] = select_ms
                    report["select_floor_ms"] = sum(v["floor_ms"] for k, v in report["stage_roofline"].items()
                                                    if k.startswith("select"))
                    report.pop("timeline")
                    results["runs"][run] = report
                pipeline.close()
    for n, results in by_length.items():
        results["ratios"] = ratios(results["runs"], args.backends.split(","))
        print(f"new tokens: {n}")
        print_table(results)
        if args.out:
            out = Path(args.out)
            path = out if len(lengths) == 1 else out.with_name(f"{out.stem}_{n}{out.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2))
    last = by_length[lengths[-1]]
    print(json.dumps({"ratios": last["ratios"], "peaks": peaks}))
    return last


def ratios(runs: dict, backends: list[str]) -> dict:
    """Per backend and TRIO variant ("onnxruntime", "onnxruntime_model_precision", ...): ratios in this run."""
    hf = runs["transformers_generate"]
    out = {}
    for backend in backends:
        full = runs[f"{backend}_full"]
        variants = list(TRIO_VARIANTS.values()) + [name.removeprefix(f"{backend}_") for name in runs
                                                   if name.startswith(f"{backend}_")
                                                   and name.removeprefix(f"{backend}_") not in ("full", *TRIO_VARIANTS.values())]
        for variant in variants:
            trio = runs.get(f"{backend}_{variant}")
            if trio is None:
                continue
            out[backend + ("_" + variant if not variant.startswith("trio") else variant.removeprefix("trio"))] = {
                "ttft_speedup_vs_full": full["ttft_ms"] / trio["ttft_ms"],
                "end_to_end_speedup_vs_transformers": hf["end_to_end_ms"] / trio["end_to_end_ms"],
                "prefill_flops_reduction": full["flops"]["prefill_total"] / trio["flops"]["prefill_total"],
                "kv_used_reduction": full["kv_used_bytes"] / trio["kv_used_bytes"],
                "decode_speedup_vs_transformers_full": hf["decode_ms_per_token"] / full["decode_ms_per_token"],
                "decode_speedup_vs_transformers_trio": hf["decode_ms_per_token"] / trio["decode_ms_per_token"],
                "select_share_of_trio_ttft": trio.get("select_share_of_ttft"),
                "vision_share_of_trio_ttft": trio.get("vision_share_of_ttft"),
                "vision_ms_trio_over_full": trio["stages"]["vision"]["median_ms"] / full["stages"]["vision"]["median_ms"],
                "trio_ttft_over_floor": trio["ttft_ms"] / trio["roofline"]["ttft_floor_ms"],
                "full_ttft_over_floor": full["ttft_ms"] / full["roofline"]["ttft_floor_ms"],
                "full_ttft_vs_transformers": full["ttft_ms"] / hf["ttft_ms"],
                "decode_of_bandwidth_floor": trio["roofline"]["decode_of_floor"]}
    return out


def print_table(results: dict) -> None:
    peaks = results["peaks"]
    print(f"measured matmul peak {peaks['matmul_tflops']:.3f} TFLOP/s (fp32 {peaks['matmul_fp32_tflops']:.3f}), "
          f"copy {peaks['copy_gbs']:.1f} GB/s")
    print(f"{'run':<26}{'TTFT ms':>10}{'decode ms/tok':>15}{'e2e ms':>10}{'TTFT floor':>12}{'decode floor':>14}")
    for name, run in results["runs"].items():
        floor = run.get("roofline", {})
        print(f"{name:<26}{run['ttft_ms']:>10.1f}{run['decode_ms_per_token']:>15.2f}{run['end_to_end_ms']:>10.1f}"
              f"{floor.get('ttft_floor_ms', float('nan')):>12.2f}{floor.get('decode_floor_ms', float('nan')):>14.3f}")
    print(f"{'run / stage':<30}{'ms':>9}{'GFLOP':>9}{'floor ms':>10}{'x floor':>9}{'TFLOP/s':>9}")
    for name, run in results["runs"].items():
        for stage, row in run.get("stage_roofline", {}).items():
            if stage.startswith(("select", "segment", "vision")):
                print(f"{name + ' ' + stage:<30.30}{row['ms']:>9.1f}{row['gflop']:>9.2f}{row['floor_ms']:>10.1f}"
                      f"{row['over_floor']:>9.2f}{row['tflops']:>9.3f}")
    for backend, values in results["ratios"].items():
        print(f"{backend}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))


if __name__ == "__main__":
    main()
