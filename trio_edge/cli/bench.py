"""trio-bench DIR_OR_MODEL: profile the pipeline stage by stage on this device.

DIR_OR_MODEL is an export directory, or a model (alias / Hugging Face id / directory) which is exported
on the fly (ONNX backends) or run in PyTorch (torch backend). --random-weights builds an alias's real
architecture with random weights, so a target can be profiled without downloading weights.
Prints per-stage median/p90 ms and GFLOPs, TTFT, decode ms/token, KV bytes, peak memory; --compare-full
measures the unpruned pipeline in the same run and prints the ratios. Without a schedule option nothing is
pruned (as in trio-export): pass e.g. --keep-ratio 0.111 for TRIO at 11.1%.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from .. import defaults
from ..errors import InputError
from .common import (
    CliParser,
    add_device_options,
    add_quiet_option,
    add_schedule_options,
    add_visual_options,
    at_least,
    check_output_paths,
    cli_entry,
    command_line,
    make_parents,
    positive_number,
    schedule_options,
    visual_options,
)

DEFAULT_PROMPT = ("describe this picture in detail : which objects are there , what color and shape is each "
                  "object , where is it , how many objects are there and which one is bigger ? please answer "
                  "with short words and compare the left and right objects")


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="trio-bench", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="export directory, or alias / Hugging Face id / model directory")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the alias's architecture with random weights")
    parser.add_argument("--scale", type=positive_number,
                        help="with --random-weights: width scale (default 1; CPU runs)")
    parser.add_argument("--layers", type=at_least(1),
                        help="with --random-weights: decoder layers (default: the real count)")
    parser.add_argument("--vision-layers", type=at_least(1), help="with --random-weights: vision layers")
    add_device_options(parser)
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default=defaults.DTYPE,
                        help="for models exported on the fly")
    add_schedule_options(parser)
    parser.add_argument("--compare-full", action="store_true", help="also measure the unpruned pipeline")
    parser.add_argument("--warmup", type=at_least(0), default=2, help="unmeasured requests first (default 2)")
    parser.add_argument("--iters", type=at_least(1), default=5, help="measured requests (default 5)")
    parser.add_argument("--new-tokens", type=at_least(1), default=32, help="tokens per answer (default 32)")
    add_visual_options(parser.add_argument_group("what a request shows the model (a model; an export fixed it)"))
    visual = parser.add_mutually_exclusive_group()
    visual.add_argument("--image", action="append", help="image file (default: synthetic images, as many as the "
                        "export takes); repeat it for an export that takes several")
    visual.add_argument("--video", help="video file for an export made with --video-frames (default: a synthetic "
                        "clip)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--json", dest="json_path", help="write the results as JSON here (stdout's last line is "
                                                         "always a JSON summary)")
    parser.add_argument("--trace", help="write a Chrome/Perfetto trace of the last pruned request here")
    parser.add_argument("--plot", help="write a PNG stage timeline here")
    add_quiet_option(parser)
    return parser


def synthetic_image(seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))


def request_inputs(pipeline, images: list[str] | None, video: str | None) -> dict:
    """generate()'s visual arguments for the pipeline's plan: the given files, decoded once here as images are (so
    that no measured request decodes them), else synthetic images (as many as it takes) or a synthetic clip (every
    frame sampled, 2 fps)."""
    from ..exporters.probe_inputs import frames_as_video
    from ..models.preprocess import load_image

    plan = pipeline.plan
    if plan.video_frames:
        if images:
            raise InputError(f"this pipeline takes a video ({plan.video_frames} frames): pass --video, not --image")
        if video:
            return {"video": pipeline.io.load_video(video, plan.video_frames, plan.grid)}
        return {"video": frames_as_video([synthetic_image(i) for i in range(plan.video_frames)])}
    if video:
        raise InputError("this pipeline takes images, not a video: pass --image (or export with --video-frames)")
    pictures = [load_image(path) for path in images] if images else [synthetic_image(i) for i in range(plan.images)]
    if len(pictures) != plan.images:
        raise InputError(f"this pipeline takes {plan.images} images per request; pass --image {plan.images} times")
    return {"image": pictures if plan.images > 1 else pictures[0]}


def pipelines_for(args, workdir: Path):
    """(measured pipeline, unpruned pipeline or None, model config, tiles)."""
    from ..artifact.manifest import is_export_dir, read_manifest
    from ..runtime.open import open_pipeline

    devices = dict(backend=args.backend, device=args.device, cuda_graphs=args.cuda_graphs, low_memory=args.low_memory)
    random_only = [flag for flag, value in (("--scale", args.scale), ("--layers", args.layers),
                                            ("--vision-layers", args.vision_layers)) if value is not None]
    if random_only and not args.random_weights:
        raise InputError(f"{', '.join(random_only)} shape the random-weights model: add --random-weights (with an "
                         "alias such as llava-next-7b) or drop them")
    if is_export_dir(args.model):
        manifest = read_manifest(args.model, verify_hashes=False)
        if args.compare_full and not manifest.plan.schedule.pruning:
            raise InputError(f"{args.model} is unpruned already: --compare-full measures an export against the "
                             "unpruned one; drop it, or pass a pruned export")
        # schedule options are the export's: open_pipeline refuses them with one line
        pruned = open_pipeline(args.model, **devices, method=args.method, **schedule_options(args),
                               **visual_options(args))
        full = None
        if args.compare_full:
            full = open_pipeline(_export_full_like(manifest, workdir / "full", progress=not args.quiet), **devices)
        return pruned, full, pruned.io.config, manifest.io.tile_count
    source = args.model
    if args.random_weights:
        from ..models.random_weights import build_random

        source = str(build_random(args.model, workdir / "model", scale=args.scale or 1.0, layers=args.layers,
                                  vision_layers=args.vision_layers))
    return _pipelines_for_model(args, source, workdir, devices)


def _pipelines_for_model(args, source: str, workdir: Path, devices: dict):
    from ..artifact.dtypes import TORCH_DTYPES, export_dtype
    from ..exporters.export import export
    from ..models.registry import load
    from ..runtime.open import open_pipeline
    from ..trio.schedule import Schedule

    loaded = load(source, dtype=TORCH_DTYPES[export_dtype(args.dtype)])
    adapter = loaded.adapter
    tiles = adapter.tile_count(adapter.default_grid())
    options, method = schedule_options(args), args.method
    visual = {k: v for k, v in visual_options(args).items() if v is not None}
    if args.backend in (None, "torch"):  # the loaded model itself, no export
        if args.low_memory:
            raise InputError("--low-memory applies to the onnxruntime backend; add --backend onnxruntime")
        common = dict(max_new_tokens=args.new_tokens, device=args.device, cuda_graphs=args.cuda_graphs, **visual)
        pruned = open_pipeline(loaded, method=method, **options, **common)
        full = open_pipeline(loaded, schedule=Schedule(), **common) if args.compare_full else None
        return pruned, full, loaded.model.config, tiles
    common = dict(dtype=args.dtype, max_new_tokens=max(args.new_tokens, 1), validate=False,
                  progress=not args.quiet, loaded=loaded, **visual)
    export(source, workdir / "pruned", method=method, **common, **options)
    pruned = open_pipeline(workdir / "pruned", **devices)
    full = None
    if args.compare_full:
        export(source, workdir / "full", **common)
        full = open_pipeline(workdir / "full", **devices)
    return pruned, full, loaded.model.config, tiles


def _export_full_like(manifest, directory: Path, progress: bool) -> Path:
    """The unpruned export of the same model, grid, dtype, maxima, target and weights as `manifest`'s."""
    from ..exporters.export import export

    plan, quantization = manifest.plan, manifest.quantization
    same_weights = {}
    if quantization is not None:  # the same weight quantization, so the comparison is of pruning alone
        same_weights = dict(weights=quantization.format, block_size=quantization.block_size,
                            quant_method=quantization.method, quantize_lm_head=quantization.lm_head,
                            quantize_vision=quantization.vision,
                            calibration_data=(quantization.calibration or {}).get("data"))
    export(manifest.model.source, directory, grid=f"{plan.grid[0]}x{plan.grid[1]}",
           target=manifest.target or "tensorrt", dtype="fp16" if manifest.model.dtype == "float16" else "fp32",
           max_text_tokens=plan.max_text_tokens, max_new_tokens=plan.max_new_tokens, validate=False,
           progress=progress, images=max(plan.images, 1), video_frames=plan.video_frames, **same_weights)
    return directory


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_output_paths(json=args.json_path, trace=args.trace, plot=args.plot)
    from ..artifact.manifest import is_export_dir
    from ..runtime import bench

    with tempfile.TemporaryDirectory(prefix="trio-bench-") as tmp:
        pruned, full, config, tiles = pipelines_for(args, Path(tmp))
        visual = request_inputs(pruned, args.image, args.video)
        pipelines = {"pruned" if pruned.plan.schedule.pruning else "full": pruned}
        if full is not None:
            pipelines["full"] = full
        measure = dict(warmup=args.warmup, iters=args.iters, new_tokens=args.new_tokens, progress=not args.quiet)
        reports, backend = {}, pruned.backend.name
        for name, pipeline in pipelines.items():
            with pipeline:
                reports[name] = bench.measure(pipeline, visual.get("image"), args.prompt, label=name,
                                              video=visual.get("video"), **measure)
                bench.add_flops(reports[name], config, pipeline.plan, tiles)
    result = {"environment": bench.environment(backend, args.device), "command": command_line("trio-bench", argv),
              "schedule": pruned.plan.describe(),
              "weights": pruned.weight_format, "results": reports}
    print(f"weights: {pruned.weight_format}")
    for name, report in reports.items():
        print(bench.format_report(report, name))
    if "pruned" in reports and "full" in reports:
        result["ratios"] = bench.compare(reports["pruned"], reports["full"])
        print("ratios (full / pruned, same run): " + ", ".join(f"{k} {v:.2f}x" for k, v in result["ratios"].items()))
    if is_export_dir(args.model):  # weights + KV of this export against each Jetson Orin module
        from ..artifact.manifest import read_manifest
        from ..runtime.roofline import format_orin_fit, orin_fit_for_export

        result["orin_fit"] = orin_fit_for_export(read_manifest(args.model, verify_hashes=False))
        print(format_orin_fit(result["orin_fit"], pruned.weight_format))
    make_parents(args.trace, args.plot, args.json_path)
    if args.trace:
        bench.write_chrome_trace(next(iter(reports.values())), args.trace)
    if args.plot:
        bench.write_timeline_png(reports, args.plot)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "results"} | {
        "ttft_ms": {n: r["ttft_ms"] for n, r in reports.items()},
        "decode_ms_per_token": {n: r["decode_ms_per_token"] for n, r in reports.items()}}))
