"""Graph forms that ONNX Runtime runs in less host memory, made when a graph is opened (the export's files are
never changed; the values computed are the same, bit for bit on the CPU provider: tests/runtime/test_ort_forms.py).

Embed graphs (every mode): the token embedding table (151,936 x 2560 fp16 on Qwen3-VL-4B, 0.72 GiB) feeds a Gather
whose rows the merge with the image features reads through a Where. ONNX Runtime's CPU provider has no fp16
Where, so it runs the Where in fp32 and, since a Gather only moves data, the Gather too: it casts the whole table
to fp32 (1.45 GiB, held for the session's life, or cast again on every call). Casting the two Where inputs (the
gathered rows) to fp32 in the graph, and the result back, keeps the Gather in fp16: the table stays
memory-mapped from the export's data file and only the prompt's rows are read.

(Select graphs need no form: the exporter writes their proxy head as ProxyHead, whose two products read the
head as stored, so ONNX Runtime folds no transposed copy of it.)
"""

from __future__ import annotations

from pathlib import Path


def fp16_rows_merged_in_fp32(model) -> int:
    """Rewrite `model` in place: every Where that reads the rows a Gather takes from a 2-D fp16 initializer runs
    on fp32 casts of its two value inputs, and its result is cast back to fp16 under its old name. Returns how many
    Where nodes were rewritten (0: the model is unchanged)."""
    from onnx import TensorProto, helper

    graph = model.graph
    tables = {t.name for t in graph.initializer if len(t.dims) == 2 and t.data_type == TensorProto.FLOAT16}
    rows = {node.output[0] for node in graph.node if node.op_type == "Gather" and node.input[0] in tables
            and all(a.name != "axis" or a.i == 0 for a in node.attribute)}
    nodes, rewritten = [], 0
    for node in graph.node:
        if node.op_type != "Where" or not rows.intersection(node.input[1:]):
            nodes.append(node)
            continue
        out = node.output[0]
        casts = [helper.make_node("Cast", [name], [f"{name}.{out}.fp32"], name=f"{name}.{out}.fp32.node",
                                  to=TensorProto.FLOAT) for name in node.input[1:]]
        nodes += casts
        node.input[1:] = [cast.output[0] for cast in casts]
        node.output[0] = f"{out}.fp32"
        nodes += [node, helper.make_node("Cast", [node.output[0]], [out], name=f"{out}.fp16.node",
                                         to=TensorProto.FLOAT16)]
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def rewritten(path: Path, *rewrites) -> bytes | None:
    """The graph at `path` after `rewrites` (functions of a ModelProto returning how many places they changed),
    serialized with its external data left where it is; None when none of them changed anything."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return model.SerializeToString() if sum(rewrite(model) for rewrite in rewrites) else None


def embed_form(path: Path) -> bytes | None:
    return rewritten(path, fp16_rows_merged_in_fp32)
