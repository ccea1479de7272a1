"""Entry points: check one ONNX file, an export directory, or either."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import onnx

from trio_edge.errors import InputError
from trio_edge.export.trt_check import limits
from trio_edge.export.trt_check.context import Context
from trio_edge.export.trt_check.external_data import check_external_data
from trio_edge.export.trt_check.graph_checks import (
    check_constant_attr_dtypes,
    check_input_dims,
    check_opset,
    check_value_dtypes,
    infer_dtypes,
)
from trio_edge.export.trt_check.graph_walk import walk_nodes
from trio_edge.export.trt_check.manifest_axes import Manifest, read_manifest
from trio_edge.export.trt_check.node_checks import check_node
from trio_edge.export.trt_check.report import CheckReport, Finding


def check_model(path: str | os.PathLike, dynamic_axes: Mapping[str, Iterable[int]] | None = None
                ) -> CheckReport:
    """Check one ONNX file for TensorRT readiness.

    ``dynamic_axes`` maps graph input names to the axis indices the manifest
    declares dynamic; any other symbolic input dim is an error. With ``None``
    (no manifest) symbolic dims are only warnings.
    """
    path = Path(path)
    size = path.stat().st_size
    if size >= limits.PROTOBUF_LIMIT_BYTES:
        finding = Finding(path.name, "-", "-", f"single protobuf of {size} bytes is over 2 GiB; "
                          "re-save it with external data (onnx.save_model("
                          "save_as_external_data=True))", "protobuf-size")
        return CheckReport(str(path), [finding], [])
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a finding
        finding = Finding(path.name, "-", "-", f"not a readable ONNX model: {exc}", "load")
        return CheckReport(str(path), [finding], [])
    ctx = Context(path, model)
    check_opset(ctx)
    infer_dtypes(ctx)
    check_input_dims(ctx, dynamic_axes)
    for node in walk_nodes(model.graph):
        check_node(ctx, node)
    check_constant_attr_dtypes(ctx)
    check_value_dtypes(ctx)
    check_external_data(ctx)
    return CheckReport(str(path), ctx.errors, ctx.warnings)


def _check_listed_file(directory: Path, rel: str, manifest: Manifest) -> CheckReport:
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
    manifest = read_manifest(directory)
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
    manifest = read_manifest(path.parent)
    return [check_model(path, (manifest.axes or {}).get(path.name))]
