"""TensorRT-readiness checks for exported ONNX graphs.

TensorRT's builder is not available where we export, so this module reads an
exported graph (without loading its weights) and reports what TensorRT 10's
ONNX parser would reject or what our manifest cannot support:

* operators outside TensorRT's ONNX support table, or breaking a per-op
  restriction (TopK's K, control flow, data-dependent shapes, ...);
* DOUBLE tensors and other element types TensorRT has no type for;
* opsets outside the parser's range;
* symbolic input dimensions the manifest does not declare dynamic;
* external-data files that are missing, outside the model's directory, or
  too short for the tensors that point into them; over-2-GiB protobufs.

The operator table is data (``OPS`` / ``UNSUPPORTED_OPS``) encoded from
onnx/onnx-tensorrt ``docs/operators.md`` as of TensorRT 10.15, with per-op
"added in" versions from the project's ``CHANGELOG.md``.

Public API: :func:`check_model`, :func:`check_directory`, :func:`check_path`,
:func:`format_report`, :class:`CheckReport`, :class:`Finding`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, numpy_helper

from trio_edge.errors import InputError

# --------------------------------------------------------------------------
# What we checked against
# --------------------------------------------------------------------------

TENSORRT_VERSION_CHECKED = "10.15"
TENSORRT_SOURCE = (
    "onnx/onnx-tensorrt docs/operators.md ('TensorRT 10.15 supports operators in the "
    "inclusive range of opset 9 to opset 24') and CHANGELOG.md for per-op versions"
)
#: TensorRT on Jetson Orin (JetPack 6.1 / 6.2). Ops added after it only warn.
JETSON_ORIN_TENSORRT = "10.3"
OPSET_MIN = 9
OPSET_MAX = 24
#: Highest opset documented for TensorRT 10.0 (later 10.x parsers accept more).
OPSET_MAX_TRT_10_0 = 20
#: ITopKLayer limit: K <= 3840 (operators.md words it "less than 3840").
TOPK_MAX_K = 3840
#: protobuf cannot serialize or parse a single message of 2 GiB or more.
PROTOBUF_LIMIT_BYTES = 2 * 1024**3
#: Custom-op domains TensorRT's parser resolves through its plugin registry.
KNOWN_PLUGIN_DOMAINS = frozenset({"trt", "trt.plugins"})
#: Small external tensors (e.g. TopK's K) are read to resolve constants.
_MAX_CONST_READ_BYTES = 4096

# --------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------

_T = TensorProto
_TYPE_GROUPS: dict[str, frozenset[int]] = {
    "F": frozenset({_T.FLOAT, _T.FLOAT16, _T.BFLOAT16}),  # FP32, FP16, BF16
    "H": frozenset({_T.FLOAT, _T.FLOAT16}),  # FP32, FP16 only
    "FP32": frozenset({_T.FLOAT}),
    "I": frozenset({_T.INT32, _T.INT64}),
    "I32": frozenset({_T.INT32}),
    "B": frozenset({_T.BOOL}),
    "U8": frozenset({_T.UINT8}),
    "INT8": frozenset({_T.INT8}),
    "FP8": frozenset({_T.FLOAT8E4M3FN}),
    "FP4": frozenset({_T.FLOAT4E2M1}),
    "INT4": frozenset({_T.INT4}),
}

#: Element types TensorRT 10 has a DataType for (INT64 native since 9.0).
TRT_DTYPES = frozenset().union(*_TYPE_GROUPS.values())
#: TensorRT only takes UINT8 as a network input or output.
IO_ONLY_DTYPES = frozenset({_T.UINT8})
_DTYPE_ATTRS = ("to", "dtype", "output_dtype")


def _types(spec: str) -> frozenset[int]:
    return frozenset().union(*(_TYPE_GROUPS[token] for token in spec.split()))


def dtype_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"dtype#{elem_type}"


# --------------------------------------------------------------------------
# Findings and reports
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One problem: where (graph file, node, op type) and what."""

    file: str
    node: str
    op_type: str
    message: str
    rule: str = ""


@dataclass(frozen=True)
class CheckReport:
    """Findings for one graph file; ``ok`` when there are no errors."""

    path: str
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


# --------------------------------------------------------------------------
# Checking context
# --------------------------------------------------------------------------


#: Rules reported once per node/tensor (a Cast to DOUBLE also yields a DOUBLE output).
_ONCE_PER_PLACE = frozenset({"double", "dtype"})


