"""The graph forms ONNX Runtime opens instead of an export's files (runtime/backends/ort_forms.py): the same outputs
(bit for bit for the embed form, up to fp16 rounding for split products), the token table kept fp16 after ONNX Runtime's optimizations (no fp32 copy), the same answers with and
without them on a tiny Qwen3-VL int4 fp16 export (the Orin Nano proof's configuration, scaled down), and on its
fp16 export low-memory answers equal to the default path's, with each select graph running alone.

(On the int4 export the two modes already answered differently before these forms: with weight prepacking on,
ONNX Runtime's MatMulNBits computes with int8-quantized activations (accuracy level 4); low-memory mode turns
prepacking off.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trio_edge.artifact.manifest import read_manifest
from trio_edge.exporters.probe_inputs import random_inputs
from trio_edge.runtime.backends import ort_forms
from trio_edge.runtime.backends.ort_forms import (embed_form, fp16_rows_merged_in_fp32, low_memory_segment_form,
                                                  quantized_products_split)
from trio_edge.runtime.backends.ort_sessions import session_options
from trio_edge.runtime.open import open_export


@pytest.fixture(scope="module")
def qwen_int4(qwen3_fp16_export):
    return qwen3_fp16_export("int4")


def _session(model, directory, low_memory=True):
    options = session_options(ort, 1, low_memory=low_memory)
    if isinstance(model, bytes):
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(directory))
    else:
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@pytest.fixture
def small_pieces(monkeypatch):
    """Thresholds at which the tiny model's int4 products (64 x 128) are split: above 16 KiB, 8 KiB pieces."""
    monkeypatch.setattr(ort_forms, "WIDE_PRODUCT_BYTES", 16 << 10)
    monkeypatch.setattr(ort_forms, "PIECE_BYTES", 8 << 10)


def _within_fp16_rounding(expected, got) -> bool:
    """Equal up to two units in the last place of fp16 plus fp16's precision at the tensor's RMS (for sums that
    cancel: a split product no longer fuses the residual Add that follows it, so the sum is rounded once more);
    exactly equal for other dtypes."""
    if expected.dtype != np.float16:
        return np.array_equal(expected, got)
    ulp = np.spacing(np.maximum(np.abs(expected), np.abs(got))).astype(np.float32)
    rms = float(np.sqrt(np.mean(expected.astype(np.float32) ** 2)))
    return bool(np.all(np.abs(expected.astype(np.float32) - got.astype(np.float32)) <= 2 * ulp + 2 ** -10 * rms))


def test_each_form_computes_the_same_values(qwen_int4, small_pieces):
    """The embed form bit for bit; the segments' split products the same values up to fp16 rounding."""
    manifest = read_manifest(qwen_int4)
    forms = {"embed": embed_form, **{s.name: low_memory_segment_form for s in manifest.plan.segments}}
    for name, form in forms.items():
        path, spec = qwen_int4 / manifest.graphs[name].file, manifest.specs()[name]
        rewritten = form(path)
        assert rewritten is not None, f"{name}: nothing rewritten"
        for case, inputs in random_inputs(spec, manifest.plan, seed=7, image_token_id=manifest.io.image_token_id):
            feed = {k: v.numpy() for k, v in inputs.items()}
            for expected, got in zip(_session(path, qwen_int4).run(None, feed),
                                     _session(rewritten, qwen_int4).run(None, feed)):
                assert expected.dtype == got.dtype, f"{name} {case}"
                same = np.array_equal(expected, got) if name == "embed" else _within_fp16_rounding(expected, got)
                assert same, f"{name} {case}"


def _float_copies(model_path, table_shape) -> list[str]:
    """Initializers of the optimized graph at `model_path` holding the table (or its transpose) in fp32."""
    model = onnx.load(str(model_path), load_external_data=False)
    shapes = {tuple(table_shape), tuple(reversed(table_shape))}
    return [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and tuple(t.dims) in shapes]


