"""trio-export: model -> directory of ONNX graphs (vision, embed, segments, selects) + manifest.

Stages: load -> plan -> (quantize the weights in place, see quantize.py) -> trace/export each graph (and
rewrite its weights: quantized, or shared with the graph that holds them first) -> validate each graph in ONNX
Runtime against its PyTorch module (on random inputs and on a real request's activations) -> hash -> manifest
-> atomic rename.
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
from ..artifact.manifest import (
    EXPORT_TARGETS,
    GraphEntry,
    IOInfo,
    MANIFEST_NAME,
    Manifest,
    ModelInfo,
    library_versions,
    write_manifest,
)
from ..artifact.plan import plan_for, visual_items
from ..artifact.weights import (
    ORT_DISABLED_OPTIMIZERS,
    QDQ_OPSET,
    Quantization,
    check_block_size,
    checked_quantization,
)
from ..errors import ExportError, InputError
from ..files import atomic_directory, check_output_directory
from ..models.split import build_modules
from ..trio.methods import EXPORTABLE_METHODS, method_info
from ..trio.presets import method_for
from .onnx_graph import compare_outputs, export_graph, run_onnx
from .probe_inputs import example_inputs, random_inputs, recorded_request_inputs
from .quantize import GraphWeightWriter, WeightTable, quantize_model, shared_weights

OPSETS = range(18, 24)  # what --opset takes: exported and validated on ONNX Runtime here


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
    weight_format: str = "float32"
    target: str = defaults.TARGET

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
        lines.append(f"weights: {self.weight_format}, target: {self.target}")
        lines.append(f"artifact bytes / model parameter bytes: {self.weight_ratio:.3f}")
        lines.append(f"export took {self.seconds:.1f} s, peak host RSS {self.peak_rss_bytes / 2**30:.2f} GiB")
        return "\n".join(lines)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="graph", leave=False)


def export(model, output, *, cuts: str | None = None, keep_ratio: float | None = None,
           budget: int | None = None, schedule_file: str | None = None, preset: str | None = None,
           method: str | None = None, grid: str | None = None, dtype: str = defaults.DTYPE,
           target: str = defaults.TARGET,
           max_text_tokens: int = defaults.MAX_TEXT_TOKENS,
           max_new_tokens: int = defaults.MAX_NEW_TOKENS, positions: str | None = None, threshold: float | None = None,
           precision: str | None = None, opset: int = defaults.OPSET, nms_iterations: int = defaults.NMS_ITERATIONS,
           weights: str | None = None, block_size: int = defaults.BLOCK_SIZE, quant_method: str = defaults.QUANT_METHOD,
           quantize_lm_head: bool = False, quantize_vision: bool = False, calibration_data: str | None = None,
           calibration_samples: int = defaults.CALIBRATION_SAMPLES, images: int = 1, video_frames: int = 0,
           budget_per_image: bool = False,
           force: bool = False, validate: bool = True, progress: bool = True, loaded=None) -> ExportInfo:
    """Export `model` (alias, hub id or directory) with the selection rule inside the graphs; see trio-export --help.

    `images`: images per request (each at the export's image size, in prompt order); `video_frames`: a request is
    one video instead, this many frames sampled from it (Qwen families); `budget_per_image`: each cut keeps its
    budget split evenly over the images / frame groups instead of one budget over all of their tokens.

    `weights` int8 / int4 quantizes the weights (see exporters/quantize.py); a model passed in `loaded` is then
    copied first, since quantization rewrites the weights of the model it exports (as it is when its dtype is
    not the export's)."""
    from ..models.registry import load

    started = time.perf_counter()
    method = method_for(method, preset, defaults.METHOD)
    if target not in EXPORT_TARGETS:
        raise InputError(f"--target must be one of {', '.join(EXPORT_TARGETS)} (tensorrt: standard ONNX for TensorRT "
                         f"10.3+ and ONNX Runtime; onnxruntime: ONNX Runtime's fused attention), got {target!r}")
    tensor_dtype = export_dtype(dtype)
    quantization = checked_quantization(weights, dtype, block_size=block_size, method=quant_method,
                                        lm_head=quantize_lm_head, vision=quantize_vision,
                                        calibration_data=calibration_data)
    if not method_info(method).exportable:
        raise InputError(f"--method {method} cannot be exported; exportable: {', '.join(EXPORTABLE_METHODS)}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not OPSETS[0] <= opset <= OPSETS[-1]:
        raise InputError(f"--opset must be within {OPSETS[0]}..{OPSETS[-1]} (torch's ONNX exporter writes opset "
                         f"{OPSETS[0]} or newer; {OPSETS[-1]} is the newest tested), got {opset!r}")
    if calibration_samples < 1:
        raise InputError(f"--calibration-samples must be at least 1, got {calibration_samples}")
    if max_text_tokens < 8 or max_new_tokens < 1:
        raise InputError("--max-text-tokens must be at least 8 and --max-new-tokens at least 1")
    output_dir = Path(output)
    replacing = check_output_directory(output_dir, force=force, marker=MANIFEST_NAME)
    if loaded is not None and (quantization is not None or loaded.model.dtype != TORCH_DTYPES[tensor_dtype]):
        import copy

        loaded = copy.deepcopy(loaded)  # the caller's model keeps its own weights and dtype
        loaded.model.to(TORCH_DTYPES[tensor_dtype])
    loaded = loaded or load(model, dtype=TORCH_DTYPES[tensor_dtype])
    adapter = loaded.adapter
    grid_wh = adapter.grid_for(grid)
    items = visual_items(adapter, images, video_frames)
    schedule = adapter.schedule(grid_wh, items, bool(video_frames), cuts=cuts, keep_ratio=keep_ratio, budget=budget,
                                schedule_file=schedule_file, preset=preset, positions=positions, threshold=threshold,
                                precision=precision, method=method)
    plan = plan_for(adapter, schedule, grid=grid_wh, max_text_tokens=max_text_tokens,
                    max_new_tokens=max_new_tokens, nms_iterations=nms_iterations, method=method, images=images,
                    video_frames=video_frames, budget_per_image=budget_per_image)
    io = IOInfo(adapter.image_token_id, tuple(adapter.stop_token_ids()), adapter.tile_count(grid_wh), adapter.tile_size,
                adapter.pixel_shape(grid_wh))
    specs = graph_specs(plan, tile_count=io.tile_count, pixel_shape=io.vision_input_shape(), dtype=tensor_dtype,
                        layer_caches=target == "onnxruntime")
    if quantization is not None:
        opset = max(opset, QDQ_OPSET)
        quantization, table = _quantize(loaded, plan, specs, quantization, calibration_samples, progress)
    elif plan.schedule.precision == "model" and plan.selects:  # selects hold the segments' own weights
        table = shared_weights({**adapter.linear_layers(lm_head=True), **_other_proxy_heads(adapter, plan)})
    elif _tied_head(adapter):
        table = shared_weights({"lm_head": adapter.decoder.lm_head})
    else:
        table = None
    writer = GraphWeightWriter(table, quantization, tensor_dtype) if table is not None else None
    modules = build_modules(adapter, plan, fused_attention_op=target == "onnxruntime")

    with atomic_directory(output_dir, overwrite=replacing) as tmp:
        graphs = _export_all(modules, specs, plan, tmp, opset, progress, writer, tensor_dtype, adapter.fp32_compute())
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
            validation=validation, quantization=quantization, target=target,
        )
        write_manifest(tmp, manifest, progress=progress)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return ExportInfo(output_dir, graphs, validation, graph_bytes / param_bytes,
                      plan.describe(), time.perf_counter() - started, peak,
                      manifest.weight_format(), target)


def _quantize(loaded, plan, specs, quantization: Quantization, calibration_samples: int,
              progress: bool) -> tuple[Quantization, WeightTable]:
    """Check the block size against every layer, then quantize the model's weights in place."""
    linears = loaded.adapter.linear_layers(lm_head=quantization.lm_head, vision=quantization.vision)
    decoder_side = loaded.adapter.linear_layers(lm_head=quantization.lm_head, vision=False)
    uneven = [name for name, layer in linears.items()
              if name not in decoder_side and layer.in_features % quantization.block_size]
    if uneven:  # vision layers whose features do not split into blocks stay in the export dtype, and say so
        linears = {name: layer for name, layer in linears.items() if name not in uneven}
        quantization = Quantization(**{**quantization.to_dict(), "unquantized_vision": len(uneven)})
    check_block_size({name: layer.in_features for name, layer in linears.items()}, quantization.block_size)
    codes_for = None
    if quantization.method == "gptq":
        from .gptq import gptq_codes

        codes_for, calibration = gptq_codes(loaded, plan, specs, linears, quantization, calibration_samples,
                                            progress=progress)
        quantization = Quantization(**{**quantization.to_dict(), "calibration": calibration})
    table = quantize_model(linears, quantization, codes_for)
    if not quantization.lm_head and (plan.selects or _tied_head(loaded.adapter)):
        # select graphs share the segments' float lm_head; a head tied to the embeddings shares the embed graph's
        table.extend(shared_weights({"lm_head": loaded.adapter.decoder.lm_head}))
    if plan.selects:
        table.extend(shared_weights(_other_proxy_heads(loaded.adapter, plan)))
    return quantization, table


def _tied_head(adapter) -> bool:
    """Whether lm_head is the input embedding table (tied checkpoints: Qwen2.5-VL-3B, Qwen3-VL-2B/4B): the graph
    holding the head then refers to the embed graph's copy."""
    return adapter.decoder.lm_head.weight is adapter.decoder.embed_tokens.weight


def _other_proxy_heads(adapter, plan) -> dict:
    """TRIO's proxy head when it is not lm_head (Qwen's port scores with the input embedding table): select graphs
    then refer to the embed graph's copy of that table instead of storing their own (1.1 GB on a 7B)."""
    if plan.cut_rule != "trio" or not plan.selects:
        return {}
    head = adapter.trio_proxy(plan.selects[0].proxy_layer)[0].lm_head
    return {} if head is adapter.decoder.lm_head else {"proxy_head": head}


def _export_all(modules, specs: dict[str, GraphSpec], plan, directory: Path, opset: int,
                progress: bool, writer: GraphWeightWriter | None, dtype: str,
                fp32_compute: dict | None = None) -> dict[str, GraphEntry]:
    """`fp32_compute`: graph kind -> why graphs of that kind must compute in fp32 in a reduced-precision engine
    (the model adapter's fp32_compute), recorded in their manifest entries when `dtype` is not float32."""
    graphs, fp32_compute = {}, fp32_compute or {}
    for name in _progress(list(specs), progress, "export"):
        spec = specs[name]
        path = directory / f"{name}.onnx"
        ranges = shape_ranges(spec, plan)
        export_graph(modules[name], spec, example_inputs(spec, plan), ranges, path,
                     opset=opset, needs_joint_trace=spec.kind == GraphKind.SELECT and plan.cut_rule == "trio",
                     external_data=writer is not None)
        record = writer.rewrite(path) if writer is not None else {"format": dtype}
        size = sum(p.stat().st_size for p in directory.glob(f"{name}.onnx*"))
        graphs[name] = GraphEntry(path.name, spec.kind, size, tuple(t.to_dict() for t in spec.inputs),
                                  tuple(t.to_dict() for t in spec.outputs), ranges, record,
                                  fp32_compute.get(spec.kind) if dtype != "float32" else None)
    return graphs


def _validate_all(modules, specs, plan, adapter, directory: Path, dtype: str, progress: bool) -> list[dict]:
    """Every graph vs its PyTorch module in ONNX Runtime CPU; raise naming the graph/output on mismatch."""
    import onnxruntime as ort

    atol, rtol = VALIDATION_TOLERANCES[dtype]
    cases = recorded_request_inputs(modules, specs, plan, adapter, dtype)
    rows = []
    options = ort.SessionOptions()
    # Fused int4/int8 MatMuls with fp32 activations: the graph computes what its module computes. (The runtime
    # keeps ONNX Runtime's default accuracy level 4, int8 activations, for speed; benchmarks measure that.)
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    for name in _progress(list(specs), progress, "validate"):
        spec = specs[name]
        session = ort.InferenceSession(str(directory / f"{name}.onnx"), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
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
