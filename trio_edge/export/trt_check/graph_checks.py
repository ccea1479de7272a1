"""Whole-graph checks: opset, element types of values and attributes, input dimensions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx

from trio_edge.export.trt_check.context import Context
from trio_edge.export.trt_check.dtypes import (
    IO_ONLY_DTYPES,
    TRT_DTYPES,
    dtype_name,
    dtype_problem,
    dtype_rule,
)
from trio_edge.export.trt_check.graph_walk import all_graphs, walk_nodes
from trio_edge.export.trt_check.limits import (
    JETSON_ORIN_TENSORRT,
    OPSET_MAX,
    OPSET_MAX_TRT_10_0,
    OPSET_MIN,
    TENSORRT_VERSION_CHECKED,
)


def infer_dtypes(ctx: Context) -> None:
    model = ctx.model
    try:
        model = onnx.shape_inference.infer_shapes(ctx.model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference is best effort
        ctx.warn(None, f"ONNX shape inference failed ({exc}); intermediate dtypes not checked",
                 "shape-inference")
    for graph in all_graphs(model.graph):
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                ctx.dtypes[info.name] = info.type.tensor_type.elem_type
        for tensor in graph.initializer:
            ctx.dtypes[tensor.name] = tensor.data_type


def check_opset(ctx: Context) -> None:
    opset = ctx.opset
    if opset is None:
        ctx.error(None, "model imports no default-domain opset", "opset")
    elif not OPSET_MIN <= opset <= OPSET_MAX:
        ctx.error(None, f"opset {opset} is outside TensorRT {TENSORRT_VERSION_CHECKED}'s range "
                  f"{OPSET_MIN}..{OPSET_MAX}", "opset")
    elif opset > OPSET_MAX_TRT_10_0:
        ctx.warn(None, f"opset {opset}: TensorRT 10.0 documented opsets up to "
                 f"{OPSET_MAX_TRT_10_0} only; check the parser on the Jetson "
                 f"(TensorRT {JETSON_ORIN_TENSORRT}) accepts it", "opset")


def check_value_dtypes(ctx: Context) -> None:
    graph = ctx.model.graph
    io_names = {v.name for v in (*graph.input, *graph.output)}
    for name, dtype in ctx.dtypes.items():
        if dtype in TRT_DTYPES and dtype not in IO_ONLY_DTYPES:
            continue
        node, where, op = ctx.producers.get(name), "-", "-"
        if node is None:
            kind = "initializer" if name in ctx.initializers else "graph input"
            where, op = name, kind
        if dtype in IO_ONLY_DTYPES:
            if name not in io_names:
                ctx.warn(node, f"'{name}' is {dtype_name(dtype)}: TensorRT takes UINT8 only "
                         "as a network input/output", "dtype", where=where, op_type=op)
            continue
        ctx.error(node, f"'{name}' is {dtype_name(dtype)}: {dtype_problem(dtype)}",
                  dtype_rule(dtype), where=where, op_type=op)


def check_constant_attr_dtypes(ctx: Context) -> None:
    for node in walk_nodes(ctx.model.graph):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type not in TRT_DTYPES:
                dtype = attr.t.data_type
                ctx.error(node, f"attribute '{attr.name}' holds a {dtype_name(dtype)} tensor: "
                          f"{dtype_problem(dtype)}", dtype_rule(dtype))


def check_input_dims(ctx: Context, dynamic_axes: Mapping[str, Iterable[int]] | None) -> None:
    graph = ctx.model.graph
    declared = {k: set(v) for k, v in (dynamic_axes or {}).items()}
    inputs = [i for i in graph.input if i.name not in ctx.initializers]
    for info in inputs:
        _check_one_input(ctx, info, declared.get(info.name, set()), dynamic_axes is None)
    for name in sorted(set(declared) - {i.name for i in inputs}):
        ctx.warn(None, f"manifest declares dynamic axes for '{name}', which is not a graph input",
                 "manifest", where=name, op_type="graph input")


def _check_one_input(ctx: Context, info: onnx.ValueInfoProto, declared: set[int],
                     no_manifest: bool) -> None:
    where = {"where": info.name, "op_type": "graph input"}
    report = ctx.warn if no_manifest else ctx.error
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        report(None, f"input '{info.name}' has no shape (unknown rank)", "static-dims", **where)
        return
    dims = tensor_type.shape.dim
    for axis, dim in enumerate(dims):
        symbolic = not dim.HasField("dim_value")
        label = dim.dim_param or "?"
        if symbolic and axis not in declared:
            hint = ("no manifest declares it dynamic" if no_manifest
                    else "the manifest does not declare this axis dynamic")
            report(None, f"input '{info.name}' axis {axis} is symbolic ('{label}') but {hint}; "
                   "TensorRT would need an optimization profile for it", "static-dims", **where)
        elif not symbolic and axis in declared:
            ctx.warn(None, f"manifest declares axis {axis} of '{info.name}' dynamic, but the "
                     f"graph fixes it to {dim.dim_value}", "manifest", **where)
    for axis in sorted(a for a in declared if not 0 <= a < len(dims)):
        ctx.error(None, f"manifest declares axis {axis} of '{info.name}' dynamic, but the input "
                  f"has rank {len(dims)}", "manifest", **where)
