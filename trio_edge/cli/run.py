"""trio-run MODEL_OR_DIR --image PATH --prompt TEXT: answer a question about an image.

MODEL_OR_DIR is an export directory (written by trio-export: runs its graphs on --backend) or a model
(alias, Hugging Face id, local directory: runs the PyTorch reference pipeline with the given schedule).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import PROMPT_HELP, add_schedule_options, cli_entry, schedule_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio-run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="export directory, or alias / Hugging Face id / model directory")
    parser.add_argument("--image", required=True, help="image file (PNG, JPEG, WebP, BMP, GIF)")
    parser.add_argument("--prompt", required=True, help=PROMPT_HELP)
    parser.add_argument("--backend", choices=["onnxruntime", "tensorrt", "torch"],
                        help="export directories: default onnxruntime; models: torch only")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_const", const=False, default=None,
                        help="torch backend on CUDA and TensorRT decode: run eagerly, no CUDA-graph replay")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the export's maximum (64 for models)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.add_argument("--json", action="store_true", help="print one JSON object (text, token_ids, kept, timings)")
    model_only = parser.add_argument_group("when MODEL_OR_DIR is a model (PyTorch reference pipeline)")
    add_schedule_options(model_only)
    model_only.add_argument("--grid", help="fixed image grid WIDTHxHEIGHT")
    return parser


def is_export_dir(path: str) -> bool:
    return (Path(path) / "manifest.json").is_file()


def reference_pipeline(model: str, *, device: str, grid: str | None, max_new_tokens: int,
                       cuda_graphs: bool | None = None, **schedule):
    """The PyTorch pipeline for a model (no export): same stages and code as the torch backend."""
    from ..models.registry import load
    from ..runtime.reference import torch_pipeline

    loaded = load(model)
    grid_wh = loaded.adapter.grid_for(grid)
    return torch_pipeline(loaded, loaded.adapter.schedule(grid_wh, **schedule), grid=grid_wh,
                          max_new_tokens=max_new_tokens, device=device, cuda_graphs=cuda_graphs)


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from ..errors import InputError

    if is_export_dir(args.model):
        if any(v is not None for v in schedule_options(args).values()) or args.grid:
            raise InputError("--cuts/--keep-ratio/--schedule-file/--positions/--threshold/--select-precision/--grid are "
                             "fixed at export; re-export to change them")
        from ..runtime.loader import load

        pipeline = load(args.model, backend=args.backend or "onnxruntime", device=args.device,
                        cuda_graphs=args.cuda_graphs)
    else:
        if args.backend not in (None, "torch"):
            raise InputError(f"{args.model} is not an export directory; --backend {args.backend} needs one "
                             f"(run trio-export {args.model} -o DIR first)")
        pipeline = reference_pipeline(args.model, device=args.device, grid=args.grid, cuda_graphs=args.cuda_graphs,
                                      max_new_tokens=args.max_new_tokens or 64, **schedule_options(args))
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.stream and not args.json:
        from ..runtime.pipeline import GenerationResult

        result = GenerationResult("", [], [], {})
        printed = ""
        for _ in pipeline.stream(args.image, args.prompt, result=result, **options):
            text = pipeline.decode_text(result.token_ids)
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
        print()
        return
    result = pipeline.generate(args.image, args.prompt, **options)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.text)
        cuts = ", ".join(f"{len(k)} kept" for k in result.kept) or "no pruning"
        print(f"[{cuts}; TTFT {result.timings['ttft']:.1f} ms, {result.timings['decode_ms_per_token']:.1f} ms/token]",
              file=sys.stderr)