def test_optimized_graphs_keep_the_token_table_fp16(qwen_int4, tmp_path):
    """What ONNX Runtime keeps after optimizing (the graphs saved in its cache), in either mode: the embed graph in
    its form holds no fp32 copy of the vocabulary x hidden table (as exported it held one, the Gather run in fp32),
    nor does a select graph (ProxyHead: both products read the head as stored, cast per call)."""
    manifest = read_manifest(qwen_int4)
    table = (manifest.plan.vocab_size, manifest.plan.hidden_size)
    found = {}
    for low_memory in (False, True):
        options = session_options(ort, 1, low_memory=low_memory)
        for name in ("embed", manifest.plan.selects[0].name):
            out = tmp_path / f"{name}-{low_memory}" / "model.onnx"
            out.parent.mkdir()
            options.optimized_model_filepath = str(out)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             "model.onnx.data")
            path = qwen_int4 / manifest.graphs[name].file
            model = embed_form(path) if name == "embed" else str(path)
            if isinstance(model, bytes):
                options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                                 str(qwen_int4))
            skip = ["MatMulAddFusion"] + (["ConstantFolding"] if name != "embed" else [])
            ort.InferenceSession(model, options, providers=["CPUExecutionProvider"], disabled_optimizers=skip)
            found[name, low_memory] = _float_copies(out, table)
    assert found == {key: [] for key in found}
    as_exported = tmp_path / "embed-as-exported" / "model.onnx"
    as_exported.parent.mkdir()
    options = session_options(ort, 1)
    options.optimized_model_filepath = str(as_exported)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx.data")
    ort.InferenceSession(str(qwen_int4 / manifest.graphs["embed"].file), options,
                         providers=["CPUExecutionProvider"], disabled_optimizers=["MatMulAddFusion"])
    assert len(_float_copies(as_exported, table)) == 1  # what the form removes


PROMPTS = ["what color is the triangle?", "how many circles are there?"]


def _answers(pipeline, pictures):
    return [(r.token_ids, r.kept) for r in (pipeline.generate(pictures[i], p) for i, p in enumerate(PROMPTS))]


def test_low_memory_answers_as_the_default_path_with_selects_alone(qwen3_fp16_export, pictures_qwen, monkeypatch,
                                                                    tmp_path):
    monkeypatch.setenv("TRIO_EDGE_CACHE", str(tmp_path / "cache"))
    answers = []
    for low_memory in (False, True, True):  # the second low-memory load reads the optimized graphs from the cache
        with open_export(qwen3_fp16_export("fp16"), low_memory=low_memory) as pipeline:
            backend, alone = pipeline.backend, []
            run_impl = backend.run_impl

            def traced(name, inputs):
                if backend.specs[name].kind.value == "select":
                    backend._session(name)
                    alone.append(set(backend.sessions) == {name})  # every other graph closed first
                return run_impl(name, inputs)

            backend.run_impl = traced
            answers.append(_answers(pipeline, pictures_qwen))
            assert backend.settings["graph_forms"].keys() == ({"embed", "segment"} if low_memory else {"embed"})
            assert not low_memory or (alone and all(alone))
    assert answers[1] == answers[0] and answers[2] == answers[0]


@pytest.mark.parametrize("low_memory", [False, True], ids=["default", "low-memory"])
def test_the_forms_change_no_answer(qwen_int4, pictures_qwen, monkeypatch, low_memory, small_pieces):
    import trio_edge.runtime.backends.onnxruntime_backend as backend_module

    with open_export(qwen_int4, low_memory=low_memory, ort_cache=False) as pipeline:
        assert pipeline.backend.settings["graph_forms"]
        with_forms = _answers(pipeline, pictures_qwen)
    monkeypatch.setattr(backend_module, "GRAPH_FORMS", {})
    monkeypatch.setattr(backend_module, "LOW_MEMORY_FORMS", {})
    with open_export(qwen_int4, low_memory=low_memory, ort_cache=False) as pipeline:
        assert not pipeline.backend.settings["graph_forms"]
        assert _answers(pipeline, pictures_qwen) == with_forms


