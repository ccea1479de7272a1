"""trio-calibrate MODEL --budget R -o schedule.json: pick the TRIO schedule for a token (and latency) budget.

Searches cut layers, keep counts per cut and the NMS threshold to keep the model's outputs as close as
possible to the unpruned model's on calibration prompts (greedy answer exact match, first-token agreement,
mean KL of the first next-token distribution), with the layer-averaged image-token ratio at most R and,
with --latency-ms, time to first token on this device at most X. Prints the Pareto table and writes a
schedule file for `trio-export --schedule-file`, recording how it was chosen.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from pathlib import Path

from .common import cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio-calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="alias, Hugging Face id or model directory")
    parser.add_argument("--budget", type=float, required=True, help="layer-averaged image-token ratio, e.g. 0.111")
    parser.add_argument("--latency-ms", type=float, help="time-to-first-token limit on this device (PyTorch backend)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default="synthetic", help="'synthetic' or a records folder / .jsonl file")
    parser.add_argument("--n", type=int, default=32, help="calibration samples (default 32)")
    parser.add_argument("--seed", type=int, default=70_001, help="seed of the synthetic calibration split")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--top", type=int, default=3, help="candidates whose NMS threshold is refined (default 3)")
    parser.add_argument("-o", "--output", required=True, help="schedule JSON to write")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _latency(loaded, schedule, records, device: str) -> float:
    from ..runtime.bench import measure
    from ..runtime.reference import torch_pipeline

    pipeline = torch_pipeline(loaded, schedule, max_new_tokens=1, device=device)
    return measure(pipeline, records[0]["image"], records[0]["question"], warmup=1, iters=3, new_tokens=1,
                   progress=False)["ttft_ms"]


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from ..calibration import search
    from ..calibration.data import load_records
    from ..errors import ScheduleError
    from ..models.registry import load

    loaded = load(args.model)
    adapter, grid = loaded.adapter, loaded.adapter.default_grid()
    layers, m = adapter.num_layers, adapter.image_token_count(grid)
    records = load_records(args.data, n=args.n, seed=args.seed)
    reference = search.reference_outputs(loaded, records, args.max_new_tokens)
    schedules = search.candidate_schedules(adapter, grid, args.budget)
    candidates = [search.Candidate(s, s.budget_ratio(layers, m)) for s in schedules]
    iterable = candidates if args.quiet else _bar(candidates, "candidates")
    for candidate in iterable:
        search.score(loaded, candidate, records, reference, args.max_new_tokens)
    best = sorted(candidates, key=lambda c: c.score, reverse=True)[: args.top]
    refined = [search.Candidate(search.with_threshold(c.schedule, t), c.budget)
               for c in best for t in search.THRESHOLDS if t != c.schedule.threshold]
    for candidate in refined if args.quiet else _bar(refined, "thresholds"):
        search.score(loaded, candidate, records, reference, args.max_new_tokens)
    candidates += refined
    if args.latency_ms is not None:
        for candidate in candidates:
            candidate.latency_ms = _latency(loaded, candidate.schedule, records, args.device)
        candidates = [c for c in candidates if c.latency_ms <= args.latency_ms]
        if not candidates:
            raise ScheduleError(f"no schedule at budget {args.budget} reaches TTFT <= {args.latency_ms} ms on "
                                f"{args.device}; raise --latency-ms or lower --budget")
    chosen = max(candidates, key=lambda c: c.score)
    default = candidates[0]
    print(f"{'schedule':<30}{'budget':>8}{'TTFT ms':>9}{'exact':>8}{'first':>8}{'KL':>9}")
    for c in search.pareto(candidates):
        latency = f"{c.latency_ms:>9.1f}" if c.latency_ms is not None else f"{'-':>9}"
        mark = " <- chosen" if c is chosen else (" (default)" if c is default else "")
        print(f"{c.label:<30}{100 * c.budget:>7.1f}%{latency}{100 * c.exact_match:>7.1f}%"
              f"{100 * c.first_token:>7.1f}%{c.mean_kl:>9.4f}{mark}")
    provenance = {
        "tool": "trio-calibrate", "command": "trio-calibrate " + " ".join(sys.argv[1:] if argv is None else argv),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": loaded.source,
        "budget": args.budget, "latency_ms": args.latency_ms, "data": args.data, "n": len(records),
        "candidates": len(candidates), "metrics": {"exact_match": chosen.exact_match, "first_token": chosen.first_token,
                                                   "mean_kl": chosen.mean_kl, "latency_ms": chosen.latency_ms},
        "default_schedule": {"label": default.label, "exact_match": default.exact_match,
                             "first_token": default.first_token, "mean_kl": default.mean_kl},
    }
    schedule = dataclasses.replace(chosen.schedule, provenance=provenance)
    output = Path(args.output)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(schedule.to_json())
    tmp.replace(output)
    print(f"chosen {chosen.label} ({schedule.describe(layers, m)}); wrote {output}")


def _bar(items, desc):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)
