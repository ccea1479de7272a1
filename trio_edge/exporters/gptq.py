"""Calibration-aware int4 codes (--quant-method gptq) with ONNX Runtime's GPTQ implementation.

GPTQ quantizes a layer's weight column by column and folds each column's rounding error into the columns not
yet quantized, weighted by the layer's input activations (their Hessian X^T X). ONNX Runtime ships it
(`MatMulNBitsQuantizer` + `GPTQWeightOnlyQuantConfig`) for MatMul graphs, so: export the graphs that hold
quantized layers unquantized into a scratch directory, with each `Gemm(x, W, transB=1)` written as
`MatMul(x, W^T)` under the weight's model name; record those graphs' real inputs from the PyTorch pipeline
answering calibration requests (synthetic VQA images or a records folder); run GPTQ per graph; read each
MatMulNBits' codes and scales back. The rest of the export treats them like round-to-nearest ones.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ..artifact.graphs import GraphKind, shape_ranges
from ..errors import ExportError, InputError
from .onnx_graph import export_graph
from .probe_inputs import example_inputs


class CalibrationRecorder:
    """Wraps a backend and keeps the inputs of every multi-token (prefill) call of the named graphs."""

    def __init__(self, backend, graphs):
        self.inner, self.device, self.specs = backend, backend.device, backend.specs
        self.calls: dict[str, list[dict]] = {name: [] for name in graphs}

    def run(self, graph, inputs):
        query = inputs.get("hidden", inputs.get("input_ids"))
        if graph in self.calls and (query is None or query.shape[1] > 1):
            self.calls[graph].append({k: v.detach().clone() for k, v in inputs.items()})
        return self.inner.run(graph, inputs)


CALIBRATION_SEED = 70_001  # synthetic calibration images: a split apart from the held-out one (90_001)


def calibration_records(data: str, samples: int) -> list[dict]:
    """`samples` records from the synthetic VQA generator ('synthetic') or a records folder."""
    from ..data.synthetic_vqa import make_split, read_records

    if data == "synthetic":
        return make_split(samples, CALIBRATION_SEED)
    records = read_records(data)  # InputError naming the folder when it is missing or malformed
    if not records:
        raise InputError(f"--calibration-data {data} holds no records; GPTQ needs calibration images")
    return records[:samples]


def gptq_codes(loaded, plan, specs, linears: dict, quantization, samples: int, *, progress: bool):
    """(codes_for(name, weight) -> (codes (K, N) int8, scales (K / block, N)), calibration record)."""
    from ..models.split import build_modules

    records = calibration_records(quantization.calibration["data"], samples)
    modules = build_modules(loaded.adapter, plan)
    owners = _parameter_names(loaded.model, linears)
    kinds = (GraphKind.SEGMENT, GraphKind.VISION) if quantization.vision else (GraphKind.SEGMENT,)
    graphs = [name for name, spec in specs.items() if spec.kind in kinds]
    inputs = _record_inputs(loaded, plan, specs, modules, graphs, records)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="trio-gptq-") as scratch:
        for name in graphs:
            path = Path(scratch) / f"{name}.onnx"
            export_graph(modules[name], specs[name], example_inputs(specs[name], plan), shape_ranges(specs[name], plan),
                         path, opset=18, needs_joint_trace=False)
            local = {n: owners[id(p)] for n, p in modules[name].named_parameters() if id(p) in owners}
            found.update(_gptq_graph(path, local, inputs[name], specs[name], quantization))
    missing = sorted(set(linears) - set(found))
    if missing:
        raise ExportError(f"GPTQ found no MatMul for {', '.join(missing[:3])}; use --quant-method rtn")

    def codes_for(name, weight):
        return found[name]

    calibration = {**quantization.calibration, "samples": len(records), "graphs": graphs}
    return codes_for, calibration


def _parameter_names(model, linears: dict) -> dict[int, str]:
    """id of each quantized weight tensor -> its linear layer's model name."""
    return {id(layer.weight): name for name, layer in linears.items()}


