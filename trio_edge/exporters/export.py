"""trio-export: model -> directory of ONNX graphs (vision, embed, segments, selects) + manifest.

Stages: load -> plan -> trace/export each graph -> validate each graph in ONNX Runtime against its
PyTorch module (on random inputs and on a real request's activations) -> hash -> manifest -> atomic rename.
"""

from __future__ import annotations

import datetime as dt
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import defaults
from ..artifact.dtypes import TORCH_DTYPES, VALIDATION_TOLERANCES, export_dtype
from ..artifact.graphs import GraphKind, GraphSpec, graph_specs, shape_ranges
from ..artifact.manifest import GraphEntry, IOInfo, Manifest, ModelInfo, library_versions, write_manifest
from ..artifact.plan import plan_for
from ..errors import ExportError, InputError
from ..files import atomic_directory
from ..models.split import build_modules
from .onnx_graph import compare_outputs, export_graph, run_onnx
from .probe_inputs import example_inputs, random_inputs, recorded_request_inputs

EXPORTABLE_METHODS = ("trio",)  # selection rules with an in-graph export


@dataclass
class ExportInfo:
    """What trio-export wrote: the directory, every graph's manifest entry, validation rows, the weight ratio,
    the schedule, wall time and peak host memory; `table()` is the CLI's summary."""

    directory: Path
    graphs: dict[str, GraphEntry]
    validation: list[dict]
    weight_ratio: float
    schedule: str
    seconds: float
    peak_rss_bytes: int

    def table(self) -> str:
        lines = [f"{'graph':<22}{'kind':<9}{'MB':>9}  {'max abs diff':>13}  {'max rel diff':>13}  ok"]
        worst: dict[str, dict] = {}
        for row in self.validation:
            best = worst.setdefault(row["graph"], {"max_abs": 0.0, "max_rel": 0.0, "ok": True})
            best["max_abs"], best["max_rel"] = max(best["max_abs"], row["max_abs"]), max(best["max_rel"], row["max_rel"])
            best["ok"] &= row["ok"]
        for name, graph in self.graphs.items():
            v = worst.get(name)
            diffs = f"{v['max_abs']:>13.2e}  {v['max_rel']:>13.2e}  {'yes' if v['ok'] else 'NO'}" if v else f"{'-':>13}  {'-':>13}  skipped"
            lines.append(f"{name:<22}{graph.kind.value:<9}{graph.bytes / 1e6:>9.2f}  {diffs}")
        lines.append(f"schedule: {self.schedule}")
        lines.append(f"artifact bytes / model parameter bytes: {self.weight_ratio:.3f}")
        lines.append(f"export took {self.seconds:.1f} s, peak host RSS {self.peak_rss_bytes / 2**30:.2f} GiB")
        return "\n".join(lines)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="graph", leave=False)


