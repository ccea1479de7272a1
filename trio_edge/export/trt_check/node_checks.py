"""Checks of one node against the operator table (custom domains and local functions too)."""

from __future__ import annotations

import onnx

from trio_edge.export.trt_check.context import Context
from trio_edge.export.trt_check.dtypes import (
    DTYPE_ATTRS,
    TRT_DTYPES,
    dtype_name,
    dtype_problem,
    dtype_rule,
)
from trio_edge.export.trt_check.graph_walk import node_attr, node_input
from trio_edge.export.trt_check.limits import (
    JETSON_ORIN_TENSORRT,
    KNOWN_PLUGIN_DOMAINS,
    TENSORRT_VERSION_CHECKED,
)
from trio_edge.export.trt_check.op_table import OPS, UNSUPPORTED_OPS, OpSpec


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def check_node(ctx: Context, node: onnx.NodeProto) -> None:
    if node.domain not in ("", "ai.onnx"):
        _check_custom_node(ctx, node)
        return
    spec = OPS.get(node.op_type)
    if spec is None:
        why = ("is marked unsupported" if node.op_type in UNSUPPORTED_OPS
               else "is not in the operator table")
        ctx.error(node, f"{node.op_type} {why} of TensorRT {TENSORRT_VERSION_CHECKED}'s ONNX "
                  "parser", "unsupported-op")
        return
    if spec.since and _version(spec.since) > _version(JETSON_ORIN_TENSORRT):
        ctx.warn(node, f"{node.op_type} needs TensorRT >= {spec.since}; Jetson Orin "
                 f"(JetPack 6) ships TensorRT {JETSON_ORIN_TENSORRT}", "newer-tensorrt")
    _check_op_types(ctx, node, spec)
    _check_dtype_attrs(ctx, node)
    for check in spec.checks:
        check(ctx, node)


def _check_custom_node(ctx: Context, node: onnx.NodeProto) -> None:
    key = (node.domain, node.op_type)
    if key in ctx.functions:
        if key not in ctx.checked_functions:  # model-local function: TRT inlines it
            ctx.checked_functions.add(key)
            for inner in ctx.functions[key].node:
                check_node(ctx, inner)
        return
    if node.domain in KNOWN_PLUGIN_DOMAINS:
        ctx.warn(node, f"custom op {node.domain}::{node.op_type} needs a TensorRT plugin named "
                 f"'{node.op_type}' registered when the engine is built", "plugin-op")
        return
    ctx.error(node, f"custom op {node.domain}::{node.op_type}: TensorRT has no importer for "
              f"domain '{node.domain}' and it is not a known TensorRT plugin domain "
              f"({', '.join(sorted(KNOWN_PLUGIN_DOMAINS))})", "custom-op")


def _check_op_types(ctx: Context, node: onnx.NodeProto, spec: OpSpec) -> None:
    if spec.typed_input < 0:
        name = node.output[0] if node.output else ""
    else:
        name = node_input(node, spec.typed_input)
    dtype = ctx.dtypes.get(name)
    if dtype is None or dtype not in TRT_DTYPES or dtype in spec.types:
        return  # unknown, or reported by the dtype check
    listed = ", ".join(dtype_name(t) for t in sorted(spec.types))
    ctx.warn(node, f"'{name}' is {dtype_name(dtype)}; TensorRT lists {node.op_type} for "
             f"{listed} only", "op-dtype")


def _check_dtype_attrs(ctx: Context, node: onnx.NodeProto) -> None:
    for name in DTYPE_ATTRS:
        value = node_attr(node, name)
        if isinstance(value, int) and value not in TRT_DTYPES:
            ctx.error(node, f"{name}={dtype_name(value)}: {dtype_problem(value)}",
                      dtype_rule(value))
