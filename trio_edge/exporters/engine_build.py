"""trio-build: one TensorRT engine per exported ONNX graph, built on the GPU that will run it.

Optimization profiles come from the manifest's declared `dynamic_ranges`: graphs with a `query` axis
(embed, segments) get profile 0 = decode (query length 1) and profile 1 = prefill (2 .. max); select graphs
(`seq` axis) get one profile; static graphs (vision) none. Engines are written atomically, then the
manifest is rewritten with a `tensorrt` section (TensorRT version, GPU, compute capability, precision,
per-engine profiles) and a fresh sha256 file table. Without TensorRT the ONNX export and trio-check still
work; this module imports tensorrt only inside build_engines.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from ..artifact.graphs import QUERY_AXIS as DECODE_AXIS
from ..artifact.graphs import GraphKind, typical_lengths
from ..artifact.manifest import GraphEntry, read_manifest, safe_member, write_manifest
from ..errors import ExportError, InputError
from ..runtime.backends.tensorrt_backend import import_tensorrt, platform_info, require_cuda

PRECISIONS = ("fp16", "bf16", "fp32")
PARTIAL_SUFFIX = ".partial"


# ---- profiles (pure: no TensorRT) -----------------------------------------------------------------------
def optimization_profiles(graph_entry: GraphEntry, typical: dict[str, int] | None = None) -> list[dict[str, tuple]]:
    """Profiles of one manifest graph entry: [{input name: (min shape, opt shape, max shape)}, ...].

    `query` graphs: [decode (1, 1, 1), prefill (2, typical, max)]; other dynamic graphs: one profile
    (min, typical, max); static graphs: [] (TensorRT makes its default profile). Without `typical` the
    optimum is the declared maximum.
    """
    ranges = graph_entry.dynamic_ranges
    if not ranges:
        return []
    typical = typical or {}

    def clamp(axis, low, high):
        return min(high, max(low, typical.get(axis, high)))

    full = {axis: (low, clamp(axis, low, high), high) for axis, (low, high) in ranges.items()}
    if DECODE_AXIS in ranges:
        low, high = ranges[DECODE_AXIS]
        axes = [{**full, DECODE_AXIS: (1, 1, 1)}] if low <= 1 else []
        if high >= 2:
            axes.append({**full, DECODE_AXIS: (max(low, 2), clamp(DECODE_AXIS, max(low, 2), high), high)})
    else:
        axes = [full]
    return [_input_shapes(graph_entry, values) for values in axes]


def _input_shapes(graph_entry: GraphEntry, axis_values: dict[str, tuple]) -> dict[str, tuple]:
    profile = {}
    for tensor in graph_entry.inputs:
        if not tensor["dynamic_axes"]:
            continue
        profile[tensor["name"]] = tuple(
            tuple(axis_values[d][i] if isinstance(d, str) else d for d in tensor["shape"]) for i in range(3))
    return profile


def shape_value_bound(graph_entry: GraphEntry) -> int:
    """Upper bound for the values of an input TensorRT treats as a shape tensor (a position or length):
    the largest dimension or declared axis maximum of the graph's inputs."""
    dims = [d for t in graph_entry.inputs for d in t["shape"] if isinstance(d, int)]
    dims += [high for _, high in graph_entry.dynamic_ranges.values()]
    return max(dims, default=1)


def builder_flags(kind: GraphKind, precision: str, select_precision: str,
                  fp32_compute: str | None = None) -> tuple[list[str], list[str]]:
    """(TensorRT builder flags to set, flags to clear) for one graph.

    Select graphs of an fp32-selection schedule (the default) compute saliency and NMS in fp32 so the kept
    tokens equal the reference exactly; reduced precision there could flip near-tied tokens. That includes
    TF32, which TensorRT enables by default for fp32 matrix products (10-bit mantissa). With
    `--select-precision model` the select graphs run in the engine precision like every other graph. A graph
    whose manifest entry says `fp32_compute` (a model family's tower that overflows fp16) is built without
    FP16/BF16: its fp16 weights and I/O stay, its layers compute in fp32."""
    if fp32_compute:
        return [], []
    if kind == GraphKind.SELECT and select_precision == "fp32":
        return [], ["TF32"]
    return {"fp16": ["FP16"], "bf16": ["BF16"], "fp32": []}[precision], []