@torch.no_grad()
def _record_inputs(loaded, plan, specs, modules, graphs, records) -> dict[str, list[dict]]:
    from ..runtime.backends.torch_backend import TorchBackend
    from ..runtime.pipeline import Pipeline

    recorder = CalibrationRecorder(TorchBackend(specs, modules), graphs)
    pipeline = Pipeline(plan, recorder, loaded.adapter, stop_token_ids=[], dtype=str(next(
        loaded.model.parameters()).dtype).removeprefix("torch."))
    for record in records:
        pipeline.generate(record["image"], record["question"], max_new_tokens=1)
    return recorder.calls


class _Reader:
    """ONNX Runtime CalibrationDataReader over recorded inputs (numpy feeds)."""

    def __init__(self, calls: list[dict], spec):
        self.feeds = [{t.name: call[t.name].cpu().numpy() for t in spec.inputs} for call in calls]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self):
        self.position = 0

    def __iter__(self):
        self.rewind()
        return iter(self.get_next, None)


def _gptq_graph(path: Path, local: dict[str, str], calls: list[dict], spec, quantization) -> dict:
    """Run ONNX Runtime's GPTQ on one graph; return model name -> (codes (K, N), scales (K / block, N))."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    root.handlers[:], root.level = handlers, level  # the quantizer module configures the root logger at import
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # GPTQ's calibration sessions would warn about every graph
    model = onnx.load(str(path))
    weights = _as_matmuls(model, local)
    config = GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(calls, spec), block_size=128)
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=quantization.block_size, is_symmetric=True,
                                     algo_config=config)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bar
        quantizer.process()
    result = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
    inits = {t.name: t for t in result.graph.initializer}
    found = {}
    for node in result.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight_name = next((w for w in weights if node.input[1].startswith(w + "_Q")), None)
        if weight_name is None:
            continue
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        packed = numpy_helper.to_array(inits[node.input[1]])  # (N, K / block, block / 2)
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, k // block)
        codes = unpack_unsigned_int4(packed, n, k)
        zero = (unpack_unsigned_int4(numpy_helper.to_array(inits[node.input[3]]), n, k // block)
                if len(node.input) > 3 and node.input[3] else np.full((n, k // block), 8, np.int16))
        signed = codes.astype(np.int16) - np.repeat(zero.astype(np.int16), block, axis=1)
        if signed.min() < -8 or signed.max() > 7:
            raise ExportError(f"GPTQ produced asymmetric codes for {weight_name}; use --quant-method rtn")
        found[weights[weight_name]] = (np.ascontiguousarray(signed.T.astype(np.int8)),
                                       np.ascontiguousarray(scales.T.astype(np.float32)))
    return found


def unpack_unsigned_int4(packed: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """MatMulNBits' packed 4-bit values (low nibble first per byte, rows padded to whole bytes) -> (rows, columns)."""
    flat = packed.reshape(rows, -1)
    values = np.empty((rows, flat.shape[1] * 2), np.uint8)
    values[:, 0::2], values[:, 1::2] = flat & 0x0F, flat >> 4
    return values[:, :columns]


def _as_matmuls(model, local: dict[str, str]) -> dict[str, str]:
    """Rewrite Gemm(x, W, transB=1) as MatMul(x, W^T) with W^T named after the layer; every node gets a unique
    name (the GPTQ code requires it). Returns W^T initializer name -> layer's model name."""
    inits = {t.name: t for t in model.graph.initializer}
    weights = {}
    for index, node in enumerate(model.graph.node):
        node.name = node.name or f"node_{index}"
        if node.op_type != "Gemm" or len(node.input) != 2 or node.input[1] not in local:
            continue
        tensor = inits[node.input[1]]
        transposed = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(tensor).T),
                                             f"{local[node.input[1]]}.T")
        model.graph.initializer.append(transposed)
        node.op_type = "MatMul"
        del node.attribute[:]
        node.input[1] = transposed.name
        weights[transposed.name] = local[tensor.name]
    used = {name for node in model.graph.node for name in node.input}
    unused = [t for t in model.graph.initializer if t.name not in used]
    for tensor in unused:  # the (N, K) originals the MatMuls no longer read
        model.graph.initializer.remove(tensor)
    return weights

