"""Tests for the TensorRT-readiness checker (trio_edge.exporters.trt_check) and trio-check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trio_edge.cli.check import main
from trio_edge.exporters import trt_check
from trio_edge.exporters.trt_check import (
    OPS,
    TOPK_MAX_K,
    UNSUPPORTED_OPS,
    CheckReport,
    check_directory,
    check_model,
    format_report,
)

F32 = TensorProto.FLOAT


# ---------------------------------------------------------------- helpers


def _save(path: Path, nodes, inputs, outputs, initializers=(), opset=17, functions=(),
          extra_opsets=()) -> Path:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def _vi(name, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _topk_model(path: Path, k: int, n: int = 8) -> Path:
    """x[1, n] -> Softmax -> TopK(k) with K as an initializer."""
    nodes = [
        helper.make_node("Softmax", ["x"], ["p"], name="softmax"),
        helper.make_node("TopK", ["p", "k"], ["values", "indices"], name="keep_topk", axis=-1),
    ]
    outputs = [_vi("values", [1, k]), _vi("indices", [1, k], TensorProto.INT64)]
    return _save(path, nodes, [_vi("x", [1, n])], outputs, [_const("k", [k])])


def _clean_model(path: Path, x_shape=(1, 4, 8)) -> Path:
    """MatMul -> Softmax -> ReduceSum -> TopK(2) -> Gather: a tiny pruning graph."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("Softmax", ["h"], ["p"], name="softmax"),
        helper.make_node("ReduceSum", ["p", "axes"], ["score"], name="score", keepdims=0),
        helper.make_node("TopK", ["score", "k"], ["top", "idx"], name="keep_topk", axis=-1),
        helper.make_node("Gather", ["h", "idx"], ["kept"], name="gather", axis=1),
    ]
    inits = [numpy_helper.from_array(np.ones((8, 8), np.float32), "w"),
             _const("axes", [-1]), _const("k", [2])]
    return _save(path, nodes, [_vi("x", list(x_shape))], [_vi("kept", None)], inits)


def _messages(findings) -> str:
    return "\n".join(f"{f.node} {f.op_type} {f.message}" for f in findings)


def _single_op_model(path: Path, node, opset=17, **kw) -> Path:
    return _save(path, [node], [_vi("x", [2, 3])], [_vi(node.output[0], None)], opset=opset, **kw)


# ---------------------------------------------------------------- op table


def test_op_table_is_data_with_version_constant():
    assert trt_check.TENSORRT_VERSION_CHECKED.startswith("10.")
    assert {"MatMul", "Softmax", "TopK", "Gather", "Where", "CumSum"} <= set(OPS)
    assert {"Unique", "NonZero"} - set(OPS) == {"Unique"}
    assert not UNSUPPORTED_OPS & set(OPS)
    assert TOPK_MAX_K == 3840


def test_clean_graph_passes(tmp_path):
    report = check_model(_clean_model(tmp_path / "clean.onnx"), dynamic_axes={})
    assert isinstance(report, CheckReport)
    assert report.ok, _messages(report.errors)
    assert report.warnings == []
    with pytest.raises(Exception):
        report.errors = []  # frozen


@pytest.mark.parametrize("op_type", ["Unique", "BitShift"])
def test_op_tensorrt_does_not_support_fails_naming_node(tmp_path, op_type):
    node = helper.make_node(op_type, ["x", "x"][: 1 if op_type == "Unique" else 2], ["y"],
                            name="bad_node", **({"direction": "LEFT"} if op_type == "BitShift"
                                                else {}))
    report = check_model(_single_op_model(tmp_path / "m.onnx", node))
    assert not report.ok
    (finding,) = [f for f in report.errors if f.rule == "unsupported-op"]
    assert (finding.node, finding.op_type, finding.file) == ("bad_node", op_type, "m.onnx")


def test_custom_domain_op_fails_naming_node(tmp_path):
    node = helper.make_node("FancyPrune", ["x"], ["y"], name="trio_custom", domain="com.trio")
    path = _single_op_model(tmp_path / "m.onnx", node,
                            extra_opsets=[helper.make_opsetid("com.trio", 1)])
    report = check_model(path)
    assert [f.node for f in report.errors] == ["trio_custom"]
    assert "custom op com.trio::FancyPrune" in report.errors[0].message


def test_tensorrt_plugin_domain_is_only_a_warning(tmp_path):
    node = helper.make_node("MyPlugin", ["x"], ["y"], name="plug", domain="trt.plugins")
    path = _single_op_model(tmp_path / "m.onnx", node,
                            extra_opsets=[helper.make_opsetid("trt.plugins", 1)])
    report = check_model(path)
    assert report.ok
    assert [f.rule for f in report.warnings] == ["plugin-op"]


