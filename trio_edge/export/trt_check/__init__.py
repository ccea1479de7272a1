"""TensorRT-readiness checks for exported ONNX graphs.

TensorRT's builder is not available where we export, so this package reads an
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

Modules: ``limits`` (versions and limits checked against), ``report``
(findings, reports, table), ``dtypes``, ``graph_walk``, ``context``,
``op_checks`` / ``op_table`` (the operator table and per-op restrictions),
``node_checks``, ``graph_checks``, ``external_data``, ``manifest_axes``,
``checker`` (the entry points).
"""

from trio_edge.export.trt_check.checker import check_directory, check_model, check_path
from trio_edge.export.trt_check.dtypes import (
    IO_ONLY_DTYPES,
    TRT_DTYPES,
    dtype_name,
    tensor_nbytes,
)
from trio_edge.export.trt_check.graph_walk import node_label
from trio_edge.export.trt_check.limits import (
    JETSON_ORIN_TENSORRT,
    KNOWN_PLUGIN_DOMAINS,
    OPSET_MAX,
    OPSET_MAX_TRT_10_0,
    OPSET_MIN,
    PROTOBUF_LIMIT_BYTES,
    TENSORRT_SOURCE,
    TENSORRT_VERSION_CHECKED,
    TOPK_MAX_K,
)
from trio_edge.export.trt_check.op_checks import OpCheck
from trio_edge.export.trt_check.op_table import OPS, UNSUPPORTED_OPS, OpSpec
from trio_edge.export.trt_check.report import CheckReport, Finding, format_report

__all__ = [
    "IO_ONLY_DTYPES",
    "JETSON_ORIN_TENSORRT",
    "KNOWN_PLUGIN_DOMAINS",
    "OPS",
    "OPSET_MAX",
    "OPSET_MAX_TRT_10_0",
    "OPSET_MIN",
    "PROTOBUF_LIMIT_BYTES",
    "TENSORRT_SOURCE",
    "TENSORRT_VERSION_CHECKED",
    "TOPK_MAX_K",
    "TRT_DTYPES",
    "UNSUPPORTED_OPS",
    "CheckReport",
    "Finding",
    "OpCheck",
    "OpSpec",
    "check_directory",
    "check_model",
    "check_path",
    "dtype_name",
    "format_report",
    "node_label",
    "tensor_nbytes",
]
