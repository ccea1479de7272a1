"""ONNX Runtime session settings, chosen once for every graph, and the on-disk cache of optimized graphs.

Settings (SESSION_SETTINGS, also printed by the benchmarks):
- graph optimization level ALL: constant folding, node fusions (MatMul+Add, SimplifiedLayerNorm for RMSNorm,
  ...), and on CPU the layout optimizations; the graphs are inference-only, so nothing is lost.
- intra-op threads: one per physical core (ORT's default) unless the caller says otherwise; inter-op 1 and
  sequential execution (a decoder is a chain of dependent ops: parallel execution only adds scheduling).
- intra-op threads spin briefly (at most 200 us after their last task, then sleep): each graph's session has
  its own thread pool, and a pipeline runs a chain of graphs with host work (preprocessing, sampling, torch
  ops) between them. With ORT's default spinning, workers keep burning the cores after each run, so the next
  graph's workers and the host thread wait for a core; with no spinning at all, every parallel op pays a
  thread wake-up. Measured on 2 cores (benchmarks/ort_spinning.py: one process, requests alternating between
  the settings, same answers), against ORT's default: short spinning 1.84x / 1.25x faster to first token and
  1.25x / 1.89x per decode step with TRIO (narrow / wide shape), no spinning 1.52x / 1.16x and 1.08x / 1.66x;
  an unpruned one-graph decode step (wide, onnxruntime target) 0.96x short, 0.92x none.
- memory pattern and the CPU arena on: the decode step repeats the same shapes, so its allocations are planned
  once and served from the arena.
- weight prepacking on (ORT's default): MatMul weights are re-laid out for the CPU's GEMM kernels at load.
- low memory (`low_memory=True`, trio-run/trio-bench/trio-serve --low-memory): the CPU arena and the memory
  pattern off, so every activation goes back to the system allocator as soon as it is dead. The arena keeps
  each chunk it ever grew (doubling on demand), which at 2,988 prefill positions costs about as much as the
  activations themselves: on the 7B architecture at hidden 1024 (benchmarks/runtime_memory.py) one request's
  peak RSS falls from 1.79 to 0.98 GiB with the same kept tokens. Weight prepacking off as well: a prepacked
  MatMulNBits weight is a second copy beside the original (2.3x the int4 bytes of a 7B segment resident,
  benchmarks/graph_resident_memory.py). The backend then also opens each graph at first use and runs the
  prefill-only ones alone, closed when the next graph opens (onnxruntime_backend). Meant for memory-bound devices
  (Jetson).

Optimized-graph cache: the first load of a graph saves ONNX Runtime's optimized model under the user cache
directory ($TRIO_EDGE_CACHE, else $XDG_CACHE_HOME/trio-edge, else ~/.cache/trio-edge), keyed by the export's
file hashes, the ONNX Runtime version, the settings, the device and the machine; later loads open that file
with optimizations off, skipping the fusion passes. The cache is written to a temporary directory and renamed,
so concurrent loads never see half a file; an unwritable cache directory, or a cached graph that no longer
opens, only costs the speed-up. The cache is bounded: after each new entry, the least recently used entries
are removed until the cache holds at most $TRIO_EDGE_ORT_CACHE_GB GiB (default 20; a 7B export's optimized
graphs take about 6 GB), never an entry used in the last minute nor one of the export being loaded (entries are
named by their export: one export larger than the limit keeps all its graphs, so its next load is warm).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from ...errors import InputError
from ..host_memory import release_freed_host_memory

SESSION_SETTINGS = {"graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
                    "inter_op_num_threads": 1, "enable_mem_pattern": True, "enable_cpu_mem_arena": True,
                    "session.disable_prepacking": "0", "session.intra_op.allow_spinning": "1",
                    "session.intra_op.spin_duration_us": "200"}
LOW_MEMORY_SETTINGS = {"enable_mem_pattern": False, "enable_cpu_mem_arena": False, "session.disable_prepacking": "1"}
CACHED_MODEL = "model.onnx"
CACHED_WEIGHTS = "model.onnx.data"  # initializers above 1 KiB go here (the 2 GiB protobuf limit)
CACHE_LIMIT_ENV = "TRIO_EDGE_ORT_CACHE_GB"
DEFAULT_CACHE_LIMIT_GB = 20.0
EVICTION_GRACE_S = 60.0  # an entry used this recently may be in use by another process: never removed


def cache_root() -> Path:
    explicit = os.environ.get("TRIO_EDGE_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trio-edge"


def session_options(ort, threads: int | None, low_memory: bool = False, settings: dict | None = None):
    """ONNX Runtime SessionOptions from `settings` (default SESSION_SETTINGS; low memory: LOW_MEMORY_SETTINGS
    over them) and the intra-op thread count (None: one per physical core)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    settings = {**(SESSION_SETTINGS if settings is None else settings), **(LOW_MEMORY_SETTINGS if low_memory else {})}
    options.enable_mem_pattern = settings["enable_mem_pattern"]
    options.enable_cpu_mem_arena = settings["enable_cpu_mem_arena"]
    for key, value in settings.items():
        if key.startswith("session."):  # session config entries
            options.add_session_config_entry(key, value)
    if threads:
        options.intra_op_num_threads = threads
    return options