def test_model_local_function_body_is_checked(tmp_path):
    body_ok = helper.make_function("trio.fn", "Scale", ["a"], ["b"],
                                   [helper.make_node("Relu", ["a"], ["b"])],
                                   [helper.make_opsetid("", 17)])
    body_bad = helper.make_function("trio.fn", "Uniq", ["a"], ["b"],
                                    [helper.make_node("Unique", ["a"], ["b"], name="inner")],
                                    [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Scale", ["x"], ["y"], name="call_ok", domain="trio.fn"),
             helper.make_node("Uniq", ["y"], ["z"], name="call_bad", domain="trio.fn")]
    path = _save(tmp_path / "m.onnx", nodes, [_vi("x", [2, 3])], [_vi("z", None)],
                 functions=[body_ok, body_bad], extra_opsets=[helper.make_opsetid("trio.fn", 1)])
    report = check_model(path)
    assert [(f.node, f.op_type) for f in report.errors] == [("inner", "Unique")]


# ---------------------------------------------------------------- TopK


def test_topk_k_5000_fails(tmp_path):
    report = check_model(_topk_model(tmp_path / "m.onnx", k=5000, n=6000))
    (finding,) = report.errors
    assert finding.node == "keep_topk" and finding.op_type == "TopK"
    assert "5000" in finding.message and "3840" in finding.message


def test_topk_k_at_limit_passes(tmp_path):
    assert check_model(_topk_model(tmp_path / "m.onnx", k=3840, n=4000)).ok


def test_topk_k_from_constant_node_passes_and_runtime_k_fails(tmp_path):
    const_k = [helper.make_node("Constant", [], ["k"], name="k_const",
                                value=_const("kv", [3])),
               helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_const")]
    path = _save(tmp_path / "const.onnx", const_k, [_vi("x", [2, 8])], [_vi("v", None)])
    assert check_model(path).ok

    runtime_k = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
                 helper.make_node("Slice", ["s", "one", "two"], ["k"], name="slice"),
                 helper.make_node("TopK", ["x", "k"], ["v", "i"], name="argsort_like")]
    inits = [_const("one", [1]), _const("two", [2])]
    path = _save(tmp_path / "runtime.onnx", runtime_k, [_vi("x", [2, 8])], [_vi("v", None)],
                 inits)
    report = check_model(path)
    assert [(f.node, f.rule) for f in report.errors] == [("argsort_like", "topk-k-constant")]


def test_topk_unsorted_fails(tmp_path):
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="unsorted", sorted=0)
    path = _save(tmp_path / "m.onnx", [node], [_vi("x", [2, 8])], [_vi("v", None)],
                 [_const("k", [2])])
    assert [f.rule for f in check_model(path).errors] == ["topk-sorted"]


# ---------------------------------------------------------------- dtypes


def test_double_initializer_fails(tmp_path):
    node = helper.make_node("Add", ["x", "bias"], ["y"], name="add_bias")
    bias = numpy_helper.from_array(np.zeros((2, 3), np.float64), "bias")
    path = _save(tmp_path / "m.onnx", [node], [_vi("x", [2, 3], TensorProto.DOUBLE)],
                 [_vi("y", None)], [bias])
    report = check_model(path)
    assert not report.ok
    flagged = {f.node for f in report.errors if f.rule == "double"}
    assert {"bias", "x"} <= flagged
    assert all("DOUBLE" in f.message for f in report.errors if f.rule == "double")


def test_cast_to_double_fails_once(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["xd"], name="to_f64", to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["xd"], ["y"], name="back", to=F32)]
    report = check_model(_save(tmp_path / "m.onnx", nodes, [_vi("x", [2])], [_vi("y", [2])]))
    assert [(f.node, f.rule) for f in report.errors] == [("to_f64", "double")]
    assert "to=DOUBLE" in report.errors[0].message


def test_unsupported_dtype_input_fails(tmp_path):
    node = helper.make_node("Identity", ["x"], ["y"], name="ident")
    path = _save(tmp_path / "m.onnx", [node], [_vi("x", [2], TensorProto.UINT16)],
                 [_vi("y", [2], TensorProto.UINT16)])
    report = check_model(path)
    assert {f.rule for f in report.errors} == {"dtype"}


# ---------------------------------------------------------------- NonZero / control flow


def test_nonzero_fails(tmp_path):
    node = helper.make_node("NonZero", ["x"], ["nz"], name="mask_index")
    report = check_model(_single_op_model(tmp_path / "m.onnx", node))
    assert [(f.node, f.rule) for f in report.errors] == [("mask_index", "data-dependent-shape")]


