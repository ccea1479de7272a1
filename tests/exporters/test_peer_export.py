"""Peer methods exported in-graph: every graph validated against its PyTorch module, ONNX pipeline == torch
pipeline (kept indices identical), fixed shapes, trio-check clean; bad method/schedule input refused."""

import numpy as np
import onnx
import pytest
from helpers import assert_export_refused, assert_ready_for_tensorrt, assert_same_generations
from test_export import FORBIDDEN_OPS, random_requests

from trio_edge import load
from trio_edge.artifact.manifest import read_manifest


@pytest.fixture(scope="module", params=["fastv_one_cut", pytest.param("dart_one_cut", marks=pytest.mark.slow),
                                        pytest.param("pdrop_three_cuts", marks=pytest.mark.slow)])
def peer_export(request, export_tiny):
    return export_tiny(request.param)


def test_peer_selects_are_exported_and_validated(peer_export):
    name, directory, _ = peer_export
    manifest = read_manifest(directory)
    plan = manifest.plan
    assert plan.method == name.split("_")[0]
    for select in plan.selects:
        graph = manifest.graphs[select.name]
        model = onnx.load(str(directory / graph.file))
        ops = {node.op_type for node in model.graph.node}
        if select.owned_segment is not None:  # the owned layer's KV: ONE scatter from the kv input to kv_out
            scatters = [n for n in model.graph.node if n.op_type == "ScatterND"]
            assert [(n.input[0], n.output[0]) for n in scatters] == [("kv", "kv_out")]
            ops -= {"ScatterND"}
        assert not ops & FORBIDDEN_OPS
        # no (M, M) tie masks folded into constants: the graph holds the layer's weights and little else
        biggest = max((init.dims for init in model.graph.initializer), key=lambda dims: int(np.prod(dims)))
        assert list(biggest) != [select.tokens_in, select.tokens_in]
        cases = {row["case"] for row in manifest.validation if row["graph"] == select.name}
        assert cases == {"random-prefill", "request-prefill"}
    assert all(row["ok"] for row in manifest.validation)
    if plan.method in ("fastv", "dart"):  # own layer N-1: the select runs it and writes its KV buffer
        assert plan.schedule.positions == "original"
        select = plan.selects[0]
        assert select.owned_segment == "segment_01_02"
        assert {s.name for s in plan.segments} == {"segment_00_01", "segment_01_02", "segment_02_04"}
        graph = manifest.graphs[select.name]
        assert [t["name"] for t in graph.inputs][-1] == "kv" and [t["name"] for t in graph.outputs][-1] == "kv_out"


def test_onnx_peer_pipeline_matches_torch(peer_export):
    _, directory, _ = peer_export
    assert_same_generations(load(directory, backend="torch"), load(directory, backend="onnxruntime"),
                            random_requests(6, seed=11), tol=1e-4)


def test_trio_check_passes_on_peer_export(peer_export):
    assert_ready_for_tensorrt(peer_export[1])


@pytest.mark.parametrize("argv, message", [
    (["--method", "fastv", "--cuts", "0:40"], "N must be at least 1"),
    (["--method", "random", "--cuts", "1:40"], "cannot be exported"),
    (["--method", "fastvv", "--cuts", "2:40"], "unknown selection method 'fastvv'"),
    (["--preset", "trio-999"], "unknown preset 'trio-999'"),
    (["--preset", "fastv", "--method", "dart"], "is a fastv schedule"),
    (["--method", "dart", "--cuts", "2:3"], "keeps at least 4"),
])
def test_bad_peer_export_is_one_line_and_writes_nothing(export_model, tmp_path, capsys, argv, message):
    assert_export_refused(export_model.source, tmp_path, capsys, argv, message)
