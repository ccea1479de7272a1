"""Scale-out on Ray, measured on one trio-tiny export in one run: trio-serve single-process vs Ray Serve with 1 and
2 replicas, and trio-batch local vs Ray Data with 1 and 2 actors.

- serving: requests/s and p50/p95 latency at concurrency 1, 4, 8 (C client threads, each with its own keep-alive
  connection, sending as fast as answers come back; every answer checked against the single-process one);
- Ray's overhead per request at concurrency 1: the same requests alternately to the single-process server and
  to Ray Serve with 1 replica (both running, so both see the same machine), the median of the paired
  differences, and Ray's p50 / single p50; GET /health the same way shows the routing alone. The same
  1-replica deployment is measured again behind HAProxy (`RAY_SERVE_ENABLE_HA_PROXY=1`, a Ray 2.60 feature
  flag: HAProxy forwards to the replicas' own HTTP servers, no Python proxy hop), to show where the time goes;
- trio-batch over the same 256 records: the whole command's wall time, and the steady rate between its first
  and last answer (actor start-up excluded);
- cold start: from starting the command to the first answer (Ray: cluster, proxy and replica start-up included).

Every server and batch run is a real subprocess (`trio-serve`, `trio-batch`). Each setup gets the whole 2-core
machine: the single process and 1 replica / 1 actor run ONNX Runtime with 2 intra-op threads, 2 replicas /
2 actors 1 thread each (1 CPU each is the honest split of 2 cores; Ray's proxy and controller and the client
threads share the same cores). Prints a markdown table; writes JSON.

    python benchmarks/scale_out.py                    # exports trio-tiny (TRIO 11.1%) to a temporary dir
    python benchmarks/scale_out.py --export DIR -n 64 --out benchmarks/results/scale_out_trio_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import MODEL, PAIRS, SAMPLES, free_port, request_body, served, summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ONE_REPLICA = ["--engine", "ray", "--replicas", "1", "--cpus-per-replica", "2"]
HAPROXY = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}  # Ray 2.60's feature flag: HAProxy in front, no Python proxy hop
SERVERS = {"single process": ([], {}), "Ray Serve, 1 replica": (ONE_REPLICA, {}),
           "Ray Serve, 2 replicas": (["--engine", "ray", "--replicas", "2"], {}),
           "Ray Serve, 1 replica, HAProxy ingress": (ONE_REPLICA, HAPROXY)}
PAIRED = ("Ray Serve, 1 replica", "Ray Serve, 1 replica, HAProxy ingress")
BATCHES = {"local": [],
           "Ray Data, 1 actor": ["--engine", "ray", "--actors", "1", "--cpus-per-actor", "2"],
           "Ray Data, 2 actors": ["--engine", "ray", "--actors", "2"]}


class Server:
    """A trio-serve subprocess; `.cold_start_s`: from Popen to its first answer."""

    def __init__(self, export_dir: Path, args: list[str], env: dict, log_path: Path):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "trio_edge.cli.serve", str(export_dir), "--port",
                                         str(self.port), "--log-level", "warning", "--model-name", MODEL,
                                         "--max-queue", "64", *args], stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **env})
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                response = httpx.post(self.url + "/v1/chat/completions", json=request_body(0), timeout=60)
                if response.status_code == 200:
                    self.first_answer = response.json()["choices"][0]["message"]["content"]
                    self.cold_start_s = time.perf_counter() - started
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"trio-serve {' '.join(args)} did not answer (see {log_path})")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(120)
        self.log.close()


def paired(single: Server, ray: Server, n: int) -> dict:
    """n requests each way, alternating, one at a time; and as many GET /health (no pipeline work: what is left
    is the routing itself)."""
    import httpx

    latencies = {"single": [], "ray": [], "single_health": [], "ray_health": []}
    differences = []
    with httpx.Client(base_url=single.url, timeout=300) as a, httpx.Client(base_url=ray.url, timeout=300) as b:
        for i in range(n):
            for name, http in (("single", a), ("ray", b)):
                t = time.perf_counter()
                http.post("/v1/chat/completions", json=request_body(i)).raise_for_status()
                latencies[name].append(time.perf_counter() - t)
                t = time.perf_counter()
                http.get("/health").raise_for_status()
                latencies[name + "_health"].append(time.perf_counter() - t)
            differences.append(latencies["ray"][-1] - latencies["single"][-1])
    single_p50, ray_p50 = statistics.median(latencies["single"]), statistics.median(latencies["ray"])
    return {"single": summary(latencies["single"], sum(latencies["single"])),
            "ray": summary(latencies["ray"], sum(latencies["ray"])),
            "overhead_ms_p50": statistics.median(differences) * 1e3, "overhead_ratio_p50": ray_p50 / single_p50,
            "health_p50_ms": {"single": statistics.median(latencies["single_health"]) * 1e3,
                              "ray": statistics.median(latencies["ray_health"]) * 1e3}}


def serve_runs(export_dir: Path, scratch: Path, n: int, warmup: int, concurrency: list[int]) -> dict:
    results, expected, single = {}, None, None
    try:
        for name, (args, env) in SERVERS.items():
            server = Server(export_dir, args, env, scratch / f"serve-{len(results)}.log")
            try:
                if expected is None:
                    import httpx

                    expected = [httpx.post(server.url + "/v1/chat/completions", json=request_body(i), timeout=60)
                                .json()["choices"][0]["message"]["content"] for i in range(len(PAIRS))]
                served(server.url, warmup, 1, expected)
                entry = {"cold_start_s": server.cold_start_s, "concurrency": {}}
                if name in PAIRED:
                    paired(single, server, warmup)
                    entry["paired_with_single_process"] = paired(single, server, n)
                for c in concurrency:
                    entry["concurrency"][str(c)] = served(server.url, n, c, expected)
                results[name] = entry
            finally:
                if name == "single process":
                    single = server  # kept running for the paired overhead run
                else:
                    server.stop()
    finally:
        if single is not None:
            single.stop()
    return results


def batch_runs(export_dir: Path, scratch: Path, records: int) -> dict:
    images = ["color.png", "shape.png", "count.png"]
    input_path = scratch / "records.jsonl"
    input_path.write_text("".join(json.dumps({"id": i, "image": str(SAMPLES / images[i % 3]),
                                              "prompt": PAIRS[i % 3][1]}) + "\n" for i in range(records)))
    results, reference = {}, None
    for name, args in BATCHES.items():
        out = scratch / f"batch-{len(results)}.jsonl"
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "trio_edge.cli.batch", str(export_dir), str(input_path),
                                    "-o", str(out), "--quiet", *args], stderr=subprocess.PIPE, text=True)
        first = last = None
        lines = 0
        while process.poll() is None or lines < records:
            lines = out.read_bytes().count(b"\n") if out.exists() else 0
            now = time.perf_counter()
            if lines and first is None:
                first = now
            if lines >= records:
                last = last or now
                if process.poll() is not None:
                    break
            if process.poll() is not None and lines < records:
                raise SystemExit(f"trio-batch {' '.join(args)} failed: {process.stderr.read()}")
            time.sleep(0.002)
        wall = time.perf_counter() - started
        stderr = process.stderr.read()
        answers = {json.loads(line)["id"]: json.loads(line)["text"] for line in out.read_text().splitlines()}
        reference = reference or answers
        if answers != reference:
            raise SystemExit(f"trio-batch {' '.join(args)}: answers differ from the local run")
        results[name] = {"records": records, "wall_s": wall, "records_per_s": records / wall,
                         "first_answer_s": first - started, "steady_records_per_s": (records - 1) / (last - first),
                         "summary": stderr.strip().splitlines()[-1]}
    return results


def markdown(result: dict) -> str:
    lines = ["| server | cold start to first answer s | concurrency | requests/s | p50 ms | p95 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, entry in result["serve"].items():
        for c, r in entry["concurrency"].items():
            cold = f"{entry['cold_start_s']:.1f}" if c == "1" else ""
            lines.append(f"| {name} | {cold} | {c} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
                         f"{r['p95_ms']:.1f} |")
    lines.append("")
    for name in PAIRED:
        pair = result["serve"][name]["paired_with_single_process"]
        lines.append(f"{name}: overhead per request at concurrency 1 (median of {pair['ray']['requests']} paired "
                     f"differences) {pair['overhead_ms_p50']:+.1f} ms on a single-process p50 of "
                     f"{pair['single']['p50_ms']:.1f} ms; Ray p50 / single p50 = {pair['overhead_ratio_p50']:.2f}x; "
                     f"GET /health (no pipeline work) p50 {pair['health_p50_ms']['single']:.1f} ms single, "
                     f"{pair['health_p50_ms']['ray']:.1f} ms through Ray.")
    lines += ["",
              "| trio-batch | records | wall s (start-up included) | records/s | first answer s | steady records/s |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["batch"].items():
        lines.append(f"| {name} | {r['records']} | {r['wall_s']:.1f} | {r['records_per_s']:.1f} | "
                     f"{r['first_answer_s']:.1f} | {r['steady_records_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="a trio-tiny export (default: export one to a temporary dir)")
    parser.add_argument("-n", type=int, default=64, help="requests per serving run (default 64)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--records", type=int, default=256, help="trio-batch records (default 256)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale_out_trio_tiny.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # private clusters on this machine: no token file
    started, load_before = time.perf_counter(), os.getloadavg()
    import trio_edge

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        export_dir = args.export
        if export_dir is None:
            export_dir = scratch / MODEL
            trio_edge.export(MODEL, export_dir, keep_ratio=0.111, validate=False, progress=False)
        serve = serve_runs(export_dir, scratch, args.n, args.warmup, [int(c) for c in args.concurrency.split(",")])
        batches = batch_runs(export_dir, scratch, args.records)
    result = {
        "command": "python benchmarks/scale_out.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                        "python": platform.python_version(), "load_average_before": load_before,
                        "load_average_after": os.getloadavg(), **_versions()},
        "model": MODEL, "schedule": "keep ratio 0.111 (cuts 0:56,1:33,2:13)", "backend": "onnxruntime, CPU",
        "setup": "single process and 1 replica / 1 actor: 2 ONNX Runtime intra-op threads; 2 replicas / 2 actors: "
                 "1 CPU and 1 thread each; Ray's proxy, controller and the clients share the same 2 cores",
        "serve": serve, "batch": batches, "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(json.dumps({"out": str(args.out), "wall_s": round(result["wall_s"], 1)}))


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("onnxruntime", "fastapi", "uvicorn", "torch", "ray")}


if __name__ == "__main__":
    main()
