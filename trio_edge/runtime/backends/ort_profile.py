"""Time per operator type from ONNX Runtime's profiler (`SessionOptions.enable_profiling`), for benchmarks."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path


def op_times(trace: Path, skip_runs: int = 1) -> dict:
    """Median and mean ms of a session's runs and mean ms per run of each operator type (comparable with the
    mean: one preempted run moves it, not the median), from the trace file that
    `session.end_profiling()` wrote (deleted here). The first `skip_runs` runs are dropped: a fresh session's
    first run grows its memory arena and is not a run's steady cost."""
    events = json.loads(Path(trace).read_text())
    Path(trace).unlink()
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e["name"] == "model_run")
    measured = runs[skip_runs:]
    if not measured:
        raise ValueError(f"the profile holds {len(runs)} run(s); run the session more than {skip_runs} time(s)")
    by_op = defaultdict(float)
    for event in events:
        if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                and any(start <= event["ts"] <= end for start, end in measured)):
            by_op[event["args"]["op_name"]] += event["dur"] / 1e3 / len(measured)
    durations = [(end - start) / 1e3 for start, end in measured]
    return {"model_run_ms": statistics.median(durations), "model_run_mean_ms": statistics.mean(durations),
            "ms_per_run_by_op": dict(sorted(by_op.items(), key=lambda item: -item[1]))}
