"""SparseVLM exported in-graph: the raters graph and every cut validated against their PyTorch modules, ONNX
pipeline == torch pipeline (kept indices identical, merged tokens within tolerance through the logits), fixed
shapes (no scatter in the rule), trio-check clean; bad budgets, shallow models and prompts without raters refused with one line."""

import onnx
import pytest
from helpers import assert_export_refused, assert_ready_for_tensorrt, assert_same_generations
from test_export import random_requests

from trio_edge import load
from trio_edge.artifact.manifest import read_manifest
from trio_edge.cli.export import main as export_main
from trio_edge.cli.run import main as run_main
from trio_edge.errors import InputError


@pytest.fixture(scope="module")
def sparsevlm_export(export_tiny):
    return export_tiny("sparsevlm_two_cuts")


def test_sparsevlm_graphs_are_exported_and_validated(sparsevlm_export):
    _, directory, _ = sparsevlm_export
    manifest = read_manifest(directory)
    plan = manifest.plan
    assert plan.method == "sparsevlm" and plan.schedule.positions == "renumber"
    first, second = plan.selects
    assert first.owned_segment == "segment_00_01" and second.owned_segment == "segment_01_02"
    # int(0.3 * deleted) + 1 recycled into int(recycled / 10) + 1 merged tokens, which enter the next cut
    deleted = first.tokens_in - 40
    assert first.merged == int((int(deleted * 0.3) + 1) / 10) + 1 and second.tokens_in == 40 + first.merged
    graph = manifest.graphs[second.name]
    assert [t["name"] for t in graph.inputs][-2:] == ["kv", "raters"]
    assert [t["name"] for t in graph.outputs][-2:] == ["kv_out", "raters_out"]
    assert "raters" in manifest.graphs
    for name in ("raters", first.name, second.name):
        model = onnx.load(str(directory / manifest.graphs[name].file))
        ops = [node.op_type for node in model.graph.node]
        assert not set(ops) & {"Loop", "If", "NonZero", "Scan"}, (name, ops)
        # the rule has no scatter: a select's only one is the owned layer's KV write, as in every segment
        assert [op for op in ops if op.startswith("Scatter")] == ([] if name == "raters" else ["ScatterND"]), name
    validated = {row["graph"] for row in manifest.validation}
    assert {"raters", first.name, second.name} <= validated
    assert all(row["ok"] for row in manifest.validation)


def test_onnx_sparsevlm_pipeline_matches_torch(sparsevlm_export):
    _, directory, _ = sparsevlm_export
    assert_same_generations(load(directory, backend="torch"), load(directory, backend="onnxruntime"),
                            random_requests(6, seed=5), tol=1e-4)


def test_trio_check_passes_on_sparsevlm_export(sparsevlm_export):
    assert_ready_for_tensorrt(sparsevlm_export[1])


def test_prompt_without_text_after_the_image_is_refused(sparsevlm_export, images, tmp_path, capsys):
    _, directory, _ = sparsevlm_export
    with load(directory) as pipeline:
        with pytest.raises(InputError, match="needs text after the image"):
            pipeline.generate(images[0], "describe <image>")
    path = tmp_path / "image.png"
    images[0].save(path)
    assert run_main([str(directory), "--image", str(path), "--prompt", "what is it? <image>"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs text after the image" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--method", "sparsevlm", "--budget", "100"], "no table for --budget 100"),
    (["--method", "sparsevlm", "--cuts", "0:40"], "LAYER must be within 1.."),
    (["--method", "trio", "--budget", "64"], "use it with --method sparsevlm"),
    (["--method", "sparsevlm", "--budget", "64", "--keep-ratio", "0.2"], "mutually exclusive"),
])
def test_bad_sparsevlm_export_is_one_line_and_writes_nothing(export_model, tmp_path, capsys, argv, message):
    assert_export_refused(export_model.source, tmp_path, capsys, argv, message)


def test_trio_run_on_a_model_takes_a_budget(export_model, images, tmp_path, capsys):
    import json

    path = tmp_path / "image.png"
    images[1].save(path)
    argv = [str(export_model.source), "--image", str(path), "--prompt", "what color is it?", "--method", "sparsevlm",
            "--budget", "64", "--max-new-tokens", "2", "--json"]
    assert run_main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = export_model.adapter.image_token_count(export_model.adapter.default_grid())
    assert [len(kept) for kept in result["kept"]][0] == min(66, m - 1)
    assert len(result["kept"]) == 3 and all(0 <= i < m for kept in result["kept"] for i in kept)


def test_model_too_shallow_for_the_cuts_is_one_line(tmp_path, capsys):
    from trio_edge.models.tiny import make_tiny_llava_next

    model = make_tiny_llava_next(tmp_path / "three-layers", seed=1, layers=3)
    capsys.readouterr()  # the checkpoint writer's progress bar
    out = tmp_path / "never"
    assert export_main([str(model), "-o", str(out), "--quiet", "--method", "sparsevlm", "--budget", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "do not fit a 3-layer decoder" in err and len(err.splitlines()) == 1
    assert not out.exists()
