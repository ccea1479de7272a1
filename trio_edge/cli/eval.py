"""trio-eval MODEL_OR_DIR: does pruning keep the answer? Accuracy and retention per method and budget.

Runs the full-token model, then TRIO and the peers (FastV, DART, PyramidDrop, VisionZip, random, uniform) at
each layer-averaged budget, each at its own authors' cut layers (scaled to the model's depth) with KEEPs set to
the budget (VisionZip: its per-tile table 54+10 / 108+20 / 162+30 at 1/9, 2/9, 1/3, scaled to the tile's
patches; KEEP per tile for other budgets); a method that cannot reach a budget on the model (FastV's K=2 on
a 4-layer model) gets an n/a row. Data: the synthetic VQA generator's held-out split or a records folder (--data DIR with records.jsonl:
image, question, answer); --images N asks each synthetic question about N images, its answer in one of them. --backend onnxruntime also exports every exportable method at each budget and
runs its ONNX graphs (they must match the torch numbers).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import CliParser, add_quiet_option, at_least, check_output_paths, cli_entry, command_line, make_parents


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="trio-eval", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="alias, Hugging Face id or model directory (default trio-tiny)", nargs="?",
                        default="trio-tiny")
    parser.add_argument("--budgets", default="1/3,2/9,1/9", help="layer-averaged image-token ratios, fractions or "
                        "decimals (default 1/3,2/9,1/9: 192, 128 and 64 of LLaVA-1.5's 576)")
    parser.add_argument("--methods", default="full,trio,fastv,dart,pdrop,visionzip,random,uniform,trio-ve")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--data", default="synthetic", help="'synthetic' or a records folder / .jsonl file")
    parser.add_argument("--n", type=at_least(1), default=200, help="number of samples (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    parser.add_argument("--images", type=at_least(1), default=1,
                        help="images per question (synthetic data): the answer lives in one of them, the others are "
                             "distractor scenes; budgets count all their image tokens (default 1)")
    parser.add_argument("--budget-per-image", action="store_true",
                        help="with --images N: every cut splits its budget evenly over the images")
    parser.add_argument("--json", dest="json_path", help="write results as JSON here")
    parser.add_argument("--plot", help="write an accuracy-vs-budget PNG here")
    add_quiet_option(parser)
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_output_paths(json=args.json_path, plot=args.plot)
    from ..calibration.data import load_records
    from ..calibration.evaluate import evaluate, parse_budgets, write_plot
    from ..models.registry import load

    budgets = parse_budgets(args.budgets)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    records = load_records(args.data, n=args.n, images=args.images)
    result = evaluate(load(args.model), records, budgets=budgets, methods=methods, backend=args.backend,
                      seed=args.seed, progress=not args.quiet, images=args.images,
                      budget_per_image=args.budget_per_image)
    print(result.table())
    body = {"command": command_line("trio-eval", argv), "model": args.model,
            "data": args.data, "images": args.images, "budget_per_image": args.budget_per_image,
            "n": result.n, "full_accuracy": result.full_accuracy,
            "full_by_kind": result.full_by_kind, "rows": result.rows}
    make_parents(args.json_path, args.plot)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(body, indent=2))
    if args.plot:
        write_plot(result, args.plot)
    print(json.dumps({"full_accuracy": result.full_accuracy, "n": result.n}))
