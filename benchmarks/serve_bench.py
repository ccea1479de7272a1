"""trio-serve throughput and latency on a trio-tiny export, and its overhead over calling the pipeline directly.

Overhead: the same requests alternately through an in-process pipeline (`trio_edge.load`) and through a
real `trio-serve` subprocess, one at a time, so both see the same machine load; the overhead is the median
of the per-pair latency differences. Throughput: at concurrency C, C client threads (each with its own
keep-alive HTTP connection) send requests as fast as answers come back. Every request is a base64 PNG +
question, greedy, and every answer is checked against the direct one. Prints a markdown table; writes JSON.

    python benchmarks/serve_bench.py                      # exports trio-tiny (TRIO 11.1%) to a temporary dir
    python benchmarks/serve_bench.py --export DIR -n 64 --out benchmarks/results/serve_trio_tiny.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "trio_edge" / "assets" / "samples"
PAIRS = [("color.png", "what color is the triangle?"), ("shape.png", "what shape is the blue object?"),
         ("count.png", "how many circles are there?"), ("color.png", "what shape is the purple object?"),
         ("shape.png", "how many objects are there?")]
MODEL = "trio-tiny"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(latencies_s: list[float], wall_s: float) -> dict:
    return {"requests": len(latencies_s), "requests_per_s": len(latencies_s) / wall_s,
            "p50_ms": percentile(latencies_s, 0.5) * 1e3, "p95_ms": percentile(latencies_s, 0.95) * 1e3,
            "mean_ms": statistics.fmean(latencies_s) * 1e3, "wall_s": wall_s}


def paired(pipeline, url: str, n: int) -> dict:
    """n requests each way, alternating direct and served, one at a time."""
    import httpx

    direct, served_, differences = [], [], []
    with httpx.Client(base_url=url, timeout=300) as http:
        for i in range(n):
            image, question = PAIRS[i % len(PAIRS)]
            t = time.perf_counter()
            expected = pipeline.generate(SAMPLES / image, question).text
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            answer = _answer(http.post("/v1/chat/completions", json=request_body(i)))
            served_.append(time.perf_counter() - t)
            if answer != expected:
                raise SystemExit(f"request {i}: the server answered {answer!r}, the pipeline {expected!r}")
            differences.append(served_[-1] - direct[-1])
    return {"direct": summary(direct, sum(direct)), "served": summary(served_, sum(served_)),
            "overhead_ms_p50": statistics.median(differences) * 1e3,
            "overhead_ratio_p50": statistics.median(served_) / statistics.median(direct)}


def _answer(response) -> str:
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def request_body(i: int) -> dict:
    image, question = PAIRS[i % len(PAIRS)]
    url = "data:image/png;base64," + base64.b64encode((SAMPLES / image).read_bytes()).decode()
    return {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}]}


def served(url: str, n: int, concurrency: int, expected: list[str]) -> dict:
    import httpx

    bodies = [request_body(i) for i in range(n)]

    def client(index: int) -> list[float]:
        latencies = []
        with httpx.Client(base_url=url, timeout=300) as http:
            for i in range(index, n, concurrency):
                t = time.perf_counter()
                answer = _answer(http.post("/v1/chat/completions", json=bodies[i]))
                latencies.append(time.perf_counter() - t)
                if answer != expected[i % len(PAIRS)]:
                    raise SystemExit(f"request {i}: the server answered {answer!r}, expected {expected[i % len(PAIRS)]!r}")
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [x for part in pool.map(client, range(concurrency)) for x in part]
    return summary(latencies, time.perf_counter() - start)


def start_server(export_dir: Path, port: int, log) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "trio_edge.cli.serve", str(export_dir), "--port", str(port), "--log-level",
               "warning", "--model-name", MODEL, "--max-queue", "64"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"trio-serve did not start (see {log.name})")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def markdown(result: dict) -> str:
    lines = ["| run | concurrency | requests | requests/s | p50 ms | p95 ms |", "|---|---:|---:|---:|---:|---:|"]
    pairs = result["paired"]
    rows = [("pipeline, direct (paired)", 1, pairs["direct"]), ("trio-serve (paired)", 1, pairs["served"])] + [
        ("trio-serve", int(c), r) for c, r in result["server"].items()]
    for name, concurrency, r in rows:
        lines.append(f"| {name} | {concurrency} | {r['requests']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} |")
    lines += ["", f"Server overhead per request (median of {pairs['served']['requests']} paired differences): "
                  f"{pairs['overhead_ms_p50']:+.1f} ms; served p50 / direct p50 = {pairs['overhead_ratio_p50']:.2f}x."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="a trio-tiny export (default: export one to a temporary dir)")
    parser.add_argument("-n", type=int, default=64, help="requests per run (default 64)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_trio_tiny.json")
    args = parser.parse_args(argv)
    started, load_before = time.perf_counter(), os.getloadavg()
    import trio_edge

    with tempfile.TemporaryDirectory() as scratch:
        export_dir = args.export
        if export_dir is None:
            export_dir = Path(scratch) / MODEL
            trio_edge.export(MODEL, export_dir, keep_ratio=0.111, validate=False, progress=False)
        port = free_port()
        with open(Path(scratch) / "server.log", "wb") as log, trio_edge.load(export_dir) as pipeline:
            process = start_server(export_dir, port, log)
            try:
                url = f"http://127.0.0.1:{port}"
                paired(pipeline, url, args.warmup)  # warm-up, both ways
                measured_from = time.perf_counter()
                pairs = paired(pipeline, url, args.n)
                expected = [pipeline.generate(SAMPLES / image, question).text for image, question in PAIRS]
                runs = {c: served(url, args.n, int(c), expected) for c in args.concurrency.split(",")}
                measured_s = time.perf_counter() - measured_from
            finally:
                process.terminate()
                process.wait(60)
    result = {
        "command": "python benchmarks/serve_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                        "python": platform.python_version(), "load_average_before": load_before,
                        "load_average_after": os.getloadavg(), **_versions()},
        "model": MODEL, "schedule": "keep ratio 0.111 (cuts 0:56,1:33,2:13)", "backend": "onnxruntime, CPU",
        "paired": pairs, "server": runs, "measured_s": measured_s, "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(json.dumps({"out": str(args.out), "wall_s": round(result["wall_s"], 1)}))


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("onnxruntime", "fastapi", "uvicorn", "torch")}


if __name__ == "__main__":
    main()
