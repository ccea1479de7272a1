"""Per-op restriction checks of TensorRT's ONNX parser (each: ``check(ctx, node) -> None``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import onnx

from trio_edge.export.trt_check.context import Context
from trio_edge.export.trt_check.graph_walk import node_attr, node_input
from trio_edge.export.trt_check.limits import JETSON_ORIN_TENSORRT, TOPK_MAX_K

OpCheck = Callable[[Context, onnx.NodeProto], None]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _topk_k(ctx: Context, node: onnx.NodeProto) -> int | None:
    """TopK's K when it is a build-time constant; reports it otherwise."""
    if ctx.opset is not None and ctx.opset < 10:
        return node_attr(node, "k")
    name = node_input(node, 1)
    value = ctx.const_value(name)
    if value is None:
        ctx.error(node, f"K ('{name}') is computed at run time; it must be a constant "
                  f"initializer so the build can check K <= {TOPK_MAX_K} (argsort/sort over a "
                  "dynamic axis exports this way)", "topk-k-constant")
        return None
    if value.size != 1:
        ctx.error(node, f"K ('{name}') must hold exactly one value, got shape {list(value.shape)}",
                  "topk-k-constant")
        return None
    return int(value.reshape(-1)[0])


def check_topk(ctx: Context, node: onnx.NodeProto) -> None:
    k = _topk_k(ctx, node)
    if k is not None and k > TOPK_MAX_K:
        ctx.error(node, f"K={k} exceeds TensorRT's TopK limit of {TOPK_MAX_K}", "topk-k-limit")
    if node_attr(node, "sorted", 1) != 1:
        ctx.error(node, "sorted=0 is not supported; TensorRT's TopK requires sorted=1",
                  "topk-sorted")


def check_control_flow(ctx: Context, node: onnx.NodeProto) -> None:
    ctx.error(node, f"control-flow op {node.op_type}: TensorRT parses it only with restrictions "
              "(static loop-carried shapes, same-rank branches) and it blocks layer fusion; "
              "TRIO graphs must be straight-line - unroll it or make the choice outside the "
              "graph", "control-flow")


def check_nonzero(ctx: Context, node: onnx.NodeProto) -> None:
    ctx.error(node, "NonZero has a data-dependent output shape (boolean indexing / "
              "masked_select / nonzero export to it); keep a fixed token count with TopK + "
              "Gather or a mask instead", "data-dependent-shape")


def constant_input(index: int, what: str) -> OpCheck:
    def check(ctx: Context, node: onnx.NodeProto) -> None:
        name = node_input(node, index)
        if name and not ctx.is_constant(name):
            ctx.error(node, f"{what} ('{name}') must be a build-time constant (initializer or "
                      "Constant) for TensorRT", "constant-input")
    return check


def check_dynamic_axes(ctx: Context, node: onnx.NodeProto) -> None:
    name = node_input(node, 1)
    if name and not ctx.is_constant(name):
        ctx.warn(node, f"axes ('{name}') are not a constant; dynamic axes need TensorRT >= 10.7 "
                 f"(Jetson Orin ships {JETSON_ORIN_TENSORRT})", "dynamic-axes")


def check_dropout(ctx: Context, node: onnx.NodeProto) -> None:
    name = node_input(node, 2)
    if not name:
        return
    value = ctx.const_value(name)
    if value is None or bool(value.reshape(-1)[0]):
        ctx.error(node, "training_mode must be a constant False (export with model.eval())",
                  "dropout-training")


def no_extra_outputs(first_allowed: int, what: str) -> OpCheck:
    def check(ctx: Context, node: onnx.NodeProto) -> None:
        if any(node.output[first_allowed:]):
            ctx.error(node, f"{what} output is not supported by TensorRT", "unsupported-output")
    return check


def attr_in(name: str, allowed: Iterable, default) -> OpCheck:
    allowed = frozenset(allowed)

    def check(ctx: Context, node: onnx.NodeProto) -> None:
        value = node_attr(node, name, default)
        value = _text(value) if isinstance(value, bytes) else value
        if value not in allowed:
            ctx.error(node, f"{name}={value!r} is not supported by TensorRT "
                      f"(allowed: {sorted(map(str, allowed))})", "unsupported-attribute")
    return check


def check_pooling(ctx: Context, node: onnx.NodeProto) -> None:
    kernel = node_attr(node, "kernel_shape")
    if kernel is not None and len(kernel) not in (2, 3):
        ctx.error(node, f"{len(kernel)}D pooling: TensorRT pools in 2D or 3D only",
                  "unsupported-attribute")
    if any(d != 1 for d in node_attr(node, "dilations", []) or []):
        ctx.error(node, "dilations must be empty or all ones", "unsupported-attribute")


def check_constant(ctx: Context, node: onnx.NodeProto) -> None:
    bad = {"sparse_value", "value_string", "value_strings"} & {a.name for a in node.attribute}
    if bad:
        ctx.error(node, f"Constant attribute {sorted(bad)[0]} is not supported", "constant-attr")


RESIZE_CHECKS = (
    attr_in("mode", ("nearest", "linear"), "nearest"),
    attr_in("coordinate_transformation_mode", ("half_pixel", "pytorch_half_pixel",
            "tf_half_pixel_for_nn", "asymmetric", "align_corners"), "half_pixel"),
    attr_in("nearest_mode", ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"),
            "round_prefer_floor"),
    attr_in("antialias", (0,), 0),
    attr_in("keep_aspect_ratio_policy", ("stretch",), "stretch"),
)
