"""TensorRT-readiness checks for exported ONNX graphs (trio-check).

TensorRT's builder is not available where we export, so this package reads an exported graph (without
loading its weights) and reports what TensorRT 10's ONNX parser would reject or what our manifest cannot
support: operators outside TensorRT's ONNX support table or breaking a per-op restriction (TopK's K,
control flow, data-dependent shapes, ...); DOUBLE tensors and other element types TensorRT has no type
for; opsets outside the parser's range; symbolic input dimensions the manifest does not declare dynamic;
external-data files that are missing, outside the model's directory, or too short; over-2-GiB protobufs.

Modules: ``rules`` (versions, limits, element types), ``ops`` (the operator table as data, per-op
restrictions, the node check), ``graph`` (the model under check and whole-graph checks), ``report``
(findings and their table). This module holds the entry points.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import onnx

from ...artifact.manifest import read_dynamic_axes, read_fp32_compute
from ...errors import InputError
from .graph import (
    Context,
    check_constant_attr_dtypes,
    check_external_data,
    check_input_dims,
    check_opset,
    check_value_dtypes,
    infer_dtypes,
    node_label,
    walk_nodes,
)
from .ops import OPS, UNSUPPORTED_OPS, OpCheck, OpSpec, check_node
from .report import CheckReport, Finding, format_report
from .rules import (
    IO_ONLY_DTYPES,
    JETSON_ORIN_TENSORRT,
    KNOWN_PLUGIN_DOMAINS,
    OPSET_MAX,
    OPSET_MAX_TRT_10_0,
    OPSET_MIN,
    PROTOBUF_LIMIT_BYTES,
    TENSORRT_SOURCE,
    TENSORRT_VERSION_CHECKED,
    TOPK_MAX_K,
    TRT_DTYPES,
    dtype_name,
    parse_trt_version,
    tensor_nbytes,
)

DEFAULT_TRT_VERSION = parse_trt_version(JETSON_ORIN_TENSORRT)

__all__ = [
    "IO_ONLY_DTYPES", "JETSON_ORIN_TENSORRT", "KNOWN_PLUGIN_DOMAINS", "OPS", "OPSET_MAX", "OPSET_MAX_TRT_10_0",
    "OPSET_MIN", "PROTOBUF_LIMIT_BYTES", "TENSORRT_SOURCE", "TENSORRT_VERSION_CHECKED", "TOPK_MAX_K", "TRT_DTYPES",
    "UNSUPPORTED_OPS", "CheckReport", "Finding", "OpCheck", "OpSpec", "check_directory", "check_model",
    "check_path", "dtype_name", "format_report", "parse_trt_version", "DEFAULT_TRT_VERSION", "node_label", "tensor_nbytes",
]

Axes = dict[str, dict[str, set[int]]] | None  # graph file -> input name -> dynamic axes; None: no manifest


def check_model(path: str | os.PathLike, dynamic_axes: Mapping[str, Iterable[int]] | None = None,
                trt_version: tuple[int, ...] = DEFAULT_TRT_VERSION) -> CheckReport:
    """Check one ONNX file for TensorRT readiness under TensorRT `trt_version`'s rules (default 10.3).

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
        return CheckReport(str(path), [finding], [], trt_version=trt_version)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a finding
        finding = Finding(path.name, "-", "-", f"not a readable ONNX model: {exc}", "load")
        return CheckReport(str(path), [finding], [], trt_version=trt_version)
    ctx = Context(path, model, trt_version)
    check_opset(ctx)
    infer_dtypes(ctx)
    check_input_dims(ctx, dynamic_axes)
    for node in walk_nodes(model.graph):
        check_node(ctx, node)
    check_constant_attr_dtypes(ctx)
    check_value_dtypes(ctx)
    check_external_data(ctx)
    return CheckReport(str(path), ctx.errors, ctx.warnings, max(ctx.needs) if ctx.needs else None,
                       tuple(sorted(ctx.contrib_ops)), trt_version)


def _check_listed_file(directory: Path, rel: str, axes: Axes, manifest_ok: bool,
                       trt_version: tuple[int, ...]) -> CheckReport:
    path = directory / rel
    file_axes = axes.get(rel) if axes else None
    report = check_model(path, file_axes, trt_version)
    if axes is not None and file_axes is None and manifest_ok:
        note = Finding(path.name, "-", "-", "not listed in manifest.json; symbolic input dims "
                       "are only warnings", "manifest")
        report = dataclasses.replace(report, warnings=[note, *report.warnings])
    return report


def _with_precision_note(report: CheckReport, fp32_reason: str | None) -> CheckReport:
    """A graph that must compute in fp32 in an fp16/bf16 engine says so, with why (a warning: it still builds)."""
    if not fp32_reason:
        return report
    note = Finding(Path(report.path).name, "-", "-", "needs fp32 compute: trio-build builds it without FP16/BF16 "
                   f"(fp16 weights and I/O kept); {fp32_reason}", "precision")
    return dataclasses.replace(report, warnings=[note, *report.warnings])


def check_directory(directory: str | os.PathLike, trt_version: tuple[int, ...] = DEFAULT_TRT_VERSION
                    ) -> list[CheckReport]:
    """Check every ``*.onnx`` in ``directory`` (and any graph its manifest.json lists)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    axes, problem = read_dynamic_axes(directory)
    files = {p.name for p in directory.glob("*.onnx") if p.is_file()}
    problems = [Finding("manifest.json", "-", "-", problem, "manifest")] if problem else []
    for rel in sorted(axes or {}):
        target = (directory / rel).resolve()
        if not target.is_relative_to(directory.resolve()) or not target.is_file():
            problems.append(Finding("manifest.json", rel, "-", f"manifest lists '{rel}', which "
                                    "is missing or outside the directory", "manifest"))
        else:
            files.add(rel)
    reports = [_with_precision_note(_check_listed_file(directory, rel, axes, problem is None, trt_version),
                                    read_fp32_compute(directory).get(os.path.normpath(rel)))
               for rel in sorted(files)]
    if problems:
        reports.append(CheckReport(str(directory / "manifest.json"), problems, []))
    return reports


def check_path(path: str | os.PathLike, trt_version: tuple[int, ...] = DEFAULT_TRT_VERSION) -> list[CheckReport]:
    """Check a directory (see :func:`check_directory`) or a single ``.onnx`` file.

    A single file takes its dynamic axes from a ``manifest.json`` beside it
    when that manifest lists it.
    """
    path = Path(path)
    if path.is_dir():
        return check_directory(path, trt_version)
    if not path.is_file():
        raise InputError(f"{path}: no such file or directory")
    if path.suffix != ".onnx":
        raise InputError(f"{path} is neither a directory nor a .onnx file")
    axes, _ = read_dynamic_axes(path.parent)
    return [check_model(path, (axes or {}).get(path.name), trt_version)]
