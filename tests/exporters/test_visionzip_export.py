"""VisionZip exported in-graph: the pruned vision graph validated against its PyTorch module, fixed shapes, the
ONNX pipeline == the torch pipeline (vision kept tokens identical), trio-check clean; bad input refused."""

import json

import onnx
import pytest
from helpers import assert_export_refused, assert_ready_for_tensorrt, assert_same_generations
from test_export import FORBIDDEN_OPS, random_requests

from trio_edge import load
from trio_edge.artifact.graphs import VISION_KEPT
from trio_edge.artifact.manifest import read_manifest


@pytest.fixture(scope="module")
def visionzip_export(export_tiny):
    return export_tiny("visionzip")[1]


def test_vision_graph_prunes_with_fixed_shapes(visionzip_export):
    manifest = read_manifest(visionzip_export)
    plan = manifest.plan
    assert plan.method == "visionzip" and not plan.selects
    assert (plan.schedule.vision.keep, plan.schedule.vision.dominant) == (7, 5)
    assert plan.num_image_tokens == 7 * manifest.io.tile_count < plan.full_image_tokens
    graph = manifest.graphs["vision"]
    assert [(t["name"], t["shape"]) for t in graph.outputs] == [
        ("image_features", [plan.num_image_tokens, plan.hidden_size]), (VISION_KEPT, [manifest.io.tile_count, 7])]
    model = onnx.load(str(visionzip_export / graph.file))
    assert not {node.op_type for node in model.graph.node} & FORBIDDEN_OPS
    cases = {row["case"] for row in manifest.validation if row["graph"] == "vision"}
    assert cases == {"random-prefill", "request-prefill"}
    assert all(row["ok"] for row in manifest.validation)


def test_onnx_visionzip_pipeline_matches_torch(visionzip_export):
    assert_same_generations(load(visionzip_export, backend="torch"), load(visionzip_export, backend="onnxruntime"),
                            random_requests(4, seed=5), tol=1e-4)


def test_run_json_reports_the_vision_stage(visionzip_export, export_model, tmp_path, capsys):
    """trio-run on the export and on the model (PyTorch reference, --cuts vision:5+2): the same kept tokens."""
    from helpers import random_image

    from trio_edge.cli import run as run_cli

    image = tmp_path / "in.png"
    random_image(90, 140, seed=4).save(image)
    outputs = []
    for source, options in ((visionzip_export, []), (export_model.source, ["--method", "visionzip", "--cuts",
                                                                           "vision:5+2"])):
        assert run_cli.main([str(source), "--image", str(image), "--prompt", "what color is it?", "--json",
                             "--max-new-tokens", "3", *options]) == 0
        outputs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    from_export, from_model = outputs
    assert from_export["kept"] == [] and len(from_export["vision_kept"]) == 5
    assert all(len(row) == 7 and row[0] == 0 and row[5:] == [-1, -1] for row in from_export["vision_kept"])
    assert from_model["vision_kept"] == from_export["vision_kept"]
    assert from_model["token_ids"] == from_export["token_ids"]


def test_trio_check_passes_on_visionzip_export(visionzip_export):
    assert_ready_for_tensorrt(visionzip_export)


@pytest.mark.parametrize("argv, message", [
    (["--method", "visionzip", "--cuts", "vision:18"], "vision keep 18 per tile is outside 1..17"),
    (["--preset", "visionzip-100"], "unknown preset 'visionzip-100'"),
    (["--method", "visionzip"], "prunes inside the vision tower"),
    (["--method", "visionzip", "--keep-ratio", "1"], "outside 1..17"),
])
def test_bad_visionzip_export_is_one_line_and_writes_nothing(export_model, tmp_path, capsys, argv, message):
    assert_export_refused(export_model.source, tmp_path, capsys, argv, message)