def cache_key(export_key: str, graph: str, ort_version: str, settings: dict) -> str:
    """Everything the optimized graph depends on."""
    body = json.dumps({"export": export_key, "graph": graph, "ort": ort_version, "settings": settings,
                       "machine": platform.machine(), "processor": platform.processor()}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


EXPORT_PREFIX = 12  # hex digits of the export's content key that name its cache entries (export-graph)


def cache_entry(export_key: str, graph: str, ort_version: str, settings: dict) -> Path:
    """The cache directory of one graph's optimized model: named by its export, so eviction can spare the graphs
    of the export being loaded (a request of a large export opens its graphs over minutes)."""
    return cache_root() / "ort" / f"{export_key[:EXPORT_PREFIX]}-{cache_key(export_key, graph, ort_version, settings)}"


def cache_limit_bytes() -> int:
    raw = os.environ.get(CACHE_LIMIT_ENV)
    try:
        limit = DEFAULT_CACHE_LIMIT_GB if raw is None else float(raw)
    except ValueError:
        limit = -1.0
    if not limit >= 0:
        raise InputError(f"{CACHE_LIMIT_ENV}={raw!r}: give the optimized-graph cache's size limit in GiB, e.g. 20")
    return int(limit * 2**30)


def evict(root: Path, limit_bytes: int, keep: Path) -> list[Path]:
    """Remove the least recently used cache entries under `root` (never `keep` nor another entry of its export,
    nor one used within EVICTION_GRACE_S) until the cache holds at most `limit_bytes`; returns the removed
    entries. An export whose optimized graphs alone exceed the limit keeps them all (a warm load needs every one)."""
    export = keep.name.split("-", 1)[0] + "-" if "-" in keep.name else None
    entries = []
    for entry in root.iterdir():
        if entry.is_dir() and not entry.name.startswith(".partial-"):
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            entries.append((entry.stat().st_mtime, size, entry))
    total, removed, now = sum(size for _, size, _ in entries), [], time.time()
    for used, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= limit_bytes:
            break
        if entry == keep or now - used < EVICTION_GRACE_S or (export and entry.name.startswith(export)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
        removed.append(entry)
    return removed


def open_session(ort, path: Path, options, providers, disabled_optimizers, cache_dir: Path | None,
                 form=None, reopen_options=None):
    """An InferenceSession of `path`, through the optimized-graph cache at `cache_dir` when given.
    `form`: a function of `path` returning the serialized graph to run instead (its external data still read
    from beside `path`), or None to run the file as it is; only called when the graph is optimized (not on a
    cache hit). `reopen_options`: a function returning fresh SessionOptions; when given, a graph just optimized
    into the cache is closed and opened again from there, so the weights ONNX Runtime made while optimizing (int4
    weights in MatMulNBits' layout, fp32 copies) are memory-mapped from the cache's file instead of held in the
    process's memory (low-memory mode). Returns (session, 'hit' | 'miss' | 'off')."""
    disabled = list(disabled_optimizers) or None

    def from_export():
        model = form(path) if form is not None else None
        if model is None:
            return ort.InferenceSession(str(path), options, providers=providers, disabled_optimizers=disabled)
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
        return ort.InferenceSession(model, options, providers=providers, disabled_optimizers=disabled)

    if cache_dir is None:
        return from_export(), "off"
    cached = cache_dir / CACHED_MODEL
    if cached.is_file():
        level = options.graph_optimization_level
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized
        try:
            session = ort.InferenceSession(str(cached), options, providers=providers)
        except Exception:  # removed or damaged meanwhile: drop the entry and optimize again
            shutil.rmtree(cache_dir, ignore_errors=True)
            options.graph_optimization_level = level
        else:
            try:
                os.utime(cache_dir)  # recently used: evicted last
            except OSError:  # a read-only cache still serves
                pass
            return session, "hit"
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache_dir.parent))
    except OSError:  # no writable cache: load without it
        return from_export(), "off"
    options.optimized_model_filepath = str(staging / CACHED_MODEL)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", CACHED_WEIGHTS)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        session = from_export()
    except BaseException:  # no half-written entry stays behind (evict never counts or removes .partial-*)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        staging.rename(cache_dir)
    except OSError:  # another process got there first, or the directory cannot be written: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    try:
        evict(cache_dir.parent, cache_limit_bytes(), keep=cache_dir)
    except OSError:  # another process is evicting too: the next miss tries again
        pass
    if reopen_options is not None and cached.is_file():
        del session
        release_freed_host_memory()
        return open_session(ort, path, reopen_options(), providers, disabled_optimizers, cache_dir, form)[0], "miss"
    return session, "miss"
