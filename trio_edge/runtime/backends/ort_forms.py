"""Graph forms that ONNX Runtime runs in less host memory, made when a graph is opened (the export's files are
never changed; the values computed are the same on the CPU provider, bit for bit except where noted:
tests/runtime/test_ort_forms.py).

Embed graphs (every mode): the token embedding table (151,936 x 2560 fp16 on Qwen3-VL-4B, 0.72 GiB) feeds a Gather
whose rows the merge with the image features reads through a Where. ONNX Runtime's CPU provider has no fp16
Where, so it runs the Where in fp32 and, since a Gather only moves data, the Gather too: it casts the whole table
to fp32 (1.45 GiB, held for the session's life, or cast again on every call). Casting the two Where inputs (the
gathered rows) to fp32 in the graph, and the result back, keeps the Gather in fp16: the table stays
memory-mapped from the export's data file and only the prompt's rows are read.

Segment graphs (low-memory mode): low-memory mode turns weight prepacking off, and ONNX Runtime's MatMulNBits then
dequantizes its whole weight to fp32 on every call before its GEMM. For the int4 lm_head of a 152k-word vocabulary
that is a 2.3 GiB buffer per decode step at Qwen3-VL-8B (151,936 x 4096 x 4 bytes), the largest transient of the
request. A quantized product whose fp32 weight exceeds WIDE_PRODUCT_BYTES is split by output columns into pieces of
at most PIECE_BYTES each (DequantizeLinear and MatMul per piece, then Concat): every output column is the same
product of the same values, only the buffer is smaller. (Not bit for bit where ONNX Runtime had fused an Add after
the product into MatMulNBits, which the Concat now separates: the fp16 sum is rounded once more. The one product
wide enough in practice, the lm_head, has no Add after it.) The pieces' codes are copied into the form (the weight's
int4 bytes, 0.31 GiB at 8B, once), where the unsplit weight stayed memory-mapped.

(Select graphs need no form: the exporter writes their proxy head as ProxyHead, whose two products read the
head as stored, so ONNX Runtime folds no transposed copy of it.)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

WIDE_PRODUCT_BYTES = 512 << 20  # fp32 bytes of a quantized weight above which low-memory mode splits its product
PIECE_BYTES = 256 << 20
PIECE_ALIGN = 64  # columns per piece: a multiple of this (whole int4 bytes, whole blocks of MLAS's kernels)


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


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _raw_bytes(tensor, directory: Path) -> bytes:
    """An initializer's stored bytes, inline or from its external data file (no unpacking)."""
    from onnx import TensorProto, external_data_helper

    if not external_data_helper.uses_external_data(tensor):
        return tensor.raw_data
    loaded = TensorProto()
    loaded.CopyFrom(tensor)  # the model's own tensor keeps pointing at its file
    external_data_helper.load_external_data_for_tensor(loaded, str(directory))
    return loaded.raw_data


def quantized_products_split(model, directory: Path, above_bytes: int | None = None,
                             piece_bytes: int | None = None) -> int:
    """Rewrite `model` in place: each DequantizeLinear of int4 codes (K, N) with per-block scales (no zero point)
    whose fp32 weight exceeds `above_bytes`, read only as the second input of MatMul nodes, becomes column pieces
    of at most `piece_bytes` (fp32), each dequantized and multiplied alone, the products concatenated on the last
    axis under the MatMul's output name. `directory` holds the graph's external data. Returns how many weights were
    split (0: the model is unchanged)."""
    from onnx import TensorProto, helper

    above = WIDE_PRODUCT_BYTES if above_bytes is None else above_bytes
    piece = PIECE_BYTES if piece_bytes is None else piece_bytes
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replaced, added, dropped, split = {}, [], set(), 0
    for node in graph.node:
        codes = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        scales = initializers.get(node.input[1]) if codes is not None and len(node.input) == 2 else None
        if scales is None or codes.data_type != TensorProto.INT4 or len(codes.dims) != 2:
            continue
        rows, columns = codes.dims
        fp32_bytes = rows * columns * 4
        users = consumers.get(node.output[0], [])
        if (fp32_bytes <= above or columns % 2 or not users
                or any(u.op_type != "MatMul" or u.input[1] != node.output[0] or u.input[0] == node.output[0]
                       for u in users)):
            continue
        width = _round_up(math.ceil(columns / math.ceil(fp32_bytes / piece)), PIECE_ALIGN)
        if width >= columns:
            continue
        packed = np.frombuffer(_raw_bytes(codes, directory), np.uint8).reshape(rows, columns // 2)
        scale_values = np.frombuffer(_raw_bytes(scales, directory),
                                     helper.tensor_dtype_to_np_dtype(scales.data_type)).reshape(tuple(scales.dims))
        pieces = []
        for start in range(0, columns, width):
            stop = min(start + width, columns)
            name = f"{node.output[0]}.cols{start}"
            added += [helper.make_tensor(f"{name}.codes", TensorProto.INT4, [rows, stop - start],
                                         np.ascontiguousarray(packed[:, start // 2:stop // 2]).tobytes(), raw=True),
                      helper.make_tensor(f"{name}.scale", scales.data_type, [scale_values.shape[0], stop - start],
                                         np.ascontiguousarray(scale_values[:, start:stop]).tobytes(), raw=True)]
            pieces.append(helper.make_node("DequantizeLinear", [f"{name}.codes", f"{name}.scale"], [name],
                                           name=f"{name}.node", axis=0, block_size=helper.get_node_attr_value(
                                               node, "block_size")))
        replaced[id(node)], split = pieces, split + 1
        for user in users:
            outputs = [f"{user.output[0]}.{p.output[0]}" for p in pieces]
            replaced[id(user)] = [helper.make_node("MatMul", [user.input[0], p.output[0]], [out], name=f"{out}.node")
                                  for p, out in zip(pieces, outputs)]
            replaced[id(user)].append(helper.make_node("Concat", outputs, [user.output[0]],
                                                       name=f"{user.output[0]}.concat", axis=-1))
        if all(c is node for c in consumers[codes.name]) and all(c is node for c in consumers[scales.name]):
            dropped.update((codes.name, scales.name))
    if not replaced:
        return 0
    nodes = [new for node in graph.node for new in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    return split


def rewritten(path: Path, *rewrites) -> bytes | None:
    """The graph at `path` after `rewrites` (functions of a ModelProto returning how many places they changed),
    serialized with its external data left where it is; None when none of them changed anything."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return model.SerializeToString() if sum(rewrite(model) for rewrite in rewrites) else None


def embed_form(path: Path) -> bytes | None:
    return rewritten(path, fp16_rows_merged_in_fp32)


def low_memory_segment_form(path: Path) -> bytes | None:
    return rewritten(path, lambda model: quantized_products_split(model, path.parent))