def export(model, output, *, cuts: str | None = None, keep_ratio: float | None = None,
           schedule_file: str | None = None, method: str = defaults.METHOD, grid: str | None = None,
           dtype: str = defaults.DTYPE, max_text_tokens: int = defaults.MAX_TEXT_TOKENS,
           max_new_tokens: int = defaults.MAX_NEW_TOKENS, positions: str | None = None, threshold: float | None = None,
           precision: str | None = None, opset: int = defaults.OPSET, nms_iterations: int = defaults.NMS_ITERATIONS,
           force: bool = False, validate: bool = True, progress: bool = True, loaded=None) -> ExportInfo:
    """Export `model` (alias, hub id or directory) with the selection rule inside the graphs; see trio-export --help."""
    from ..models.registry import load

    started = time.perf_counter()
    tensor_dtype = export_dtype(dtype)
    if method not in EXPORTABLE_METHODS:
        raise InputError(f"--method {method} cannot be exported; exportable: {', '.join(EXPORTABLE_METHODS)}")
    if max_text_tokens < 8 or max_new_tokens < 1:
        raise InputError("--max-text-tokens must be at least 8 and --max-new-tokens at least 1")
    output_dir = Path(output)
    if output_dir.exists() and not force:
        raise InputError(f"{output_dir} already exists; pass --force to replace it")
    loaded = loaded or load(model, dtype=TORCH_DTYPES[tensor_dtype])
    adapter = loaded.adapter
    grid_wh = adapter.grid_for(grid)
    schedule = adapter.schedule(grid_wh, cuts=cuts, keep_ratio=keep_ratio, schedule_file=schedule_file,
                                positions=positions, threshold=threshold, precision=precision)
    plan = plan_for(adapter, schedule, grid=grid_wh, max_text_tokens=max_text_tokens,
                    max_new_tokens=max_new_tokens, nms_iterations=nms_iterations)
    io = IOInfo(adapter.image_token_id, tuple(adapter.stop_token_ids()), adapter.tile_count(grid_wh), adapter.tile_size)
    specs = graph_specs(plan, tile_count=io.tile_count, tile_size=io.tile_size, dtype=tensor_dtype)
    modules = build_modules(adapter, plan, method=method)

    with atomic_directory(output_dir, overwrite=force) as tmp:
        graphs = _export_all(modules, specs, plan, tmp, opset, progress)
        validation = _validate_all(modules, specs, plan, adapter, tmp, tensor_dtype, progress) if validate else []
        loaded.processor.save_pretrained(tmp)
        loaded.model.config.save_pretrained(tmp)
        param_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        graph_bytes = sum(g.bytes for g in graphs.values())
        manifest = Manifest(
            tool={"name": "trio-edge", **library_versions()},
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            model=ModelInfo(str(model), loaded.source, loaded.revision, type(loaded.model).__name__, adapter.family,
                            tensor_dtype),
            io=io, plan=plan, opset=opset, graphs=graphs,
            weights={"model_parameter_bytes": param_bytes, "graph_bytes": graph_bytes,
                     "ratio": graph_bytes / param_bytes},
            validation=validation,
        )
        write_manifest(tmp, manifest, progress=progress)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return ExportInfo(output_dir, graphs, validation, graph_bytes / param_bytes,
                      schedule.describe(plan.num_layers, plan.num_image_tokens), time.perf_counter() - started, peak)


def _export_all(modules, specs: dict[str, GraphSpec], plan, directory: Path, opset: int,
                progress: bool) -> dict[str, GraphEntry]:
    graphs = {}
    for name in _progress(list(specs), progress, "export"):
        spec = specs[name]
        path = directory / f"{name}.onnx"
        ranges = shape_ranges(spec, plan)
        export_graph(modules[name], spec, example_inputs(spec, plan), ranges, path,
                     opset=opset, needs_joint_trace=spec.kind == GraphKind.SELECT)
        size = sum(p.stat().st_size for p in directory.glob(f"{name}.onnx*"))
        graphs[name] = GraphEntry(path.name, spec.kind, size, tuple(t.to_dict() for t in spec.inputs),
                                  tuple(t.to_dict() for t in spec.outputs), ranges)
    return graphs


def _validate_all(modules, specs, plan, adapter, directory: Path, dtype: str, progress: bool) -> list[dict]:
    """Every graph vs its PyTorch module in ONNX Runtime CPU; raise naming the graph/output on mismatch."""
    import onnxruntime as ort

    atol, rtol = VALIDATION_TOLERANCES[dtype]
    cases = recorded_request_inputs(modules, specs, plan, adapter, dtype)
    rows = []
    for name in _progress(list(specs), progress, "validate"):
        spec = specs[name]
        session = ort.InferenceSession(str(directory / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        for case_name, inputs in [*random_inputs(spec, plan, seed=1234), *cases.get(name, [])]:
            with torch.no_grad():
                outputs = modules[name](*[inputs[t.name] for t in spec.inputs])
            expected = dict(zip([t.name for t in spec.outputs], outputs if isinstance(outputs, tuple) else (outputs,)))
            for row in compare_outputs(spec, expected, run_onnx(session, spec, inputs), atol=atol, rtol=rtol):
                row["case"] = case_name
                rows.append(row)
                if not row["ok"]:
                    raise ExportError(f"validation failed: graph {name}, output {row['output']}, case {case_name}: "
                                      f"max abs diff {row['max_abs']:.3e}, max rel diff {row['max_rel']:.3e} "
                                      f"(tolerance atol={atol}, rtol={rtol})")
    return rows
