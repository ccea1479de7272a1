"""Peer methods exported in-graph: every graph validated against its PyTorch module, ONNX pipeline == torch
pipeline (kept indices identical), fixed shapes, trio-check clean; bad method/schedule input refused."""

import onnx
import pytest
from helpers import assert_same_generations
from test_export import FORBIDDEN_OPS, random_requests

from trio_edge import load
from trio_edge.artifact.manifest import read_manifest
from trio_edge.cli.export import main as export_main
from trio_edge.exporters.trt_check import check_directory


@pytest.fixture(scope="module", params=["fastv_one_cut"])
def peer_export(request, export_tiny):
    return export_tiny(request.param)


def test_owned_layer_select_is_exported_and_validated(peer_export):
    _, directory, _ = peer_export
    manifest = read_manifest(directory)
    plan = manifest.plan
    assert plan.method == "fastv" and plan.schedule.positions == "original"
    select = plan.selects[0]
    assert select.owned_segment == "segment_01_02"
    assert {s.name for s in plan.segments} == {"segment_00_01", "segment_01_02", "segment_02_04"}
    graph = manifest.graphs[select.name]
    assert [t["name"] for t in graph.inputs][-1] == "kv" and [t["name"] for t in graph.outputs][-1] == "kv_out"
    model = onnx.load(str(directory / graph.file))
    assert not {node.op_type for node in model.graph.node} & FORBIDDEN_OPS
    cases = {row["case"] for row in manifest.validation if row["graph"] == select.name}
    assert cases == {"random-prefill", "request-prefill"}
    assert all(row["ok"] for row in manifest.validation)


def test_onnx_peer_pipeline_matches_torch(peer_export):
    _, directory, _ = peer_export
    assert_same_generations(load(directory, backend="torch"), load(directory, backend="onnxruntime"),
                            random_requests(6, seed=11), tol=1e-4)


def test_trio_check_passes_on_peer_export(peer_export):
    reports = check_directory(peer_export[1])
    assert reports and all(r.ok for r in reports), [f.message for r in reports for f in r.errors]


@pytest.mark.parametrize("argv, message", [
    (["--method", "fastv", "--cuts", "0:40"], "N must be at least 1"),
    (["--method", "random", "--cuts", "1:40"], "cannot be exported"),
])
def test_bad_peer_export_is_one_line_and_writes_nothing(export_model, tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert export_main([str(export_model.source), "-o", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
