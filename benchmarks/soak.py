"""Soak: N consecutive generations on a tiny export (ONNX Runtime backend, or --backend torch).

Cycles through a few fixed requests (different image sizes and prompts, greedy and seeded sampling),
checks that every repeat of a request gives exactly the first answer (tokens, text, kept indices), and
tracks the host RSS after every generation. The last stdout line is one JSON object:

    {"n": 300, "identical": true, "mismatches": 0, "rss_first10_mib": ..., "rss_last_mib": ...,
     "rss_growth_mib": ..., ...}

where rss_growth_mib = RSS after the last run - the largest RSS over the first 10 runs (each RSS sample
is taken after gc.collect(): after each of the first 10 runs, every 10th run and the last one).

    python benchmarks/soak.py                 # builds a tiny model and export in a temporary directory
    python benchmarks/soak.py --export DIR -n 60 --max-rss-growth-mib 50
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ("what color is the circle?", "how many objects are there?", "describe this image please",
           "which shape is on the left?")
SIZES = ((120, 80), (64, 64), (50, 150), (200, 90))


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; else the peak from getrusage)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def requests():
    """Fixed (image, prompt, options) requests: smooth blobs plus noise, seeded."""
    import numpy as np
    from PIL import Image

    out = []
    for index, ((width, height), prompt) in enumerate(zip(SIZES, PROMPTS)):
        rng = np.random.default_rng(index)
        y, x = np.mgrid[0:height, 0:width]
        blob = np.exp(-((x - rng.random() * width) ** 2 + (y - rng.random() * height) ** 2) / (0.2 * width * height))
        array = 0.7 * blob[..., None] * rng.random(3) + 0.3 * rng.random((height, width, 3))
        image = Image.fromarray((array * 255).clip(0, 255).astype("uint8"))
        options = {"temperature": 0.0} if index % 2 == 0 else {"temperature": 0.8, "top_p": 0.9, "seed": 7 + index}
        out.append((image, prompt, options))
    return out


def build_tiny_export(root: Path) -> Path:
    from trio_edge.exporters.export import export
    from trio_edge.models.tiny import make_tiny_llava_next

    model = make_tiny_llava_next(root / "model", seed=0)
    directory = root / "export"
    export(str(model), directory, cuts="1:40", max_text_tokens=48, max_new_tokens=8, progress=False, validate=False)
    return directory


def soak(directory: Path, n: int, max_new_tokens: int | None, threads: int, log=None,
         backend: str = "onnxruntime") -> dict:
    from trio_edge import load

    pipeline = load(directory, backend=backend, device="cpu", threads=threads)
    work = requests()
    expected: dict[int, tuple] = {}
    mismatches, rss, started = [], [], time.perf_counter()
    for run in range(n):
        index = run % len(work)
        image, prompt, options = work[index]
        result = pipeline.generate(image, prompt, max_new_tokens=max_new_tokens, **options)
        answer = (tuple(result.token_ids), result.text, tuple(tuple(k) for k in result.kept))
        if index not in expected:
            expected[index] = answer
        elif answer != expected[index]:
            mismatches.append({"run": run, "request": index, "got": answer[0], "want": expected[index][0]})
        del result
        if run < 10 or run == n - 1 or (run + 1) % 10 == 0:  # gc.collect costs ~0.2 s: sample, not every run
            gc.collect()
            rss.append((run + 1, rss_bytes()))
        if log and (run + 1) % max(1, n // 10) == 0:
            print(f"{run + 1}/{n} runs, RSS {rss[-1][1] / 2**20:.1f} MiB, {len(mismatches)} mismatches", file=log)
    seconds = time.perf_counter() - started
    first = max(value for runs, value in rss if runs <= 10)
    samples = [value for _, value in rss]
    mib = 1 / 2**20
    return {
        "n": n, "requests": len(work), "identical": not mismatches, "mismatches": len(mismatches),
        "first_mismatches": mismatches[:3],
        "rss_first10_mib": round(first * mib, 2), "rss_last_mib": round(samples[-1] * mib, 2),
        "rss_growth_mib": round((samples[-1] - first) * mib, 2),
        "rss_max_mib": round(max(samples) * mib, 2),
        "rss_samples_mib": {runs: round(value * mib, 2) for runs, value in rss if runs > 10},
        "seconds": round(seconds, 2), "ms_per_generation": round(seconds / n * 1e3, 2),
        "backend": backend, "device": "cpu", "threads": threads, "export": str(directory),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="an export directory (default: build a tiny one in a temp dir)")
    parser.add_argument("-n", "--runs", type=int, default=300, help="consecutive generations (default 300)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the export's maximum")
    parser.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--max-rss-growth-mib", type=float, default=None,
                        help="exit 1 if RSS grows more than this (last run vs first 10 runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.runs < 11:
        parser.error("--runs must be at least 11 (RSS of the first 10 runs is the baseline)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    log = None if args.quiet else sys.stderr
    with tempfile.TemporaryDirectory(prefix="trio-soak-") as scratch:
        directory = args.export or build_tiny_export(Path(scratch))
        report = soak(directory, args.runs, args.max_new_tokens, args.threads, log, args.backend)
    failed = not report["identical"]
    if args.max_rss_growth_mib is not None:
        report["max_rss_growth_mib"] = args.max_rss_growth_mib
        failed |= report["rss_growth_mib"] > args.max_rss_growth_mib
    print(json.dumps(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
