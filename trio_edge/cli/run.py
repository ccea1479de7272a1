"""trio-run MODEL_OR_DIR --image PATH --prompt TEXT: answer a question about an image (or several, or a video).

MODEL_OR_DIR is an export directory (written by trio-export: runs its graphs on --backend, default
onnxruntime) or a model (alias, Hugging Face id, local directory: runs the PyTorch reference pipeline with
the given schedule; none given = no pruning). Repeat --image for an export that takes several images (in the
order the prompt refers to them); --video CLIP for one exported with --video-frames.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import defaults
from .common import PROMPT_HELP, CliParser, add_device_options, add_model_only_options, cli_entry, model_only_options


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="trio-run", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="export directory, or alias / Hugging Face id / model directory")
    visual = parser.add_mutually_exclusive_group(required=True)
    visual.add_argument("--image", action="append", help="image file (PNG, JPEG, WebP, BMP, GIF); repeat it for an "
                        "export that takes several images")
    visual.add_argument("--video", help="video file (MP4, MKV, WebM, MOV, AVI) for an export made with --video-frames")
    parser.add_argument("--prompt", required=True, help=PROMPT_HELP)
    add_device_options(parser)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"default: the export's maximum ({defaults.MAX_NEW_TOKENS} for models)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, kept, timings, "
                        "prompt_tokens, weights; seed when sampling; vision_kept after a vision-tower method; "
                        "kept_per_image with several images, frame_groups and kept_per_frame_group for a video")
    add_model_only_options(parser)
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from ..artifact.manifest import is_export_dir
    from ..runtime.open import open_pipeline

    model_options = model_only_options(args)
    is_export = is_export_dir(args.model)
    with open_pipeline(args.model, backend=args.backend, device=args.device, cuda_graphs=args.cuda_graphs,
                       low_memory=args.low_memory,
                       max_new_tokens=None if is_export else args.max_new_tokens, **model_options) as pipeline:
        options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       seed=args.seed, video=args.video)
        image = None if args.image is None else args.image[0] if len(args.image) == 1 else args.image
        if args.stream and not args.json:
            stream = pipeline.generate(image, args.prompt, stream=True, **options)
            for token in stream:
                sys.stdout.write(token.text)
                sys.stdout.flush()
            print()
            print(_summary(stream.result, pipeline.weight_format), file=sys.stderr)
            return
        result = pipeline.generate(image, args.prompt, **options)
        weight_format = pipeline.weight_format
    if args.json:
        print(json.dumps({**result.to_json(), "weights": weight_format}))
    else:
        print(result.text)
        print(_summary(result, weight_format), file=sys.stderr)


def _summary(result, weight_format: str) -> str:
    """The stderr line after an answer: what was kept, TTFT, decode speed, weight format."""
    where = "per tile in the vision tower" if result.vision_kept and len(result.vision_kept) > 1 else "in the vision tower"
    vision = [f"{len(result.vision_kept[0])} kept {where}"] if result.vision_kept else []
    per_item = result.kept_per_item if result.items > 1 else []
    cuts = ", ".join(vision + [f"{len(k)} kept" + (f" ({'+'.join(str(len(i)) for i in items)})" if per_item else "")
                               for k, items in zip(result.kept, per_item or [None] * len(result.kept))]) or "no pruning"
    return (f"[{cuts}; TTFT {result.timings['ttft']:.1f} ms, {result.timings['decode_ms_per_token']:.1f} ms/token; "
            f"weights {weight_format}]")
