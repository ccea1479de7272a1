"""What TensorRT's ONNX parser accepts, as data: versions and limits, element types.

From onnx/onnx-tensorrt ``docs/operators.md`` (TensorRT 10.15) and its ``CHANGELOG.md``.
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto

from ...errors import InputError
# ITopKLayer limit, re-exported: K <= 3840 (operators.md words it "less than 3840")
from ...graph_ops import TOPK_MAX_K as TOPK_MAX_K

TENSORRT_VERSION_CHECKED = "10.15"
TENSORRT_SOURCE = (
    "onnx/onnx-tensorrt docs/operators.md ('TensorRT 10.15 supports operators in the "
    "inclusive range of opset 9 to opset 24') and CHANGELOG.md for per-op versions"
)
#: TensorRT on Jetson Orin (JetPack 6.1 / 6.2): trio-check's default --trt-version.
JETSON_ORIN_TENSORRT = "10.3"
#: The oldest TensorRT whose rules trio-check knows (versions above TENSORRT_VERSION_CHECKED get its rules).
OLDEST_TENSORRT = "10.0"
#: ONNX Runtime's contrib-op domain (--target onnxruntime exports): no TensorRT importer exists for it.
ORT_CONTRIB_DOMAIN = "com.microsoft"
OPSET_MIN = 9
OPSET_MAX = 24
#: Highest opset documented for TensorRT 10.0 (later 10.x parsers accept more).
OPSET_MAX_TRT_10_0 = 20
#: protobuf cannot serialize or parse a single message of 2 GiB or more.
PROTOBUF_LIMIT_BYTES = 2 * 1024**3
#: Custom-op domains TensorRT's parser resolves through its plugin registry.
KNOWN_PLUGIN_DOMAINS = frozenset({"trt", "trt.plugins"})
#: Small external tensors (e.g. TopK's K) are read to resolve constants.
MAX_CONST_READ_BYTES = 4096


T = TensorProto
_TYPE_GROUPS: dict[str, frozenset[int]] = {
    "F": frozenset({T.FLOAT, T.FLOAT16, T.BFLOAT16}),  # FP32, FP16, BF16
    "H": frozenset({T.FLOAT, T.FLOAT16}),  # FP32, FP16 only
    "FP32": frozenset({T.FLOAT}),
    "I": frozenset({T.INT32, T.INT64}),
    "I32": frozenset({T.INT32}),
    "B": frozenset({T.BOOL}),
    "U8": frozenset({T.UINT8}),
    "INT8": frozenset({T.INT8}),
    "FP8": frozenset({T.FLOAT8E4M3FN}),
    "FP4": frozenset({T.FLOAT4E2M1}),
    "INT4": frozenset({T.INT4}),
}

#: Element types TensorRT 10 has a DataType for (INT64 native since 9.0).
TRT_DTYPES = frozenset().union(*_TYPE_GROUPS.values())
#: TensorRT only takes UINT8 as a network input or output.
IO_ONLY_DTYPES = frozenset({T.UINT8})
#: Node attributes that name an element type (Cast's ``to``, ...).
DTYPE_ATTRS = ("to", "dtype", "output_dtype")


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def parse_trt_version(text: str) -> tuple[int, ...]:
    """A --trt-version value ('10.3', '10.3.0') as a tuple; InputError for anything else or below OLDEST_TENSORRT."""
    parts = str(text).split(".")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise InputError(f"--trt-version must look like 10.3 (MAJOR.MINOR), got {text!r}")
    version = tuple(int(p) for p in parts[:2])
    if version < version_tuple(OLDEST_TENSORRT):
        raise InputError(f"--trt-version {text}: trio-check knows the ONNX rules of TensorRT {OLDEST_TENSORRT} and "
                         "newer only (trio-edge needs TensorRT 10)")
    return version


def types(spec: str) -> frozenset[int]:
    """The element types of a space-separated list of group names ("F I B")."""
    return frozenset().union(*(_TYPE_GROUPS[token] for token in spec.split()))


def dtype_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"dtype#{elem_type}"


def dtype_problem(dtype: int) -> str:
    if dtype == T.DOUBLE:
        return ("float64 is not allowed: TensorRT would downcast it to float32 with clamping; "
                "export in float32/float16")
    return "TensorRT has no such data type"


def dtype_rule(dtype: int) -> str:
    """The rule a bad element type is reported under."""
    return "double" if dtype == T.DOUBLE else "dtype"


def tensor_nbytes(tensor: TensorProto) -> int | None:
    """Bytes the tensor's data takes on disk, from dims and dtype (None if unknown)."""
    count = math.prod(tensor.dims)
    if tensor.data_type in (T.INT4, T.UINT4, T.FLOAT4E2M1):
        return (count + 1) // 2
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return count * itemsize
