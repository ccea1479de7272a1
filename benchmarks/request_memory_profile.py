"""Where one request's peak host memory comes from: the process's resident memory (anonymous and file-backed,
as /proc/PID/status counts them) sampled every few milliseconds by a separate process, against the graph
sessions the ONNX Runtime backend opens, runs and closes. A benchmark run, not a test.

python benchmarks/request_memory_profile.py EXPORT_DIR OUT_JSON [--new-tokens N] [--default-memory] [--top N]

Prints one row per backend event (open / run / close of a graph) with the resident memory after it and the
highest resident memory seen while it ran, and the largest initializers of each graph as ONNX Runtime loads it
(the optimized graph in the cache when there is one, else the export's graph). Run it with TRIO_EDGE_CACHE set
to a directory of your own, twice: cold (the first load optimizes every graph and writes the cache) and warm.
ru_maxrss (what orin_nano_proof.py reports) counts file-backed pages too, so both kinds are shown.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SAMPLER = """
import sys, time
pid, out, period = sys.argv[1], sys.argv[2], float(sys.argv[3])
fields = ("VmRSS", "RssAnon", "RssFile")
with open(out, "w") as sink:
    while True:
        try:
            text = open(f"/proc/{pid}/status").read()
        except OSError:
            break
        values = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines() if line.split(":")[0] in fields}
        sink.write(f"{time.time()} {values.get('VmRSS', 0)} {values.get('RssAnon', 0)} {values.get('RssFile', 0)}\\n")
        sink.flush()
        time.sleep(period)
"""


def status_kib() -> dict[str, int]:
    fields = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
    text = Path("/proc/self/status").read_text()
    return {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines() if line.split(":")[0] in fields}


def largest_initializers(path: Path, top: int) -> list[dict]:
    """The `top` largest initializers of an ONNX file (external or embedded), with their dtype and bytes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    rows = []
    for tensor in model.graph.initializer:
        external = {e.key: e.value for e in tensor.external_data}
        size = int(external["length"]) if "length" in external else len(tensor.raw_data)
        rows.append({"name": tensor.name, "dtype": onnx.TensorProto.DataType.Name(tensor.data_type),
                     "shape": list(tensor.dims), "bytes": size})
    rows.sort(key=lambda r: -r["bytes"])
    total = sum(r["bytes"] for r in rows)
    return [{"total_bytes": total}] + rows[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export")
    parser.add_argument("out")
    parser.add_argument("--new-tokens", type=int, default=2)
    parser.add_argument("--default-memory", action="store_true")
    parser.add_argument("--top", type=int, default=4, help="largest initializers listed per graph")
    parser.add_argument("--period-ms", type=float, default=5.0)
    args = parser.parse_args()

    samples = Path(args.out).with_suffix(".samples.txt")
    sampler = subprocess.Popen([sys.executable, "-c", SAMPLER, str(os.getpid()), str(samples),
                                str(args.period_ms / 1e3)])
    events: list[dict] = []

    def mark(graph: str, action: str, started: float) -> None:
        events.append({"graph": graph, "action": action, "start": started, "end": time.time(), **status_kib()})

    from trio_edge.cli.bench import DEFAULT_PROMPT, synthetic_image
    from trio_edge.runtime.open import open_pipeline

    time.sleep(0.2)
    started = time.time()
    with open_pipeline(args.export, backend="onnxruntime", verify=False, low_memory=not args.default_memory) as pipeline:
        mark("-", "pipeline open", started)
        backend = pipeline.backend
        session_of, run_impl, sessions = backend._session, backend.run_impl, backend.sessions

        def traced_session(name):
            if name in sessions:
                return sessions[name]
            t = time.time()
            session = session_of(name)
            mark(name, f"open ({backend.cache.get(name)})", t)
            return session

        def traced_run(name, inputs):
            traced_session(name)
            t = time.time()
            outputs = run_impl(name, inputs)
            mark(name, "run" if name in sessions else "run + close", t)
            return outputs

        backend._session, backend.run_impl = traced_session, traced_run
        t = time.time()
        result = pipeline.generate(synthetic_image(), DEFAULT_PROMPT, max_new_tokens=args.new_tokens)
        mark("-", "request done", t)
        cache = dict(backend.cache)
        files, export_key, settings = dict(backend._files), backend._export_key, backend.settings
    mark("-", "pipeline closed", time.time())
    time.sleep(0.1)
    sampler.terminate()
    sampler.wait()

    trace = [tuple(float(v) for v in line.split()) for line in samples.read_text().splitlines() if line.strip()]
    samples.unlink()
    rows = []
    for event in events:
        inside = [s for s in trace if event["start"] <= s[0] <= event["end"]]
        after = (event["end"], event["VmRSS"], event["RssAnon"], event["RssFile"])
        peak = max([*inside, after], key=lambda s: s[1])  # a short event may fall between two samples
        rows.append({"graph": event["graph"], "action": event["action"], "seconds": event["end"] - event["start"],
                     "rss_after_gib": event["VmRSS"] / 2**20, "anon_after_gib": event["RssAnon"] / 2**20,
                     "file_after_gib": event["RssFile"] / 2**20, "peak_rss_during_gib": peak[1] / 2**20,
                     "peak_anon_during_gib": peak[2] / 2**20, "peak_file_during_gib": peak[3] / 2**20})
    overall = max(trace, key=lambda s: s[1])
    culprit = next((r for r, e in zip(rows, events) if e["start"] <= overall[0] <= e["end"] and r["graph"] != "-"),
                   None)
    import onnxruntime

    from trio_edge.runtime.backends.ort_sessions import CACHED_MODEL, cache_key, cache_root

    initializers = {}
    for name, path in files.items():
        initializers[name] = {"export": largest_initializers(Path(path), args.top)}
        if export_key is not None:
            cached = cache_root() / "ort" / cache_key(export_key, name, onnxruntime.__version__, settings) / CACHED_MODEL
            if cached.is_file():
                initializers[name]["optimized"] = largest_initializers(cached, args.top)
    body = {"command": f"python benchmarks/request_memory_profile.py {args.export} {args.out} "
                       f"--new-tokens {args.new_tokens}" + (" --default-memory" if args.default_memory else ""),
            "low_memory": not args.default_memory, "ort_cache": cache, "kept": [len(k) for k in result.kept],
            "token_ids": result.token_ids,
            "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "sampled_peak": {"rss_gib": overall[1] / 2**20, "anon_gib": overall[2] / 2**20,
                             "file_gib": overall[3] / 2**20,
                             "during": None if culprit is None else f"{culprit['graph']} {culprit['action']}"},
            "events": rows, "initializers": initializers}
    Path(args.out).write_text(json.dumps(body, indent=2))
    print(f"{'graph':18s} {'action':16s} {'s':>7s} {'rss':>6s} {'anon':>6s} {'file':>6s} | {'peak':>6s} "
          f"{'anon':>6s} {'file':>6s}  (GiB)")
    for r in rows:
        print(f"{r['graph']:18s} {r['action']:16s} {r['seconds']:7.1f} {r['rss_after_gib']:6.2f} "
              f"{r['anon_after_gib']:6.2f} {r['file_after_gib']:6.2f} | {r['peak_rss_during_gib']:6.2f} "
              f"{r['peak_anon_during_gib']:6.2f} {r['peak_file_during_gib']:6.2f}")
    print(json.dumps({k: body[k] for k in ("ru_maxrss_gib", "sampled_peak", "kept", "ort_cache")}))


if __name__ == "__main__":
    main()
