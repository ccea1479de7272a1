"""Checks of quantized weights (DequantizeLinear) against what TensorRT 10's ONNX parser accepts.

TensorRT quantization is symmetric: zero points must be zero, and the integer types are the signed ones
(UINT4/UINT8 weights from an asymmetric quantizer do not parse). INT4 is weight-only, with the scale either
per tensor, per channel, or blocked: the same rank as the weight with exactly one axis divided into blocks
(the block size is inferred from the shapes), and an INT4 tensor's last dimension must be even. INT4 and the
`block_size` attribute need ai.onnx opset 21. TensorRT has INT8 weight-only kernels for no version up to 10.x:
it takes INT8 weights with quantized activations, so a weight-only INT8 DequantizeLinear is folded into float
weights at build time (no memory saved); that is a warning.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from .graph import Context, node_attr, node_input
from .rules import dtype_name

QDQ_OPSET = 21  # INT4 tensors and blocked DequantizeLinear
SIGNED = {TensorProto.UINT4: "INT4", TensorProto.UINT8: "INT8"}


def check_dequantize(ctx: Context, node: onnx.NodeProto) -> None:
    """DQ element type, zero point, scale shape and block axis, INT4 even last dimension, opset."""
    data, scale, zero = node_input(node, 0), node_input(node, 1), node_input(node, 2)
    dtype = ctx.dtypes.get(data)
    if dtype in SIGNED:
        ctx.error(node, f"'{data}' is {dtype_name(dtype)}: TensorRT quantization is symmetric and takes "
                  f"{SIGNED[dtype]} only; quantize with is_symmetric=True (trio-export --weights does)", "dq-dtype")
    if zero:
        _check_zero_point(ctx, node, zero)
    if scale and not ctx.is_constant(scale):
        ctx.error(node, f"scale ('{scale}') must be a build-time constant for TensorRT", "dq-scale")
    data_shape, scale_shape = _shape(ctx, data), _shape(ctx, scale)
    if data_shape is not None and scale_shape is not None:
        _check_blocks(ctx, node, data_shape, scale_shape)
    if dtype in (TensorProto.INT4, TensorProto.UINT4):
        if data_shape and data_shape[-1] % 2:
            ctx.error(node, f"INT4 weight '{data}' has an odd last dimension ({data_shape[-1]}); TensorRT needs it "
                      "even", "dq-int4-shape")
        if ctx.opset is not None and ctx.opset < QDQ_OPSET:
            ctx.error(node, f"INT4 DequantizeLinear needs opset {QDQ_OPSET}; the model imports {ctx.opset}", "dq-opset")
    if node_attr(node, "block_size", 0) and ctx.opset is not None and ctx.opset < QDQ_OPSET:
        ctx.error(node, f"blocked DequantizeLinear (block_size) needs opset {QDQ_OPSET}; the model imports "
                  f"{ctx.opset}", "dq-opset")
    if dtype == TensorProto.INT8 and not _feeds_quantized_activation(ctx, node):
        ctx.warn(node, f"'{data}' is an INT8 weight without quantized activations: TensorRT 10 has weight-only "
                 "kernels for INT4 only and folds this into float weights at build time (no memory saved); "
                 "export with --weights int4 for TensorRT", "dq-int8-weight-only")


def _check_zero_point(ctx: Context, node: onnx.NodeProto, zero: str) -> None:
    value = ctx.const_value(zero)
    if value is None and not ctx.is_constant(zero):
        ctx.error(node, f"zero point ('{zero}') must be a constant of zeros for TensorRT", "dq-zero-point")
    elif value is not None and np.any(value != 0):
        ctx.error(node, f"zero point ('{zero}') is not all zeros: TensorRT quantization is symmetric; quantize "
                  "with is_symmetric=True", "dq-zero-point")


def _check_blocks(ctx: Context, node: onnx.NodeProto, data_shape: list, scale_shape: list) -> None:
    """Per tensor (scalar), per channel (1-D along `axis`), or blocked: same rank, one axis divided into
    whole blocks of `block_size`."""
    if len(scale_shape) <= 1 and not node_attr(node, "block_size", 0):
        return
    if len(scale_shape) != len(data_shape):
        ctx.error(node, f"blocked scale has rank {len(scale_shape)} but the weight rank {len(data_shape)}; "
                  "TensorRT needs the same rank", "dq-scale")
        return
    blocked = [axis for axis, (d, s) in enumerate(zip(data_shape, scale_shape)) if d != s]
    block = node_attr(node, "block_size", 0)
    axis = node_attr(node, "axis", 1) % len(data_shape)
    if len(blocked) != 1:
        ctx.error(node, f"scale shape {scale_shape} vs weight {data_shape}: TensorRT needs exactly one blocked "
                  "axis", "dq-scale")
        return
    if blocked[0] != axis:
        ctx.error(node, f"the scale blocks axis {blocked[0]} but the node's axis is {axis}", "dq-scale")
    if block and scale_shape[axis] * block != data_shape[axis]:
        ctx.error(node, f"axis {axis} has {data_shape[axis]} elements, not {scale_shape[axis]} blocks of {block}; "
                  "the block size must divide the input features", "dq-scale")
    if len(data_shape) == 2 and axis != 0 and _feeds_matmul_b(ctx, node):
        ctx.warn(node, f"weight blocked on axis {axis}: a MatMul weight [K, N] is blocked along K (axis 0) for "
                 "TensorRT's INT4 GEMM and ONNX Runtime's MatMulNBits fusion", "dq-block-axis")


def _shape(ctx: Context, name: str) -> list | None:
    tensor = ctx.initializers.get(name)
    if tensor is not None:
        return list(tensor.dims)
    value = ctx.const_value(name)
    return list(value.shape) if value is not None else None


def _consumers(ctx: Context, name: str) -> list[onnx.NodeProto]:
    from .graph import walk_nodes

    return [n for n in walk_nodes(ctx.model.graph) if name in n.input]


def _feeds_matmul_b(ctx: Context, node: onnx.NodeProto) -> bool:
    return any(c.op_type == "MatMul" and node_input(c, 1) == node.output[0] for c in _consumers(ctx, node.output[0]))


def _feeds_quantized_activation(ctx: Context, node: onnx.NodeProto) -> bool:
    """Whether the MatMul this weight feeds also reads a DequantizeLinear output (W8A8, not weight-only)."""
    for consumer in _consumers(ctx, node.output[0]):
        other = node_input(consumer, 0)
        producer = ctx.producers.get(other)
        if producer is not None and producer.op_type == "DequantizeLinear":
            return True
    return False
