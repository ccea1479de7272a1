"""TRIO-VE exported: the vision graph carries the rule (selection + merging + packing), TRIO's select graph cuts
the reduced sequence; every graph validated against its PyTorch module, ONNX pipeline == torch pipeline (vision
and cut kept indices identical), fixed shapes, trio-check clean; bad input refused in one line."""

import onnx
import pytest
from helpers import assert_export_refused, assert_ready_for_tensorrt, assert_same_generations
from test_export import FORBIDDEN_OPS, random_requests

from trio_edge import load
from trio_edge.artifact.graphs import VISION_KEPT
from trio_edge.artifact.manifest import read_manifest


@pytest.fixture(scope="module")
def ve_export(export_tiny):  # an export of its own (~90 s on two cores): the tests using it are marked slow
    return export_tiny("trio_ve")[1]


@pytest.mark.slow
def test_vision_graph_prunes_and_the_cut_is_trio(ve_export, export_model):
    manifest = read_manifest(ve_export)
    plan = manifest.plan
    adapter = export_model.adapter
    tiles = adapter.tile_count(plan.grid)
    assert plan.method == "trio-ve" and plan.cut_rule == "trio"
    assert plan.schedule.text() == "vision:6,2:20"
    assert plan.num_image_tokens == adapter.pruned_image_token_count(plan.grid, 6, "trio-ve") == 6 * tiles + 8
    assert plan.full_image_tokens == adapter.image_token_count(plan.grid)
    vision = manifest.graphs["vision"]
    assert [(t["name"], t["shape"]) for t in vision.outputs] == [("image_features", [plan.num_image_tokens,
                                                                                     plan.hidden_size]),
                                                                 (VISION_KEPT, [tiles, 6])]
    model = onnx.load(str(ve_export / vision.file))
    assert not {node.op_type for node in model.graph.node} & FORBIDDEN_OPS
    assert [s.tokens_in for s in plan.selects] == [plan.num_image_tokens]
    assert all(row["ok"] for row in manifest.validation)
    assert {row["graph"] for row in manifest.validation} >= {"vision", plan.selects[0].name}


@pytest.mark.slow
def test_onnx_trio_ve_pipeline_matches_torch(ve_export):
    assert_same_generations(load(ve_export, backend="torch"), load(ve_export, backend="onnxruntime"),
                            random_requests(4, seed=5), tol=1e-4)


@pytest.mark.slow
def test_trio_check_passes_on_trio_ve_export(ve_export):
    assert_ready_for_tensorrt(ve_export)
    from trio_edge.exporters.trt_check import check_directory

    vision = [r for r in check_directory(ve_export) if str(r.path).endswith("vision.onnx")]
    assert vision and not vision[0].warnings, [f.message for f in vision[0].warnings]  # e.g. no Equal on BOOL


@pytest.mark.parametrize("argv, message", [
    (["--method", "trio-ve", "--cuts", "2:20"], "prunes inside the vision tower first"),
    (["--method", "trio-ve", "--cuts", "vision:17"], "between 1 and the 16"),
    (["--method", "trio-ve", "--cuts", "vision:6,2:200"], "KEEP must be within"),
    (["--preset", "trio-ve-64", "--method", "visionzip"], "is a trio-ve schedule"),
])
def test_bad_trio_ve_export_is_one_line_and_writes_nothing(export_model, tmp_path, capsys, argv, message):
    assert_export_refused(export_model.source, tmp_path, capsys, argv, message)