class _Context:
    """A loaded model plus lookups the checks share; collects findings."""

    def __init__(self, path: Path, model: onnx.ModelProto):
        self.path = path
        self.base_dir = path.parent
        self.model = model
        self.opset = _default_opset(model)
        self.errors: list[Finding] = []
        self.warnings: list[Finding] = []
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.checked_functions: set[tuple[str, str]] = set()
        self.initializers = {t.name: t for g in _all_graphs(model.graph) for t in g.initializer}
        nodes = [*_walk_nodes(model.graph), *(n for f in model.functions for n in f.node)]
        self.producers = {o: n for n in nodes for o in n.output if o}
        self.dtypes: dict[str, int] = {}
        self._seen: set[tuple[str, str]] = set()

    def add(self, error: bool, node: onnx.NodeProto | None, message: str, rule: str,
            where: str = "-", op_type: str = "-") -> None:
        if node is not None:
            where, op_type = node_label(node), node.op_type
        if rule in _ONCE_PER_PLACE:
            if (where, rule) in self._seen:
                return
            self._seen.add((where, rule))
        finding = Finding(self.path.name, where, op_type, message, rule)
        (self.errors if error else self.warnings).append(finding)

    def error(self, node, message: str, rule: str, **where) -> None:
        self.add(True, node, message, rule, **where)

    def warn(self, node, message: str, rule: str, **where) -> None:
        self.add(False, node, message, rule, **where)

    def const_value(self, name: str) -> np.ndarray | None:
        """The value of a build-time constant (initializer or Constant output), else None."""
        if not name:
            return None
        if name in self.initializers:
            return _read_tensor(self.initializers[name], self.base_dir)
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return _constant_node_value(node, self.base_dir)
        return None

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or (
            name in self.producers and self.producers[name].op_type == "Constant"
        )


def node_label(node: onnx.NodeProto) -> str:
    if node.name:
        return node.name
    first = next((o for o in node.output if o), "?")
    return f"<unnamed {node.op_type} -> {first}>"


