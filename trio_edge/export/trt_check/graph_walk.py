"""Graph traversal (subgraphs included) and small node accessors."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


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
