"""trio-check on quantized weights: DequantizeLinear element types, zero points, scale shapes and block axis,
INT4's even last dimension and opset 21; and the TensorRT builder flags of select graphs per schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from trio_edge.artifact.graphs import GraphKind
from trio_edge.exporters.engine_build import builder_flags
from trio_edge.exporters.quantize import pack_int4
from trio_edge.exporters.trt_check import check_model


def _weight(name, dtype, shape):
    count = int(np.prod(shape))
    if dtype in (TensorProto.INT4, TensorProto.UINT4):
        return helper.make_tensor(name, dtype, shape, pack_int4(np.ones(count, np.int8)), raw=True)
    return numpy_helper.from_array(np.ones(shape, np.int8 if dtype == TensorProto.INT8 else np.uint8), name)


def _dq_model(path: Path, *, dtype=TensorProto.INT4, k=64, n=8, scale_shape=None, axis=0, block=32, zero=None,
              opset=21) -> Path:
    """x (1, K) @ DequantizeLinear(W (K, N), scale, [zero]) -> y (1, N)."""
    scale_shape = scale_shape or [k // block, n]
    inits = [_weight("w", dtype, [k, n]), numpy_helper.from_array(np.full(scale_shape, 0.1, np.float32), "s")]
    inputs = ["w", "s"]
    if zero is not None:
        inits.append(helper.make_tensor("z", dtype, scale_shape, pack_int4(np.full(int(np.prod(scale_shape)), zero,
                                                                                   np.int8)), raw=True))
        inputs.append("z")
    attrs = {"axis": axis, **({"block_size": block} if block else {})}
    nodes = [helper.make_node("DequantizeLinear", inputs, ["wf"], name="dq", **attrs),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())
    return path


def _rules(report, errors=True):
    return {f.rule for f in (report.errors if errors else report.warnings)}


def test_symmetric_blocked_int4_on_k_passes(tmp_path):
    report = check_model(_dq_model(tmp_path / "ok.onnx"))
    assert report.ok, [f.message for f in report.errors]


@pytest.mark.parametrize("kwargs, rule", [
    (dict(dtype=TensorProto.UINT4, zero=8), "dq-dtype"),  # asymmetric quantizer output
    (dict(zero=1), "dq-zero-point"),
    (dict(n=7), "dq-int4-shape"),  # odd last dimension
    (dict(opset=20), "dq-opset"),
    (dict(scale_shape=[3, 8]), "dq-scale"),  # 64 input features are not 3 blocks of 32
    (dict(scale_shape=[2]), "dq-scale"),  # blocked scale of the wrong rank
])
def test_quantized_weights_tensorrt_cannot_parse_are_errors(tmp_path, kwargs, rule):
    report = check_model(_dq_model(tmp_path / "bad.onnx", **kwargs))
    assert rule in _rules(report), [f.message for f in report.errors]


def test_weight_blocked_along_output_channels_and_int8_weight_only_are_warnings(tmp_path):
    report = check_model(_dq_model(tmp_path / "axis1.onnx", scale_shape=[64, 1], axis=1, block=8, n=8))
    assert "dq-block-axis" in _rules(report, errors=False)
    report = check_model(_dq_model(tmp_path / "int8.onnx", dtype=TensorProto.INT8))
    assert report.ok and "dq-int8-weight-only" in _rules(report, errors=False)


def test_select_graphs_follow_the_schedule_precision_in_engines():
    assert builder_flags(GraphKind.SELECT, "fp16", "fp32") == ([], ["TF32"])
    assert builder_flags(GraphKind.SELECT, "fp16", "model") == (["FP16"], [])
    assert builder_flags(GraphKind.SEGMENT, "bf16", "fp32") == (["BF16"], [])
    assert builder_flags(GraphKind.SEGMENT, "fp32", "model") == ([], [])