def test_loop_fails_and_body_is_checked(tmp_path):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Unique", ["v_in"], ["v_out"], name="body_unique")],
        "body",
        [_vi("iter", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL),
         _vi("v_in", [2, 3])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("v_out", [2, 3])],
    )
    loop = helper.make_node("Loop", ["trip", "cond", "x"], ["y"], name="token_loop", body=body)
    inits = [_const("trip", 3), numpy_helper.from_array(np.array(True), "cond")]
    path = _save(tmp_path / "m.onnx", [loop], [_vi("x", [2, 3])], [_vi("y", [2, 3])], inits)
    report = check_model(path)
    rules = {(f.node, f.rule) for f in report.errors}
    assert ("token_loop", "control-flow") in rules
    assert ("body_unique", "unsupported-op") in rules


# ---------------------------------------------------------------- static dims


def _dynamic_model(path: Path) -> Path:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    return _save(path, [node], [_vi("x", ["batch", "tokens", 8])], [_vi("y", None)])


def test_undeclared_symbolic_dim_fails(tmp_path):
    report = check_model(_dynamic_model(tmp_path / "m.onnx"), dynamic_axes={"x": {1}})
    (finding,) = report.errors
    assert finding.rule == "static-dims" and finding.node == "x"
    assert "axis 0" in finding.message and "'batch'" in finding.message


def test_declared_dynamic_axes_pass(tmp_path):
    report = check_model(_dynamic_model(tmp_path / "m.onnx"), dynamic_axes={"x": [0, 1]})
    assert report.ok and report.warnings == []


def test_symbolic_dims_without_manifest_only_warn(tmp_path):
    report = check_model(_dynamic_model(tmp_path / "m.onnx"))
    assert report.ok
    assert [f.rule for f in report.warnings] == ["static-dims", "static-dims"]


def test_manifest_axis_on_static_dim_or_out_of_rank(tmp_path):
    report = check_model(_clean_model(tmp_path / "m.onnx"), dynamic_axes={"x": {2, 7}, "y": {0}})
    assert [f.rule for f in report.errors] == ["manifest"]  # axis 7 of a rank-3 input
    assert len([f for f in report.warnings if f.rule == "manifest"]) == 2


# ---------------------------------------------------------------- opset / size


def test_opset_out_of_range_fails(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    report = check_model(_single_op_model(tmp_path / "m.onnx", node, opset=8))
    assert [f.rule for f in report.errors] == ["opset"]


def test_protobuf_over_limit_fails(tmp_path, monkeypatch):
    path = _clean_model(tmp_path / "big.onnx")
    monkeypatch.setattr(trt_check, "PROTOBUF_LIMIT_BYTES", 64)
    report = check_model(path)
    assert [f.rule for f in report.errors] == ["protobuf-size"]
    assert "2 GiB" in report.errors[0].message


def test_unreadable_file_is_a_finding(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\x00not a protobuf" * 10)
    assert [f.rule for f in check_model(path).errors] == ["load"]


# ---------------------------------------------------------------- external data


def _external_model(directory: Path, location: str, offset=0, length=None,
                    write_bytes=True) -> Path:
    """x[2,3] + w where w (float32[2,3], 24 bytes) lives in external data."""
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = TensorProto(name="w", data_type=F32, dims=[2, 3])
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset)}
    if length is not None:
        entries["length"] = str(length)
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    if write_bytes:
        target = directory / location
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\0" * offset + weights.tobytes())
    node = helper.make_node("Add", ["x", "w"], ["y"], name="add_w")
    return _save(directory / "model.onnx", [node], [_vi("x", [2, 3])], [_vi("y", [2, 3])],
                 [tensor])


def test_valid_external_data_passes(tmp_path):
    assert check_model(_external_model(tmp_path, "model.onnx.data", offset=16, length=24)).ok


