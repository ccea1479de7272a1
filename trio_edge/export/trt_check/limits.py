"""What the checks were written against: TensorRT versions, opset range, size limits."""

from __future__ import annotations

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
MAX_CONST_READ_BYTES = 4096
