"""trio-export MODEL -o DIR: split a LLaVA-family VLM into ONNX graphs with TRIO selection inside.

MODEL is an alias (llava-next-7b, llava-next-mistral-7b, llava-1.5-7b, tiny-random, trio-tiny), a
Hugging Face id, or a local save_pretrained directory. Writes vision, embed, one segment graph per
layer group (prefill and decode alike, static KV buffer) and one select graph per cut, validates every
graph against its PyTorch module in ONNX Runtime, and writes manifest.json with sha256 of every file.
"""

from __future__ import annotations

import argparse

from .common import add_schedule_options, cli_entry, schedule_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="alias, Hugging Face id or local directory")
    parser.add_argument("-o", "--output", required=True, help="export directory (written atomically)")
    add_schedule_options(parser)
    parser.add_argument("--grid", help="fixed image grid WIDTHxHEIGHT (default: the largest square grid pinpoint)")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--max-text-tokens", type=int, default=128, help="longest prompt text, in tokens (default 128)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest answer, in tokens (default 64)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--nms-iterations", type=int, default=32,
                        help="Cluster-NMS iterations unrolled in select graphs (default 32; the runtime falls back "
                             "to the exact greedy rule on the host if a request needs more)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-validate", action="store_true", help="skip checking graphs against PyTorch")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from ..export.exporter import export

    summary = export(args.model, args.output, grid=args.grid, dtype=args.dtype,
                     max_text_tokens=args.max_text_tokens, max_new_tokens=args.max_new_tokens, opset=args.opset,
                     nms_iterations=args.nms_iterations, force=args.force, validate=not args.no_validate,
                     progress=not args.quiet, **schedule_options(args))
    print(summary.table())
    print(f"wrote {summary.directory}")