def _default_opset(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return None


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _all_graphs(sub)


def _walk_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for g in _all_graphs(graph):
        yield from g.node


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------
# Tensor helpers (external data aware, never loads big tensors)
# --------------------------------------------------------------------------


def tensor_nbytes(tensor: TensorProto) -> int | None:
    """Bytes the tensor's data takes on disk, from dims and dtype (None if unknown)."""
    count = math.prod(tensor.dims)
    if tensor.data_type in (_T.INT4, _T.UINT4, _T.FLOAT4E2M1):
        return (count + 1) // 2
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return count * itemsize


def _read_tensor(tensor: TensorProto, base_dir: Path) -> np.ndarray | None:
    try:
        if not external_data_helper.uses_external_data(tensor):
            return numpy_helper.to_array(tensor)
        if (tensor_nbytes(tensor) or 0) > _MAX_CONST_READ_BYTES:
            return None
        copy = TensorProto()
        copy.CopyFrom(tensor)
        external_data_helper.load_external_data_for_tensor(copy, str(base_dir))
        copy.data_location = TensorProto.DEFAULT
        del copy.external_data[:]
        return numpy_helper.to_array(copy)
    except Exception:  # noqa: BLE001 - an unreadable constant is reported as "not constant"
        return None


def _constant_node_value(node: onnx.NodeProto, base_dir: Path) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return _read_tensor(attr.t, base_dir)
        if attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
            return np.asarray(onnx.helper.get_attribute_value(attr))
    return None


# --------------------------------------------------------------------------
# Per-op restriction checks (each: check(ctx, node) -> None)
# --------------------------------------------------------------------------

OpCheck = Callable[[_Context, onnx.NodeProto], None]


def _topk_k(ctx: _Context, node: onnx.NodeProto) -> int | None:
    """TopK's K when it is a build-time constant; reports it otherwise."""
    if ctx.opset is not None and ctx.opset < 10:
        return _attr(node, "k")
    name = _input(node, 1)
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


def _check_topk(ctx: _Context, node: onnx.NodeProto) -> None:
    k = _topk_k(ctx, node)
    if k is not None and k > TOPK_MAX_K:
        ctx.error(node, f"K={k} exceeds TensorRT's TopK limit of {TOPK_MAX_K}", "topk-k-limit")
    if _attr(node, "sorted", 1) != 1:
        ctx.error(node, "sorted=0 is not supported; TensorRT's TopK requires sorted=1",
                  "topk-sorted")


def _check_control_flow(ctx: _Context, node: onnx.NodeProto) -> None:
    ctx.error(node, f"control-flow op {node.op_type}: TensorRT parses it only with restrictions "
              "(static loop-carried shapes, same-rank branches) and it blocks layer fusion; "
              "TRIO graphs must be straight-line - unroll it or make the choice outside the "
              "graph", "control-flow")


def _check_nonzero(ctx: _Context, node: onnx.NodeProto) -> None:
    ctx.error(node, "NonZero has a data-dependent output shape (boolean indexing / "
              "masked_select / nonzero export to it); keep a fixed token count with TopK + "
              "Gather or a mask instead", "data-dependent-shape")


def _constant_input(index: int, what: str) -> OpCheck:
    def check(ctx: _Context, node: onnx.NodeProto) -> None:
        name = _input(node, index)
        if name and not ctx.is_constant(name):
            ctx.error(node, f"{what} ('{name}') must be a build-time constant (initializer or "
                      "Constant) for TensorRT", "constant-input")
    return check


def _check_dynamic_axes(ctx: _Context, node: onnx.NodeProto) -> None:
    name = _input(node, 1)
    if name and not ctx.is_constant(name):
        ctx.warn(node, f"axes ('{name}') are not a constant; dynamic axes need TensorRT >= 10.7 "
                 f"(Jetson Orin ships {JETSON_ORIN_TENSORRT})", "dynamic-axes")


def _check_dropout(ctx: _Context, node: onnx.NodeProto) -> None:
    name = _input(node, 2)
    if not name:
        return
    value = ctx.const_value(name)
    if value is None or bool(value.reshape(-1)[0]):
        ctx.error(node, "training_mode must be a constant False (export with model.eval())",
                  "dropout-training")


def _no_extra_outputs(first_allowed: int, what: str) -> OpCheck:
    def check(ctx: _Context, node: onnx.NodeProto) -> None:
        if any(node.output[first_allowed:]):
            ctx.error(node, f"{what} output is not supported by TensorRT", "unsupported-output")
    return check


def _attr_in(name: str, allowed: Iterable, default) -> OpCheck:
    allowed = frozenset(allowed)

    def check(ctx: _Context, node: onnx.NodeProto) -> None:
        value = _attr(node, name, default)
        value = _text(value) if isinstance(value, bytes) else value
        if value not in allowed:
            ctx.error(node, f"{name}={value!r} is not supported by TensorRT "
                      f"(allowed: {sorted(map(str, allowed))})", "unsupported-attribute")
    return check


def _check_pooling(ctx: _Context, node: onnx.NodeProto) -> None:
    kernel = _attr(node, "kernel_shape")
    if kernel is not None and len(kernel) not in (2, 3):
        ctx.error(node, f"{len(kernel)}D pooling: TensorRT pools in 2D or 3D only",
                  "unsupported-attribute")
    if any(d != 1 for d in _attr(node, "dilations", []) or []):
        ctx.error(node, "dilations must be empty or all ones", "unsupported-attribute")


def _check_constant(ctx: _Context, node: onnx.NodeProto) -> None:
    bad = {"sparse_value", "value_string", "value_strings"} & {a.name for a in node.attribute}
    if bad:
        ctx.error(node, f"Constant attribute {sorted(bad)[0]} is not supported", "constant-attr")


_RESIZE_CHECKS = (
    _attr_in("mode", ("nearest", "linear"), "nearest"),
    _attr_in("coordinate_transformation_mode", ("half_pixel", "pytorch_half_pixel",
             "tf_half_pixel_for_nn", "asymmetric", "align_corners"), "half_pixel"),
    _attr_in("nearest_mode", ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"),
             "round_prefer_floor"),
    _attr_in("antialias", (0,), 0),
    _attr_in("keep_aspect_ratio_policy", ("stretch",), "stretch"),
)

# --------------------------------------------------------------------------
# The operator table (TensorRT 10.15 docs/operators.md, encoded as data)
# --------------------------------------------------------------------------


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
    return OpSpec(_types(types), checks, since, typed_input)


_FIB = "F I B"
_REDUCE = _op("F I", _constant_input(1, "axes"))

OPS: dict[str, OpSpec] = {
    "Abs": _op("F I"), "Acos": _op("F"), "Acosh": _op("F"), "Add": _op("F I"),
    "And": _op("B"), "ArgMax": _op("F I"), "ArgMin": _op("F I"), "Asin": _op("F"),
    "Asinh": _op("F"), "Atan": _op("F"), "Atanh": _op("F"),
    "Attention": _op("F INT8 FP8", _no_extra_outputs(1, "present_key/present_value/qk_matmul"),
                     since="10.14"),
    "AveragePool": _op("F", _check_pooling), "BatchNormalization": _op("F"),
    "BlackmanWindow": _op("H", since="10.4", typed_input=-1),
    "Cast": _op("F I U8 B"), "CastLike": _op("F I U8 B"),
    "Ceil": _op("F"), "Celu": _op("F"), "Clip": _op("F"), "Concat": _op(_FIB),
    "Constant": _op("F FP8 FP4 INT4 I B", _check_constant, typed_input=-1),
    "ConstantOfShape": _op("F FP8 FP4 INT4 I B", typed_input=-1),
    "Conv": _op("F"), "ConvTranspose": _op("F"), "Cos": _op("F"), "Cosh": _op("F"),
    "CumSum": _op("F", _constant_input(1, "axis")),
    "DeformConv": _op("H", since="10.1"), "DepthToSpace": _op("F I"),
    "DequantizeLinear": _op("INT8 FP8 FP4 INT4"), "Div": _op("F I"),
    "Dropout": _op("F", _check_dropout), "Einsum": _op("F"), "Elu": _op("F"),
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
    "Identity": _op(_FIB), "If": _op(_FIB, _check_control_flow, typed_input=-1),
    "ImageScaler": _op("F"), "InstanceNormalization": _op("F"), "IsInf": _op("F"),
    "IsNaN": _op("F I"),
    "LayerNormalization": _op("F", _no_extra_outputs(1, "Mean/InvStdDev")),
    "LeakyRelu": _op("F"), "Less": _op("F I"), "LessOrEqual": _op("F I"), "Log": _op("F"),
    "LogSoftmax": _op("F"), "Loop": _op(_FIB, _check_control_flow, typed_input=-1),
    "LRN": _op("F"),
    "LSTM": _op("F", _attr_in("input_forget", (0,), 0), _attr_in("layout", (0,), 0)),
    "LpNormalization": _op("F"), "LpPool": _op("F", _check_pooling), "MatMul": _op("F"),
    "Max": _op("F I"), "MaxPool": _op("F", _check_pooling, _no_extra_outputs(1, "Indices")),
    "Mean": _op("F FP8 I"), "MeanVarianceNormalization": _op("F"), "Min": _op("F I"),
    "Mish": _op("H"), "Mod": _op("F I"), "Mul": _op("F I"), "Neg": _op("F I"),
    "NonMaxSuppression": _op("H"), "NonZero": _op("H", _check_nonzero), "Not": _op("B"),
    "OneHot": _op(_FIB, _constant_input(1, "depth")), "Or": _op("B"), "Pad": _op("F I"),
    "ParametricSoftplus": _op("F"), "Pow": _op("F I"), "PRelu": _op("F"),
    "QuantizeLinear": _op("F"),
    "RandomNormal": _op("F", typed_input=-1), "RandomNormalLike": _op("F", typed_input=-1),
    "RandomUniform": _op("F", typed_input=-1), "RandomUniformLike": _op("F", typed_input=-1),
    "Range": _op("F I"), "Reciprocal": _op("F"),
    "ReduceL1": _REDUCE, "ReduceL2": _REDUCE, "ReduceLogSum": _REDUCE,
    "ReduceLogSumExp": _REDUCE, "ReduceMax": _REDUCE, "ReduceMean": _REDUCE,
    "ReduceMin": _REDUCE, "ReduceProd": _REDUCE, "ReduceSum": _REDUCE,
    "ReduceSumSquare": _REDUCE,
    "Relu": _op("F I"), "Reshape": _op(_FIB), "Resize": _op("F", *_RESIZE_CHECKS),
    "ReverseSequence": _op(_FIB), "RMSNormalization": _op("F", since="10.15"),
    "RNN": _op("F"), "RoiAlign": _op("H"), "RotaryEmbedding": _op("F", since="10.15"),
    "Round": _op("F"), "STFT": _op("FP32", _constant_input(2, "frame_step"), since="10.5"),
    "ScaledTanh": _op("F"), "Scan": _op("F", _check_control_flow, typed_input=-1),
    "Scatter": _op("F I"), "ScatterElements": _op("F I"),
    "ScatterND": _op("F I", _attr_in("reduction", ("none",), "none")),
    "Selu": _op("F"), "Shape": _op(_FIB), "Shrink": _op("F I"), "Sigmoid": _op("F"),
    "Sign": _op("F I"), "Sin": _op("F"), "Sinh": _op("F"), "Size": _op(_FIB),
    "Slice": _op(_FIB), "Softmax": _op("F"), "Softplus": _op("F"), "Softsign": _op("F"),
    "SpaceToDepth": _op("F I"), "Split": _op(_FIB), "Sqrt": _op("F"),
    "Squeeze": _op(_FIB, _check_dynamic_axes), "Sub": _op("F I"), "Sum": _op("F I"),
    "Tan": _op("F"), "Tanh": _op("F"), "TensorScatter": _op("F I32", since="10.15"),
    "ThresholdedRelu": _op("F"), "Tile": _op(_FIB), "TopK": _op("F I", _check_topk),
    "Transpose": _op(_FIB), "Trilu": _op(_FIB),
    "Unsqueeze": _op(_FIB, _check_dynamic_axes), "Upsample": _op("F"),
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


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


# --------------------------------------------------------------------------
# Node checks
# --------------------------------------------------------------------------


def _check_node(ctx: _Context, node: onnx.NodeProto) -> None:
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


def _check_custom_node(ctx: _Context, node: onnx.NodeProto) -> None:
    key = (node.domain, node.op_type)
    if key in ctx.functions:
        if key not in ctx.checked_functions:  # model-local function: TRT inlines it
            ctx.checked_functions.add(key)
            for inner in ctx.functions[key].node:
                _check_node(ctx, inner)
        return
    if node.domain in KNOWN_PLUGIN_DOMAINS:
        ctx.warn(node, f"custom op {node.domain}::{node.op_type} needs a TensorRT plugin named "
                 f"'{node.op_type}' registered when the engine is built", "plugin-op")
        return
    ctx.error(node, f"custom op {node.domain}::{node.op_type}: TensorRT has no importer for "
              f"domain '{node.domain}' and it is not a known TensorRT plugin domain "
              f"({', '.join(sorted(KNOWN_PLUGIN_DOMAINS))})", "custom-op")


def _check_op_types(ctx: _Context, node: onnx.NodeProto, spec: OpSpec) -> None:
    if spec.typed_input < 0:
        name = node.output[0] if node.output else ""
    else:
        name = _input(node, spec.typed_input)
    dtype = ctx.dtypes.get(name)
    if dtype is None or dtype not in TRT_DTYPES or dtype in spec.types:
        return  # unknown, or reported by the dtype check
    listed = ", ".join(dtype_name(t) for t in sorted(spec.types))
    ctx.warn(node, f"'{name}' is {dtype_name(dtype)}; TensorRT lists {node.op_type} for "
             f"{listed} only", "op-dtype")


def _check_dtype_attrs(ctx: _Context, node: onnx.NodeProto) -> None:
    for name in _DTYPE_ATTRS:
        value = _attr(node, name)
        if isinstance(value, int) and value not in TRT_DTYPES:
            ctx.error(node, f"{name}={dtype_name(value)}: {_dtype_problem(value)}",
                      "double" if value == _T.DOUBLE else "dtype")


def _dtype_problem(dtype: int) -> str:
    if dtype == _T.DOUBLE:
        return ("float64 is not allowed: TensorRT would downcast it to float32 with clamping; "
                "export in float32/float16")
    return "TensorRT has no such data type"


# --------------------------------------------------------------------------
# Graph-level checks
# --------------------------------------------------------------------------


def _infer_dtypes(ctx: _Context) -> None:
    model = ctx.model
    try:
        model = onnx.shape_inference.infer_shapes(ctx.model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference is best effort
        ctx.warn(None, f"ONNX shape inference failed ({exc}); intermediate dtypes not checked",
                 "shape-inference")
    for graph in _all_graphs(model.graph):
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                ctx.dtypes[info.name] = info.type.tensor_type.elem_type
        for tensor in graph.initializer:
            ctx.dtypes[tensor.name] = tensor.data_type


def _check_opset(ctx: _Context) -> None:
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


def _check_value_dtypes(ctx: _Context) -> None:
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
        ctx.error(node, f"'{name}' is {dtype_name(dtype)}: {_dtype_problem(dtype)}",
                  "double" if dtype == _T.DOUBLE else "dtype", where=where, op_type=op)


def _check_constant_attr_dtypes(ctx: _Context) -> None:
    for node in _walk_nodes(ctx.model.graph):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type not in TRT_DTYPES:
                dtype = attr.t.data_type
                ctx.error(node, f"attribute '{attr.name}' holds a {dtype_name(dtype)} tensor: "
                          f"{_dtype_problem(dtype)}",
                          "double" if dtype == _T.DOUBLE else "dtype")


def _check_input_dims(ctx: _Context, dynamic_axes: Mapping[str, Iterable[int]] | None) -> None:
    graph = ctx.model.graph
    declared = {k: set(v) for k, v in (dynamic_axes or {}).items()}
    inputs = [i for i in graph.input if i.name not in ctx.initializers]
    for info in inputs:
        _check_one_input(ctx, info, declared.get(info.name, set()), dynamic_axes is None)
    for name in sorted(set(declared) - {i.name for i in inputs}):
        ctx.warn(None, f"manifest declares dynamic axes for '{name}', which is not a graph input",
                 "manifest", where=name, op_type="graph input")


def _check_one_input(ctx: _Context, info: onnx.ValueInfoProto, declared: set[int],
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


# --------------------------------------------------------------------------
# External data
# --------------------------------------------------------------------------


def _external_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    for graph in _all_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def _check_external_data(ctx: _Context) -> None:
    base = ctx.base_dir.resolve()
    bad_locations: set[str] = set()
    for tensor in _external_tensors(ctx.model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if location in bad_locations:
            continue
        problem = _location_problem(base, location)
        if problem:
            bad_locations.add(location)
            ctx.error(None, problem, "external-data", where=tensor.name, op_type="initializer")
            continue
        problem = _extent_problem(base / location, info, tensor)
        if problem:
            ctx.error(None, problem, "external-data", where=tensor.name, op_type="initializer")


def _location_problem(base: Path, location: str) -> str | None:
    if not location:
        return "external data entry has no 'location'"
    if os.path.isabs(location):
        return f"external data location '{location}' is absolute; it must be relative"
    target = (base / location).resolve()
    if os.path.commonpath([str(base), str(target)]) != str(base):
        return f"external data file '{location}' lies outside the model's directory"
    if not target.is_file():
        return f"external data file '{location}' is missing next to the model"
    return None


def _extent_problem(path: Path, info: Mapping[str, str], tensor: TensorProto) -> str | None:
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        return f"external data offset/length are not integers: {dict(info)}"
    needed = tensor_nbytes(tensor)
    if length is not None and needed is not None and length != needed:
        return (f"external data length {length} does not match {needed} bytes for "
                f"{dtype_name(tensor.data_type)}{list(tensor.dims)}")
    extent = length if length is not None else needed
    size = path.stat().st_size
    if offset < 0 or (extent is not None and offset + extent > size):
        return (f"external data [{offset}, {offset + (extent or 0)}) runs past the end of "
                f"'{path.name}' ({size} bytes)")
    return None


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def check_model(path: str | os.PathLike, dynamic_axes: Mapping[str, Iterable[int]] | None = None
                ) -> CheckReport:
    """Check one ONNX file for TensorRT readiness.

    ``dynamic_axes`` maps graph input names to the axis indices the manifest
    declares dynamic; any other symbolic input dim is an error. With ``None``
    (no manifest) symbolic dims are only warnings.
    """
    path = Path(path)
    size = path.stat().st_size
    if size >= PROTOBUF_LIMIT_BYTES:
        finding = Finding(path.name, "-", "-", f"single protobuf of {size} bytes is over 2 GiB; "
                          "re-save it with external data (onnx.save_model("
                          "save_as_external_data=True))", "protobuf-size")
        return CheckReport(str(path), [finding], [])
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a finding
        finding = Finding(path.name, "-", "-", f"not a readable ONNX model: {exc}", "load")
        return CheckReport(str(path), [finding], [])
    ctx = _Context(path, model)
    _check_opset(ctx)
    _infer_dtypes(ctx)
    _check_input_dims(ctx, dynamic_axes)
    for node in _walk_nodes(model.graph):
        _check_node(ctx, node)
    _check_constant_attr_dtypes(ctx)
    _check_value_dtypes(ctx)
    _check_external_data(ctx)
    return CheckReport(str(path), ctx.errors, ctx.warnings)


@dataclass(frozen=True)
class _Manifest:
    axes: dict[str, dict[str, set[int]]] | None  # file -> input -> axes; None: no manifest
    findings: list[Finding]


def _read_manifest(directory: Path) -> _Manifest:
    path = directory / "manifest.json"
    if not path.is_file():
        return _Manifest(None, [])
    try:
        graphs = json.loads(path.read_text())["graphs"]
        if isinstance(graphs, Mapping):  # trio-export writes {graph name: entry}
            graphs = list(graphs.values())
        return _Manifest({_manifest_file(g): _manifest_axes(g) for g in graphs}, [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        message = (f"manifest.json is malformed ({type(exc).__name__}: {exc}); expected "
                   "{'graphs': {name: {'file', 'inputs': [{'name', 'dynamic_axes'}]}}}")
        return _Manifest({}, [Finding("manifest.json", "-", "-", message, "manifest")])


def _manifest_file(entry: Mapping) -> str:
    return os.path.normpath(str(entry["file"]))


def _manifest_axes(entry: Mapping) -> dict[str, set[int]]:
    axes = {}
    for item in entry["inputs"]:
        values = item.get("dynamic_axes") or []
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TypeError(f"dynamic_axes of '{item['name']}' must be a list of ints")
        axes[str(item["name"])] = set(values)
    return axes


def _check_listed_file(directory: Path, rel: str, manifest: _Manifest) -> CheckReport:
    path = directory / rel
    axes = manifest.axes.get(rel) if manifest.axes else None
    report = check_model(path, axes)
    if manifest.axes is not None and axes is None and not manifest.findings:
        note = Finding(path.name, "-", "-", "not listed in manifest.json; symbolic input dims "
                       "are only warnings", "manifest")
        report = dataclasses.replace(report, warnings=[note, *report.warnings])
    return report


def check_directory(directory: str | os.PathLike) -> list[CheckReport]:
    """Check every ``*.onnx`` in ``directory`` (and any graph its manifest.json lists)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    manifest = _read_manifest(directory)
    files = {p.name for p in directory.glob("*.onnx") if p.is_file()}
    problems = list(manifest.findings)
    for rel in sorted(manifest.axes or {}):
        target = (directory / rel).resolve()
        if not target.is_relative_to(directory.resolve()) or not target.is_file():
            problems.append(Finding("manifest.json", rel, "-", f"manifest lists '{rel}', which "
                                    "is missing or outside the directory", "manifest"))
        else:
            files.add(rel)
    reports = [_check_listed_file(directory, rel, manifest) for rel in sorted(files)]
    if problems:
        reports.append(CheckReport(str(directory / "manifest.json"), problems, []))
    return reports


def check_path(path: str | os.PathLike) -> list[CheckReport]:
    """Check a directory (see :func:`check_directory`) or a single ``.onnx`` file.

    A single file takes its dynamic axes from a ``manifest.json`` beside it
    when that manifest lists it.
    """
    path = Path(path)
    if path.is_dir():
        return check_directory(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file or directory")
    if path.suffix != ".onnx":
        raise InputError(f"{path} is neither a directory nor a .onnx file")
    manifest = _read_manifest(path.parent)
    return [check_model(path, (manifest.axes or {}).get(path.name))]


def format_report(report: CheckReport) -> str:
    """A human-readable per-node table of the report's errors and warnings."""
    status = "OK" if report.ok else "FAIL"
    head = (f"{report.path}: {status} - {len(report.errors)} error(s), "
            f"{len(report.warnings)} warning(s) [TensorRT {TENSORRT_VERSION_CHECKED} rules]")
    rows = [("ERROR", f) for f in report.errors] + [("warning", f) for f in report.warnings]
    if not rows:
        return head
    table = [("severity", "node", "op", "message")]
    table += [(sev, f.node, f.op_type, f.message) for sev, f in rows]
    widths = [min(max(len(r[i]) for r in table), 48) for i in range(3)]
    lines = [head]
    for i, row in enumerate(table):
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths)]
        lines.append("  " + "  ".join(cells + [row[3]]))
        if i == 0:
            lines.append("  " + "  ".join("-" * w for w in widths + [7]))
    return "\n".join(lines)
