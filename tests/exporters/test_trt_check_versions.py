"""trio-check --trt-version: the operator rules of that TensorRT, one line and exit 2 for graphs it cannot
parse (ops newer than it, ONNX Runtime contrib ops, a --target onnxruntime export) and for bad versions."""

import json
import shutil

import pytest
from onnx import TensorProto, helper

from trio_edge.cli.check import main as check_main
from trio_edge.exporters.trt_check import check_model, parse_trt_version
from trio_edge.errors import InputError

F32 = TensorProto.FLOAT


def _model(path, nodes, inputs, outputs, opset):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())
    return path


def _vi(name, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, shape)


def attention_model(path):
    """ONNX Attention (opset 23): TensorRT parses it from 10.14."""
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")
    shape = [1, 2, 4, 8]
    return _model(path, [node], [_vi("q", shape), _vi("k", shape), _vi("v", shape)], [_vi("y", shape)], opset=23)


def tensor_scatter_model(path):
    """TensorScatter (opset 24): TensorRT parses it from 10.15."""
    node = helper.make_node("TensorScatter", ["cache", "update"], ["out"], name="write", axis=2)
    return _model(path, [node], [_vi("cache", [1, 2, 16, 8]), _vi("update", [1, 2, 1, 8])],
                  [_vi("out", [1, 2, 16, 8])], opset=24)


def gqa_model(path):
    node = helper.make_node("GroupQueryAttention", ["q"], ["y"], name="gqa", domain="com.microsoft", num_heads=2,
                            kv_num_heads=1)
    return _model(path, [node], [_vi("q", [1, 1, 8])], [_vi("y", [1, 1, 8])], opset=18)


@pytest.mark.parametrize("make, since", [(attention_model, "10.14"), (tensor_scatter_model, "10.15")])
def test_ops_newer_than_the_trt_version_are_one_line_and_exit_2(tmp_path, capsys, make, since):
    path = make(tmp_path / "m.onnx")
    assert check_main([str(path)]) == 2  # default 10.3 (JetPack 6)
    err = capsys.readouterr().err
    assert f"need TensorRT >= {since}" in err and "--trt-version 10.3" in err and len(err.strip().splitlines()) == 1
    assert not check_model(path, trt_version=parse_trt_version("10.3")).ok
    assert check_model(path, trt_version=parse_trt_version(since)).needs is None
    assert check_main([str(path), "--trt-version", since]) != 2


def test_scatter_nd_is_fine_on_jetpack_6(tmp_path):
    node = helper.make_node("ScatterND", ["data", "idx", "upd"], ["out"], name="write")
    path = _model(tmp_path / "m.onnx", [node], [_vi("data", [4, 8]), _vi("idx", [1, 1], TensorProto.INT64),
                                                 _vi("upd", [1, 8])], [_vi("out", [4, 8])], opset=18)
    assert check_model(path).ok and check_main([str(path), "--trt-version", "10.3"]) == 0


@pytest.mark.parametrize("text", ["ten", "10", "10.x", "9.6", "10.3.0.1", ""])
def test_bad_trt_versions_are_one_line_and_exit_2(tmp_path, capsys, text):
    path = tmp_path / "m.onnx"
    with pytest.raises(InputError):
        parse_trt_version(text)
    assert check_main([str(path), "--trt-version", text]) == 2
    err = capsys.readouterr().err
    assert "--trt-version" in err and len(err.strip().splitlines()) == 1


def test_contrib_ops_say_to_re_export_for_tensorrt(tmp_path, capsys):
    assert check_main([str(gqa_model(tmp_path / "m.onnx"))]) == 2
    err = capsys.readouterr().err
    assert "GroupQueryAttention" in err and "re-export with --target tensorrt" in err
    assert len(err.strip().splitlines()) == 1


def test_an_onnxruntime_target_export_is_refused(one_cut_dir, tmp_path, capsys):
    assert check_main([str(one_cut_dir)]) == 0  # the tensorrt target passes JetPack 6's rules
    capsys.readouterr()
    copy = tmp_path / "ort"
    shutil.copytree(one_cut_dir, copy)
    body = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**body, "target": "onnxruntime"}))
    assert check_main([str(copy)]) == 2
    err = capsys.readouterr().err
    assert "re-export with --target tensorrt" in err and len(err.strip().splitlines()) == 1