def test_external_data_saved_by_onnx_passes(tmp_path):
    model = onnx.load(str(_clean_model(tmp_path / "a.onnx")))
    onnx.save_model(model, str(tmp_path / "b.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="b.weights", size_threshold=0)
    assert check_model(tmp_path / "b.onnx", dynamic_axes={}).ok


def test_external_data_outside_directory_fails(tmp_path):
    model_dir = tmp_path / "export"
    model_dir.mkdir()
    (tmp_path / "evil.bin").write_bytes(np.zeros(6, np.float32).tobytes())
    path = _external_model(model_dir, "../evil.bin", write_bytes=False)
    (finding,) = check_model(path).errors
    assert finding.rule == "external-data" and finding.node == "w"
    assert "outside" in finding.message


def test_missing_external_file_fails(tmp_path):
    path = _external_model(tmp_path, "weights.bin", write_bytes=False)
    (finding,) = check_model(path).errors
    assert "missing" in finding.message and "weights.bin" in finding.message


@pytest.mark.parametrize("offset,length,needle", [(100, 24, "past the end"),
                                                   (0, 20, "does not match")])
def test_external_extent_checked(tmp_path, offset, length, needle):
    path = _external_model(tmp_path, "w.bin", offset=0, length=length)
    if offset:  # rewrite the entry so it points beyond the 24-byte file
        model = onnx.load(str(path), load_external_data=False)
        model.graph.initializer[0].external_data[1].value = str(offset)
        path.write_bytes(model.SerializeToString())
    (finding,) = check_model(path).errors
    assert needle in finding.message


# ---------------------------------------------------------------- directories


def _manifest(directory: Path, graphs) -> None:
    (directory / "manifest.json").write_text(json.dumps({"graphs": graphs}))


def test_check_directory_uses_manifest_dynamic_axes(tmp_path):
    _dynamic_model(tmp_path / "vision.onnx")
    _clean_model(tmp_path / "prune.onnx")
    _manifest(tmp_path, [
        {"file": "vision.onnx", "inputs": [
            {"name": "x", "shape": ["batch", "tokens", 8], "dtype": "float32",
             "dynamic_axes": [1]}]},
        {"file": "prune.onnx", "inputs": [
            {"name": "x", "shape": [1, 4, 8], "dtype": "float32", "dynamic_axes": []}]},
    ])
    reports = {Path(r.path).name: r for r in check_directory(tmp_path)}
    assert set(reports) == {"vision.onnx", "prune.onnx"}
    assert reports["prune.onnx"].ok
    assert [f.rule for f in reports["vision.onnx"].errors] == ["static-dims"]  # batch axis


def test_check_directory_without_manifest_warns(tmp_path):
    _dynamic_model(tmp_path / "vision.onnx")
    (report,) = check_directory(tmp_path)
    assert report.ok and len(report.warnings) == 2


def test_check_directory_reports_bad_manifest(tmp_path):
    _clean_model(tmp_path / "prune.onnx")
    _manifest(tmp_path, [{"file": "gone.onnx", "inputs": []}])
    reports = check_directory(tmp_path)
    bad = [r for r in reports if not r.ok]
    assert [Path(r.path).name for r in bad] == ["manifest.json"]
    (tmp_path / "manifest.json").write_text("{not json")
    assert any(f.rule == "manifest" for r in check_directory(tmp_path) for f in r.errors)


def test_format_report_is_a_per_node_table(tmp_path):
    report = check_model(_topk_model(tmp_path / "m.onnx", k=5000, n=6000))
    text = format_report(report)
    assert "FAIL" in text and "keep_topk" in text and "TopK" in text
    assert text.splitlines()[1].split() == ["severity", "node", "op", "message"]
    assert "OK" in format_report(check_model(_clean_model(tmp_path / "c.onnx"), {}))


# ---------------------------------------------------------------- CLI


def test_cli_exits_1_naming_the_node(tmp_path, capsys):
    _topk_model(tmp_path / "m.onnx", k=5000, n=6000)
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "keep_topk" in out and "NOT ready" in out


def test_cli_exits_0_on_clean_directory(tmp_path, capsys):
    _clean_model(tmp_path / "clean.onnx")
    assert main([str(tmp_path)]) == 0
    assert "ready for TensorRT" in capsys.readouterr().out


def test_cli_accepts_single_file_and_strict(tmp_path, capsys):
    path = _dynamic_model(tmp_path / "dyn.onnx")
    assert main([str(path)]) == 0
    assert main(["--strict", str(path)]) == 1
    capsys.readouterr()


@pytest.mark.parametrize("make", ["missing", "not_onnx", "empty_dir"])
def test_cli_bad_path_exits_2_with_one_line(tmp_path, capsys, make):
    target = {"missing": tmp_path / "nope", "not_onnx": tmp_path / "x.txt",
              "empty_dir": tmp_path}[make]
    if make == "not_onnx":
        target.write_text("hi")
    assert main([str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "Traceback" not in captured.err


# ---------------------------------------------------------------- torch exporter


def test_torch_dynamo_export_passes(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")

    class TinyPrune(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Parameter(torch.randn(16, 16))

        def forward(self, x):
            attn = torch.softmax(x @ self.proj, dim=-1)
            scores = attn.sum(-1)
            _, keep = torch.topk(scores, 4, dim=-1)
            kept = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            running = torch.cumsum(attn, dim=1)
            masked = torch.where(running > 0.5, running, torch.zeros_like(running))
            return kept, masked

    path = tmp_path / "tiny.onnx"
    torch.onnx.export(TinyPrune().eval(), (torch.randn(1, 8, 16),), str(path), dynamo=True)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMul", "Softmax", "TopK", "GatherElements", "CumSum", "Where"} <= ops
    report = check_model(path, dynamic_axes={})
    assert report.ok, format_report(report)
    assert report.warnings == [], format_report(report)
