"""The operator table (TensorRT 10.15's ONNX op support as data), each op's restriction checks, and the
check of one node against the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import onnx

from . import rules
from .graph import Context, node_attr, node_input
from .quantized import check_dequantize
from .rules import (
    DTYPE_ATTRS,
    JETSON_ORIN_TENSORRT,
    KNOWN_PLUGIN_DOMAINS,
    TENSORRT_VERSION_CHECKED,
    TOPK_MAX_K,
    TRT_DTYPES,
    dtype_name,
    dtype_problem,
    dtype_rule,
)

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
    if name and not ctx.is_constant(name) and ctx.trt_version < (10, 7):
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


@dataclass(frozen=True)
class OpSpec:
    """TensorRT support for one ONNX op.

    types: element types the parser lists for the op's typed tensor.
    checks: restriction checks. since: first TensorRT version with the op
    (only set for ops added during 10.x). typed_input: index of the input whose
    dtype ``types`` describes (-1: output 0, for ops without a data input).
    """

    types: frozenset[int]
    checks: tuple[OpCheck, ...] = ()
    since: str | None = None
    typed_input: int = 0


def _op(types: str, *checks: OpCheck, since: str | None = None, typed_input: int = 0) -> OpSpec:
    return OpSpec(rules.types(types), checks, since, typed_input)


_FIB = "F I B"
_REDUCE = _op("F I", constant_input(1, "axes"))

OPS: dict[str, OpSpec] = {
    "Abs": _op("F I"), "Acos": _op("F"), "Acosh": _op("F"), "Add": _op("F I"),
    "And": _op("B"), "ArgMax": _op("F I"), "ArgMin": _op("F I"), "Asin": _op("F"),
    "Asinh": _op("F"), "Atan": _op("F"), "Atanh": _op("F"),
    "Attention": _op("F INT8 FP8", no_extra_outputs(1, "present_key/present_value/qk_matmul"),
                     since="10.14"),
    "AveragePool": _op("F", check_pooling), "BatchNormalization": _op("F"),
    "BlackmanWindow": _op("H", since="10.4", typed_input=-1),
    "Cast": _op("F I U8 B"), "CastLike": _op("F I U8 B"),
    "Ceil": _op("F"), "Celu": _op("F"), "Clip": _op("F"), "Concat": _op(_FIB),
    "Constant": _op("F FP8 FP4 INT4 I B", check_constant, typed_input=-1),
    "ConstantOfShape": _op("F FP8 FP4 INT4 I B", typed_input=-1),
    "Conv": _op("F"), "ConvTranspose": _op("F"), "Cos": _op("F"), "Cosh": _op("F"),
    "CumSum": _op("F", constant_input(1, "axis")),
    "DeformConv": _op("H", since="10.1"), "DepthToSpace": _op("F I"),
    "DequantizeLinear": _op("INT8 FP8 FP4 INT4", check_dequantize), "Div": _op("F I"),
    "Dropout": _op("F", check_dropout), "Einsum": _op("F"), "Elu": _op("F"),
    "Equal": _op("F I"), "Erf": _op("F"), "Exp": _op("F"), "Expand": _op(_FIB),
    "EyeLike": _op(_FIB), "Flatten": _op(_FIB), "Floor": _op("F"),
    "Gather": _op(_FIB), "GatherElements": _op(_FIB), "GatherND": _op(_FIB),
    "Gelu": _op("F INT8 I"), "Gemm": _op("F"),
    "GlobalAveragePool": _op("F"), "GlobalLpPool": _op("F"), "GlobalMaxPool": _op("F"),
    "Greater": _op("F I"), "GreaterOrEqual": _op("F I"), "GridSample": _op("H"),
    "GroupNormalization": _op("F"), "GRU": _op("F"),
    "HammingWindow": _op("H", since="10.4", typed_input=-1),
    "HannWindow": _op("H", since="10.4", typed_input=-1),
    "HardSigmoid": _op("F"), "HardSwish": _op("F"), "Hardmax": _op("F"),
    "Identity": _op(_FIB), "If": _op(_FIB, check_control_flow, typed_input=-1),
    "ImageScaler": _op("F"), "InstanceNormalization": _op("F"), "IsInf": _op("F"),
    "IsNaN": _op("F I"),
    "LayerNormalization": _op("F", no_extra_outputs(1, "Mean/InvStdDev")),
    "LeakyRelu": _op("F"), "Less": _op("F I"), "LessOrEqual": _op("F I"), "Log": _op("F"),
    "LogSoftmax": _op("F"), "Loop": _op(_FIB, check_control_flow, typed_input=-1),
    "LRN": _op("F"),
    "LSTM": _op("F", attr_in("input_forget", (0,), 0), attr_in("layout", (0,), 0)),
    "LpNormalization": _op("F"), "LpPool": _op("F", check_pooling), "MatMul": _op("F"),
    "Max": _op("F I"), "MaxPool": _op("F", check_pooling, no_extra_outputs(1, "Indices")),
    "Mean": _op("F FP8 I"), "MeanVarianceNormalization": _op("F"), "Min": _op("F I"),
    "Mish": _op("H"), "Mod": _op("F I"), "Mul": _op("F I"), "Neg": _op("F I"),
    "NonMaxSuppression": _op("H"), "NonZero": _op("H", check_nonzero), "Not": _op("B"),
    "OneHot": _op(_FIB, constant_input(1, "depth")), "Or": _op("B"), "Pad": _op("F I"),
    "ParametricSoftplus": _op("F"), "Pow": _op("F I"), "PRelu": _op("F"),
    "QuantizeLinear": _op("F"),
    "RandomNormal": _op("F", typed_input=-1), "RandomNormalLike": _op("F", typed_input=-1),
    "RandomUniform": _op("F", typed_input=-1), "RandomUniformLike": _op("F", typed_input=-1),
    "Range": _op("F I"), "Reciprocal": _op("F"),
    "ReduceL1": _REDUCE, "ReduceL2": _REDUCE, "ReduceLogSum": _REDUCE,
    "ReduceLogSumExp": _REDUCE, "ReduceMax": _REDUCE, "ReduceMean": _REDUCE,
    "ReduceMin": _REDUCE, "ReduceProd": _REDUCE, "ReduceSum": _REDUCE,
    "ReduceSumSquare": _REDUCE,
    "Relu": _op("F I"), "Reshape": _op(_FIB), "Resize": _op("F", *RESIZE_CHECKS),
    "ReverseSequence": _op(_FIB), "RMSNormalization": _op("F", since="10.15"),
    "RNN": _op("F"), "RoiAlign": _op("H"), "RotaryEmbedding": _op("F", since="10.15"),
    "Round": _op("F"), "STFT": _op("FP32", constant_input(2, "frame_step"), since="10.5"),
    "ScaledTanh": _op("F"), "Scan": _op("F", check_control_flow, typed_input=-1),
    "Scatter": _op("F I"), "ScatterElements": _op("F I"),
    "ScatterND": _op("F I", attr_in("reduction", ("none",), "none")),
    "Selu": _op("F"), "Shape": _op(_FIB), "Shrink": _op("F I"), "Sigmoid": _op("F"),
    "Sign": _op("F I"), "Sin": _op("F"), "Sinh": _op("F"), "Size": _op(_FIB),
    "Slice": _op(_FIB), "Softmax": _op("F"), "Softplus": _op("F"), "Softsign": _op("F"),
    "SpaceToDepth": _op("F I"), "Split": _op(_FIB), "Sqrt": _op("F"),
    "Squeeze": _op(_FIB, check_dynamic_axes), "Sub": _op("F I"), "Sum": _op("F I"),
    "Tan": _op("F"), "Tanh": _op("F"), "TensorScatter": _op("F I32", since="10.15"),
    "ThresholdedRelu": _op("F"), "Tile": _op(_FIB), "TopK": _op("F I", check_topk),
    "Transpose": _op(_FIB), "Trilu": _op(_FIB),
    "Unsqueeze": _op(_FIB, check_dynamic_axes), "Upsample": _op("F"),
    "Where": _op(_FIB, typed_input=1), "Xor": _op("B"),
}

#: Listed as "N" (not supported) in the TensorRT 10.15 operator table.
UNSUPPORTED_OPS = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr",
    "BitwiseXor", "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger",
    "DFT", "Det", "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger", "MaxRoiPool",
    "MaxUnpool", "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional",
    "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul",
    "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss",
    "SplitToSequence", "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer",
    "Unique",
})


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
    if spec.since and rules.version_tuple(spec.since) > ctx.trt_version:
        ctx.needs.append((rules.version_tuple(spec.since), node.op_type))
        ctx.error(node, f"{node.op_type} needs TensorRT >= {spec.since}; checked for TensorRT "
                  f"{'.'.join(map(str, ctx.trt_version))} (Jetson Orin / JetPack 6 ships {JETSON_ORIN_TENSORRT})",
                  "newer-tensorrt")
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
    if node.domain == rules.ORT_CONTRIB_DOMAIN:
        ctx.contrib_ops.add(node.op_type)
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
