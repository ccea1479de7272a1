"""The operator table: TensorRT 10.15's ONNX op support, encoded as data.

From onnx/onnx-tensorrt ``docs/operators.md``, with per-op "added in" versions
from the project's ``CHANGELOG.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from trio_edge.export.trt_check import dtypes
from trio_edge.export.trt_check.op_checks import (
    RESIZE_CHECKS,
    OpCheck,
    attr_in,
    check_constant,
    check_control_flow,
    check_dropout,
    check_dynamic_axes,
    check_nonzero,
    check_pooling,
    check_topk,
    constant_input,
    no_extra_outputs,
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
    return OpSpec(dtypes.types(types), checks, since, typed_input)


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
    "DequantizeLinear": _op("INT8 FP8 FP4 INT4"), "Div": _op("F I"),
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
