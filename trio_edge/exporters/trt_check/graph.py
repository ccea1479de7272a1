"""One loaded ONNX model under check: traversal, the lookups checks share, and the whole-graph checks
(opset, element types of values and attributes, input dimensions, external data).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, numpy_helper

from .report import Finding
from .rules import (
    IO_ONLY_DTYPES,
    JETSON_ORIN_TENSORRT,
    MAX_CONST_READ_BYTES,
    OPSET_MAX,
    OPSET_MAX_TRT_10_0,
    OPSET_MIN,
    TENSORRT_VERSION_CHECKED,
    TRT_DTYPES,
    dtype_name,
    dtype_problem,
    dtype_rule,
    tensor_nbytes,
)


def node_label(node: onnx.NodeProto) -> str:
    if node.name:
        return node.name
    first = next((o for o in node.output if o), "?")
    return f"<unnamed {node.op_type} -> {first}>"


def default_opset(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return None


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def walk_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for g in all_graphs(graph):
        yield from g.node


def node_attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def node_input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


#: Rules reported once per node/tensor (a Cast to DOUBLE also yields a DOUBLE output).
_ONCE_PER_PLACE = frozenset({"double", "dtype"})


class Context:
    """A loaded model plus lookups the checks share; collects findings."""

    def __init__(self, path: Path, model: onnx.ModelProto, trt_version: tuple[int, ...] = (10, 3)):
        self.path = path
        self.trt_version = trt_version  # the TensorRT whose rules apply (--trt-version)
        self.needs: list[tuple[tuple[int, ...], str]] = []  # (TensorRT version, op) of ops newer than trt_version
        self.contrib_ops: set[str] = set()  # ONNX Runtime contrib ops (a --target onnxruntime export)
        self.base_dir = path.parent
        self.model = model
        self.opset = default_opset(model)
        self.errors: list[Finding] = []
        self.warnings: list[Finding] = []
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.checked_functions: set[tuple[str, str]] = set()
        self.initializers = {t.name: t for g in all_graphs(model.graph) for t in g.initializer}
        nodes = [*walk_nodes(model.graph), *(n for f in model.functions for n in f.node)]
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


def _read_tensor(tensor: TensorProto, base_dir: Path) -> np.ndarray | None:
    """A tensor's value, external data included, unless it is big (never loads weights)."""
    try:
        if not external_data_helper.uses_external_data(tensor):
            return numpy_helper.to_array(tensor)
        if (tensor_nbytes(tensor) or 0) > MAX_CONST_READ_BYTES:
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


def infer_dtypes(ctx: Context) -> None:
    model = ctx.model
    try:
        model = onnx.shape_inference.infer_shapes(ctx.model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference is best effort
        ctx.warn(None, f"ONNX shape inference failed ({exc}); intermediate dtypes not checked",
                 "shape-inference")
    for graph in all_graphs(model.graph):
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                ctx.dtypes[info.name] = info.type.tensor_type.elem_type
        for tensor in graph.initializer:
            ctx.dtypes[tensor.name] = tensor.data_type


def check_opset(ctx: Context) -> None:
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


def check_value_dtypes(ctx: Context) -> None:
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
        ctx.error(node, f"'{name}' is {dtype_name(dtype)}: {dtype_problem(dtype)}",
                  dtype_rule(dtype), where=where, op_type=op)


def check_constant_attr_dtypes(ctx: Context) -> None:
    for node in walk_nodes(ctx.model.graph):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type not in TRT_DTYPES:
                dtype = attr.t.data_type
                ctx.error(node, f"attribute '{attr.name}' holds a {dtype_name(dtype)} tensor: "
                          f"{dtype_problem(dtype)}", dtype_rule(dtype))


def check_input_dims(ctx: Context, dynamic_axes: Mapping[str, Iterable[int]] | None) -> None:
    graph = ctx.model.graph
    declared = {k: set(v) for k, v in (dynamic_axes or {}).items()}
    inputs = [i for i in graph.input if i.name not in ctx.initializers]
    for info in inputs:
        _check_one_input(ctx, info, declared.get(info.name, set()), dynamic_axes is None)
    for name in sorted(set(declared) - {i.name for i in inputs}):
        ctx.warn(None, f"manifest declares dynamic axes for '{name}', which is not a graph input",
                 "manifest", where=name, op_type="graph input")


def _check_one_input(ctx: Context, info: onnx.ValueInfoProto, declared: set[int],
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