@pytest.fixture(scope="module")
def pictures_qwen():
    from helpers import random_image

    return [random_image(w, h, seed=i) for i, (w, h) in enumerate([(300, 200), (256, 256)])]


# ---- the rewrites on hand-made graphs ---------------------------------------------------------------------
def _run(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def test_the_merge_of_gathered_fp16_rows_runs_in_fp32_and_returns_fp16():
    rng = np.random.default_rng(1)
    table = numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float16), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"]),
             helper.make_node("Where", ["mask", "image", "rows"], ["hidden"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [5]),
                                           helper.make_tensor_value_info("mask", TensorProto.BOOL, [5, 1]),
                                           helper.make_tensor_value_info("image", TensorProto.FLOAT16, [5, 8])],
                              [helper.make_tensor_value_info("hidden", TensorProto.FLOAT16, [5, 8])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    feed = {"ids": np.array([3, 0, 49, 7, 7]), "mask": np.array([[True], [False], [False], [True], [False]]),
            "image": rng.standard_normal((5, 8)).astype(np.float16)}
    expected = _run(model, feed)[0]
    assert fp16_rows_merged_in_fp32(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Gather", "Cast", "Cast", "Where", "Cast"]
    got = _run(model, feed)[0]
    assert got.dtype == np.float16 and np.array_equal(got, expected)


def test_a_wide_int4_product_is_split_by_columns_with_the_same_values(monkeypatch):
    monkeypatch.setattr(ort_forms, "PIECE_ALIGN", 2)
    rng = np.random.default_rng(2)
    rows, columns, block = 32, 12, 16
    codes = rng.integers(-8, 8, (rows, columns)).astype(np.int8)
    packed = ((codes[:, 0::2] & 0xF) | ((codes[:, 1::2] & 0xF) << 4)).astype(np.uint8)  # low nibble first
    scales = (rng.random((rows // block, columns)) + 0.5).astype(np.float32)
    initializers = [helper.make_tensor("w.int4", TensorProto.INT4, [rows, columns], packed.tobytes(), raw=True),
                    numpy_helper.from_array(scales, "w.scale"), numpy_helper.from_array(scales, "other")]
    nodes = [helper.make_node("DequantizeLinear", ["w.int4", "w.scale"], ["w"], axis=0, block_size=block),
             helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("MatMul", ["x2", "w"], ["y2"]),
             helper.make_node("DequantizeLinear", ["w.int4", "other"], ["w_too"], axis=0, block_size=block),
             helper.make_node("Add", ["w_too", "w_too"], ["z"])]  # read by an Add: left as it is
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, rows]),
                                           helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2, 1, rows])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y2", "z")],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    feed = {"x": rng.standard_normal((3, rows)).astype(np.float32),
            "x2": rng.standard_normal((2, 1, rows)).astype(np.float32)}
    expected = _run(model, feed)
    assert quantized_products_split(model, Path("."), above_bytes=rows * columns * 4 - 1, piece_bytes=rows * 4 * 5) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") == 4 and ops.count("Concat") == 2 and ops.count("MatMul") == 6  # 3 pieces
    widths = [t.dims[1] for t in model.graph.initializer if t.name.endswith(".codes")]
    assert widths == [4, 4, 4]  # 12 columns in 3 pieces of at most 5, rounded to whole int4 pairs
    assert "w.int4" in {t.name for t in model.graph.initializer}  # still read by the other DequantizeLinear
    for want, got in zip(expected, _run(model, feed)):
        assert np.array_equal(got, want)
    assert quantized_products_split(model, Path("."), above_bytes=rows * columns * 4) == 0  # under the threshold
