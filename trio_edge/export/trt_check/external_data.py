"""External-data checks: every referenced file present, inside the model's directory, long enough."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import onnx
from onnx import TensorProto, external_data_helper

from trio_edge.export.trt_check.context import Context
from trio_edge.export.trt_check.dtypes import dtype_name, tensor_nbytes
from trio_edge.export.trt_check.graph_walk import all_graphs


def _external_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    for graph in all_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def check_external_data(ctx: Context) -> None:
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
