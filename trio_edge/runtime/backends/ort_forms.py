"""Graph forms that ONNX Runtime runs in less host memory, made when a graph is opened (the export's files are
never changed; the values computed are the same, bit for bit on the CPU provider: tests/runtime/test_ort_forms.py).

Embed graphs (every mode): the token embedding table (151,936 x 2560 fp16 on Qwen3-VL-4B, 0.72 GiB) feeds a Gather
whose rows the merge with the image features reads through a Where. ONNX Runtime's CPU provider has no fp16
Where, so it runs the Where in fp32 and, since a Gather only moves data, the Gather too: it casts the whole table
to fp32 (1.45 GiB, held for the session's life, or cast again on every call). Casting the two Where inputs (the
gathered rows) to fp32 in the graph, and the result back, keeps the Gather in fp16: the table stays
memory-mapped from the export's data file and only the prompt's rows are read.

Select graphs (low-memory mode): a TRIO select graph reads its proxy head (lm_head, or on Qwen the input embedding
table) twice, the forward logits as MatMul(x, Transpose(W)) and the backward as MatMul(g, Transpose(Transpose(W))).
ONNX Runtime folds Transpose(W) into a transposed copy and, with no fp16 MatMul on CPU, keeps an fp32 copy of each
form: two fp32 tables per select graph (2.9 GiB at Qwen3-VL-4B, 4.6 GiB at 8B). Written as Gemm(x, W, transB=1)
and MatMul(g, W), both read W itself: one Cast to fp32 per call (1.45 GiB while the select runs at 4B), and the
fp16 table stays memory-mapped. Not in the default mode: there the two resident fp32 copies make each select
call about 0.8 s faster at 4B on this 2-core CPU than casting once per call.
"""

from __future__ import annotations

from pathlib import Path

TRANSPOSE_2D = [1, 0]


def _perm(node) -> list[int] | None:
    for attribute in node.attribute:
        if attribute.name == "perm":
            return list(attribute.ints)
    return None


def _rank_2(graph) -> set[str]:
    """Names of the tensors the graph declares 2-D (value_info, inputs, outputs, initializers)."""
    declared = {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.value_info, *graph.input, *graph.output)
                if v.type.tensor_type.HasField("shape")}
    declared.update({t.name: len(t.dims) for t in graph.initializer})
    return {name for name, rank in declared.items() if rank == 2}


def transposed_weights_as_gemm(model) -> int:
    """Rewrite `model` (an onnx ModelProto, top graph) in place: MatMul(A, Transpose(W)) with W a 2-D initializer
    and A declared 2-D becomes Gemm(A, W, transB=1), and Transpose(Transpose(W)) becomes W. Returns how many uses
    of a transposed weight were rewritten (0: the model is unchanged)."""
    from onnx import helper

    graph = model.graph
    weights = {t.name for t in graph.initializer if len(t.dims) == 2}
    two_d = _rank_2(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {v.name for v in graph.output}
    removed, rewritten = set(), 0
    for node in graph.node:
        if node.op_type != "Transpose" or node.input[0] not in weights or _perm(node) != TRANSPOSE_2D:
            continue
        weight, transposed = node.input[0], node.output[0]
        for user in consumers.get(transposed, []):
            if (user.op_type == "MatMul" and list(user.input).index(transposed) == 1 and user.input[0] in two_d
                    and user.input[0] != transposed):
                user.op_type = "Gemm"
                user.input[1] = weight
                user.attribute.append(helper.make_attribute("transB", 1))
                rewritten += 1
            elif (user.op_type == "Transpose" and _perm(user) == TRANSPOSE_2D and user.output[0] not in outputs):
                for reader in consumers.get(user.output[0], []):
                    reader.input[:] = [weight if name == user.output[0] else name for name in reader.input]
                removed.add(id(user))
                rewritten += 1
        if transposed not in outputs and all(id(u) in removed or u.op_type == "Gemm" and transposed not in u.input
                                             for u in consumers.get(transposed, [])):
            removed.add(id(node))
    if rewritten:
        kept = [node for node in graph.node if id(node) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
    return rewritten


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


def low_memory_select_form(path: Path) -> bytes | None:
    return rewritten(path, transposed_weights_as_gemm)
