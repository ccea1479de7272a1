"""The checking context: a loaded model, the lookups the checks share, and its findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, numpy_helper

from trio_edge.export.trt_check.dtypes import tensor_nbytes
from trio_edge.export.trt_check.graph_walk import (
    all_graphs,
    default_opset,
    node_label,
    walk_nodes,
)
from trio_edge.export.trt_check.limits import MAX_CONST_READ_BYTES
from trio_edge.export.trt_check.report import Finding

#: Rules reported once per node/tensor (a Cast to DOUBLE also yields a DOUBLE output).
_ONCE_PER_PLACE = frozenset({"double", "dtype"})


class Context:
    """A loaded model plus lookups the checks share; collects findings."""

    def __init__(self, path: Path, model: onnx.ModelProto):
        self.path = path
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
