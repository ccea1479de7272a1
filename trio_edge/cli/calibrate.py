"""trio-calibrate MODEL --budget R -o schedule.json: pick the TRIO schedule for a token (and latency) budget.

Searches cut layers, keep counts per cut and the NMS threshold to keep the model's outputs as close as
possible to the unpruned model's on calibration prompts (greedy answer exact match, first-token agreement,
mean KL of the first next-token distribution), with the layer-averaged image-token ratio at most R (within
half an image token: keeps are whole tokens, as --keep-ratio rounds them) and,
with --latency-ms, time to first token on this device at most X. Prints the Pareto table and writes a
schedule file for `trio-export --schedule-file`, recording how it was chosen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliParser, add_device_options, at_least, check_output_paths, cli_entry, command_line, make_parents


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="trio-calibrate", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="alias, Hugging Face id or model directory")
    parser.add_argument("--budget", type=float, required=True, help="layer-averaged image-token ratio, e.g. 0.111")
    parser.add_argument("--latency-ms", type=float, help="time-to-first-token limit on this device (PyTorch backend)")
    add_device_options(parser, backends=False)
    parser.add_argument("--data", default="synthetic", help="'synthetic' or a records folder / .jsonl file")
    parser.add_argument("--n", type=at_least(1), default=32, help="calibration samples (default 32)")
    parser.add_argument("--seed", type=int, default=70_001, help="seed of the synthetic calibration split")
    parser.add_argument("--max-new-tokens", type=at_least(1), default=4,
                        help="answer tokens compared with the unpruned model's (default 4)")
    parser.add_argument("--top", type=at_least(1), default=3,
                        help="candidates whose NMS threshold is refined (default 3)")
    parser.add_argument("-o", "--output", required=True, help="schedule JSON to write")
    parser.add_argument("--quiet", action="store_true")
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_output_paths(output=args.output)
    from ..calibration.search import calibrate

    result = calibrate(args.model, budget=args.budget, latency_limit_ms=args.latency_ms, device=args.device,
                       data=args.data, n=args.n, seed=args.seed, max_new_tokens=args.max_new_tokens, top=args.top,
                       progress=not args.quiet, command=command_line("trio-calibrate", argv))
    print(result.table())
    output = Path(args.output)
    make_parents(output)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(result.schedule.to_json())
    tmp.replace(output)
    print(f"chosen {result.describe()}; wrote {output}")