# ---- building (TensorRT 10 Python API) ----------------------------------------------------------------------
def build_engines(directory, *, precision: str = "fp16", workspace_gb: float = 4.0, timing_cache=None,
                  progress: bool = True) -> dict:
    """Build and record one engine per graph of the export in `directory`; returns the manifest's new
    `tensorrt` section and the build seconds per graph."""
    directory = Path(directory)
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not workspace_gb > 0:
        raise InputError(f"--workspace must be a positive number of GiB, got {workspace_gb}")
    manifest = read_manifest(directory)  # verifies every file's sha256 before spending GPU time
    manifest.check_tensorrt_target(directory)
    manifest.check_runnable(directory)
    trt = import_tensorrt()
    require_cuda("trio-build")
    builder = _Builder(trt, precision=precision, workspace_bytes=int(workspace_gb * 2**30), timing_cache=timing_cache,
                       select_precision=manifest.plan.schedule.precision)
    engines, seconds, partials = {}, {}, []
    try:
        for name in _progress(list(manifest.graphs), progress):
            entry, started = manifest.graphs[name], time.perf_counter()
            profiles = optimization_profiles(entry, typical_lengths(manifest.plan, name, entry.kind))
            plan = builder.build(name, safe_member(directory, entry.file), entry, profiles)
            partials.append(directory / f"{name}.engine{PARTIAL_SUFFIX}")
            partials[-1].write_bytes(plan)
            engines[name] = {"file": f"{name}.engine", "bytes": plan.nbytes, "profiles": _profiles_json(profiles)}
            seconds[name] = round(time.perf_counter() - started, 2)
            del plan
        for partial in partials:  # every engine built: only now replace the ones the manifest may still list
            os.replace(partial, partial.with_suffix(""))
        partials = []
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)
        builder.save_timing_cache()
    section = {**platform_info(trt.__version__, _current_cuda_device()), "precision": precision,
               "workspace_gb": workspace_gb, "built": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "engines": engines}
    manifest.tensorrt = section
    write_manifest(directory, manifest)  # recomputes the sha256 file table
    return {"tensorrt": section, "seconds": seconds}


def _current_cuda_device() -> int:
    import torch

    return torch.cuda.current_device()


class _Builder:
    """One trt.Builder and one timing cache shared by every graph's build."""

    def __init__(self, trt, *, precision: str, workspace_bytes: int, timing_cache, select_precision: str = "fp32"):
        self.trt, self.precision, self.workspace_bytes = trt, precision, workspace_bytes
        self.select_precision = select_precision
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        self.cache_path = Path(timing_cache) if timing_cache is not None else None
        data = self.cache_path.read_bytes() if self.cache_path is not None and self.cache_path.is_file() else b""
        self._cache_config = self.builder.create_builder_config()  # kept alive with the cache it created
        self.cache = self._cache_config.create_timing_cache(data)  # an empty cache if there is no file yet

    def build(self, name: str, onnx_path: Path, entry: GraphEntry, profiles: list[dict[str, tuple]]):
        """The serialized engine (trt.IHostMemory) of one graph."""
        trt = self.trt
        network = self.builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self.logger)  # kept alive until the build: it owns the parsed weights
        if not parser.parse_from_file(str(onnx_path)):  # from the file, so external weight files resolve
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            details = "; ".join(f"node {e.node()} {e.node_name()!r} ({e.node_operator()}): {e.desc()}" for e in errors)
            raise ExportError(f"TensorRT could not parse graph {name} ({onnx_path.name}): {details or 'no details'}. "
                              "Run trio-check on the export directory for a full report")
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        set_flags, clear_flags = builder_flags(entry.kind, self.precision, self.select_precision, entry.fp32_compute)
        for flag in set_flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        for flag in clear_flags:
            config.clear_flag(getattr(trt.BuilderFlag, flag))
        config.set_timing_cache(self.cache, True)  # ignore_mismatch: entries from another GPU are just not reused
        _add_profiles(self.builder, config, network, profiles, shape_value_bound(entry))
        plan = self.builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError(f"TensorRT failed to build an engine for graph {name} (see the TensorRT log above); "
                              "try a larger --workspace or --precision fp32")
        return plan

    def save_timing_cache(self) -> None:
        if self.cache_path is not None:
            _write_atomic(self.cache_path, memoryview(self.cache.serialize()))


def _add_profiles(builder, config, network, profiles: list[dict[str, tuple]], shape_bound: int) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shape_tensors = [t for t in inputs if t.is_shape_tensor]  # e.g. a length TensorRT uses in shape math
    for shapes in profiles or ([{}] if shape_tensors else []):
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        for tensor in shape_tensors:
            count = max(1, _volume(tensor.shape))
            profile.set_shape_input(tensor.name, [0] * count, [0] * count, [shape_bound] * count)
        config.add_optimization_profile(profile)


def _volume(shape) -> int:
    n = 1
    for d in shape:
        n *= max(int(d), 1)
    return n


def _profiles_json(profiles: list[dict[str, tuple]]) -> list[dict]:
    return [{name: {"min": list(low), "opt": list(opt), "max": list(high)} for name, (low, opt, high) in p.items()}
            for p in profiles]


def _write_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _progress(names: list[str], enabled: bool):
    if not enabled:
        yield from names
        return
    from tqdm.auto import tqdm

    with tqdm(names, desc="trio-build", unit="graph") as bar:
        for name in bar:
            bar.set_postfix_str(name)
            yield name
