"""Accuracy of quantized trio-tiny exports on the 200 held-out synthetic questions, ONNX Runtime CPU.

For each weight format (fp32, int8 RTN, int4 RTN, int4 GPTQ) two exports: unpruned (full tokens) and TRIO at
11.1%; per format the full-token accuracy, TRIO's accuracy and retention (TRIO / full of the same format), and
the share of greedy answers (token ids) identical to the fp32 export's with the same schedule, plus the share
of requests whose kept tokens equal the fp32 export's. Quantized runs use ONNX Runtime's default for fused
MatMulNBits (int8 activations, accuracy level 4), as the runtime does.

python benchmarks/quant_accuracy.py [--n 200] [--out benchmarks/results/quant_accuracy_trio_tiny.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

FORMATS = {  # label -> export options
    "fp32": {},
    "int8": {"weights": "int8"},
    "int4": {"weights": "int4"},
    "int4-gptq": {"weights": "int4", "quant_method": "gptq", "calibration_data": "synthetic"},
    "int4-b16": {"weights": "int4", "block_size": 16},
    "int4-gptq-b16": {"weights": "int4", "block_size": 16, "quant_method": "gptq", "calibration_data": "synthetic"},
    "int8-b16": {"weights": "int8", "block_size": 16},
}
DEFAULT_FORMATS = "fp32,int8,int4,int4-gptq"
TARGETS = {"int8": 0.99, "int4": 0.95, "int4-gptq": 0.95, "int4-b16": 0.95, "int4-gptq-b16": 0.95,
           "int8-b16": 0.99}  # identical greedy answers vs the fp32 export


def answers(directory: Path, records) -> list[tuple[list[int], list[list[int]], str]]:
    from trio_edge.runtime.open import open_pipeline

    with open_pipeline(directory, backend="onnxruntime") as pipeline:
        return [(r.token_ids, r.kept, r.text) for r in
                (pipeline.generate(rec["image"], rec["question"], max_new_tokens=4) for rec in records)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/quant_accuracy_trio_tiny.json")
    parser.add_argument("--formats", default=DEFAULT_FORMATS, help=f"comma list of {', '.join(FORMATS)}; fp32 "
                        "(the reference) is always run")
    args = parser.parse_args()
    labels = ["fp32"] + [f for f in args.formats.split(",") if f != "fp32"]
    unknown = [f for f in labels if f not in FORMATS]
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)}")

    from trio_edge.calibration.data import load_records, normalize_answer
    from trio_edge.exporters.export import export
    from trio_edge.models.registry import load

    records = load_records("synthetic", n=args.n)  # the held-out split
    loaded = load("trio-tiny")
    truth = [normalize_answer(r["answer"]) for r in records]
    runs, started = {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quant-accuracy-") as tmp:
        for label in labels:
            options = FORMATS[label]
            for schedule, cuts in (("full", {}), ("trio", {"keep_ratio": 0.111})):
                out = Path(tmp) / f"{label}-{schedule}"
                info = export("trio-tiny", out, loaded=loaded, max_new_tokens=8, progress=False, **options, **cuts)
                runs[(label, schedule)] = {"answers": answers(out, records), "weights": info.weight_format,
                                           "ratio": info.weight_ratio}
                print(f"{label:>10} {schedule:>4}: exported and answered", flush=True)
    rows = []
    for label in labels:
        row = {"format": label, "weights": runs[(label, "trio")]["weights"]}
        for schedule in ("full", "trio"):
            got = runs[(label, schedule)]["answers"]
            reference = runs[("fp32", schedule)]["answers"]
            row[f"{schedule}_accuracy"] = sum(normalize_answer(a[2]) == t for a, t in zip(got, truth)) / len(truth)
            row[f"{schedule}_identical_to_fp32"] = sum(a[0] == b[0] for a, b in zip(got, reference)) / len(truth)
        row["trio_retention"] = row["trio_accuracy"] / row["full_accuracy"] if row["full_accuracy"] else 0.0
        row["kept_identical_to_fp32"] = sum(a[1] == b[1] for a, b in zip(runs[(label, "trio")]["answers"],
                                                                        runs[("fp32", "trio")]["answers"])) / len(truth)
        row["target_identical"] = TARGETS.get(label)
        rows.append(row)
    print(f"{'format':>10} {'full acc':>9} {'TRIO acc':>9} {'retention':>10} {'same answers (full / TRIO)':>28} "
          f"{'same kept':>10}")
    for r in rows:
        print(f"{r['format']:>10} {100 * r['full_accuracy']:>8.1f}% {100 * r['trio_accuracy']:>8.1f}% "
              f"{100 * r['trio_retention']:>9.1f}% {100 * r['full_identical_to_fp32']:>13.1f}% / "
              f"{100 * r['trio_identical_to_fp32']:>5.1f}% {100 * r['kept_identical_to_fp32']:>9.1f}%")
    command = f"python benchmarks/quant_accuracy.py --n {args.n}" + (
        f" --formats {args.formats} --out {args.out}" if args.formats != DEFAULT_FORMATS else "")
    body = {"command": command, "n": args.n, "model": "trio-tiny",
            "schedule": "keep_ratio 0.111 (cuts 0:56,1:33,2:13) and unpruned", "backend": "onnxruntime cpu",
            "seconds": time.perf_counter() - started, "rows": rows}
    Path(args.out).write_text(json.dumps(body, indent=2))


if __name__ == "__main__":
    main()
