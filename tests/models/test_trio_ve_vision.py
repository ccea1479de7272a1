"""TRIO-VE inside the vision graph (trio_ve.TrioVERule in models.vision_tower.PrunedVisionFeatures, packed by
models.llava.PackKeptInPlace) against the plain reference built on
transformers' own CLIP attentions and the released packing (tests/reference.py trio_ve_image_features), and its
ONNX export against the module."""

import numpy as np
import pytest
import torch
from helpers import assert_fixed_shape_ops, random_image
from reference import trio_ve_image_features

from trio_edge.models.registry import load
from trio_edge.models.tiny import make_tiny_llava_next
from trio_edge.trio.schedule import VisionStage
from trio_edge.trio.vision_stage import vision_rule


@pytest.fixture(scope="module")
def deeper(tmp_path_factory):
    """A tiny LLaVA-NeXT whose tower has 3 layers (shallow 0, deep 1) and a 7x7 patch grid, like trio-tiny."""
    return load(str(make_tiny_llava_next(tmp_path_factory.mktemp("ve-tiny"), seed=1, vision_layers=3, patch=8)))


def module_for(loaded, keep, grid):
    adapter = loaded.adapter
    rule = vision_rule("trio-ve", VisionStage(keep), adapter.vision_layer_count())
    return adapter.vision_module(grid, rule).eval()


@pytest.mark.parametrize("keep", [49, 16, 9, 5])
@pytest.mark.parametrize("grid_index", [0, 1, 3])
def test_vision_graph_equals_the_plain_reference(deeper, keep, grid_index):
    adapter = deeper.adapter
    grid = adapter.pinpoints()[grid_index]
    pixels = adapter.pixel_values(random_image(90, 70, seed=keep + grid_index), grid)
    with torch.no_grad():
        features, kept = module_for(deeper, keep, grid)(pixels)
    want, want_kept = trio_ve_image_features(deeper.model, pixels, grid, keep)
    assert (kept - 1).tolist() == want_kept  # kept: index in the tile, 0 = [CLS]
    assert features.shape == (adapter.pruned_image_token_count(grid, keep, "trio-ve"), want.shape[1]) == want.shape
    torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-5)


def test_two_layer_tower_and_4x4_grid(tiny, images):
    grid = tiny.adapter.default_grid()
    pixels = tiny.adapter.pixel_values(images[2], grid)
    with torch.no_grad():
        features, kept = module_for(tiny, 6, grid)(pixels)
    want, want_kept = trio_ve_image_features(tiny.model, pixels, grid, 6)
    assert (kept - 1).tolist() == want_kept
    torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-5)


def test_vision_graph_exports_and_matches(deeper, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    adapter = deeper.adapter
    grid = adapter.default_grid()
    module = module_for(deeper, 16, grid)
    example = adapter.pixel_values(random_image(80, 80, seed=3), grid)
    path = tmp_path / "vision_ve.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=18)
    model = onnx.load(str(path))
    assert_fixed_shape_ops(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed in (4, 5):
        pixels = adapter.pixel_values(random_image(100, 60, seed=seed), grid)
        with torch.no_grad():
            features, kept = module(pixels)
        got = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})
        assert got[1].tolist() == kept.tolist()
        np.testing.assert_allclose(got[0], features.numpy(), rtol=1e-5, atol=1e-5)


# ---- the whole method: vision stage + TRIO's cut, torch pipeline vs the plain reference -------------------------


@pytest.mark.parametrize("cuts", ["vision:16,2:30", "vision:9,1:40,3:12", "vision:5"])
def test_pipeline_equals_the_plain_reference(deeper, cuts):
    from helpers import PROMPTS, generate_with_logits, make_pipeline
    from reference import reference_generate

    adapter, grid = deeper.adapter, deeper.adapter.default_grid()
    schedule = adapter.schedule(grid, method="trio-ve", cuts=cuts)
    pipe = make_pipeline(deeper, schedule, method="trio-ve")
    vision_tokens = adapter.pruned_image_token_count(grid, schedule.vision.keep, "trio-ve")
    assert pipe.plan.segments[0].image_tokens == vision_tokens
    for index in (0, 2):
        image, prompt = random_image(96, 64, seed=20 + index), PROMPTS[index]
        result, logits = generate_with_logits(pipe, image, prompt, max_new_tokens=4)
        inputs = adapter.hf_inputs(image, prompt, grid)
        features, kept = trio_ve_image_features(deeper.model, inputs["pixel_values"][0], grid, schedule.vision.keep)
        ref = reference_generate(deeper.model, inputs, schedule, 4, adapter.stop_token_ids(), image_features=features)
        assert [[i - 1 for i in row] for row in result.vision_kept] == kept
        assert result.kept == ref.kept
        assert result.token_ids == ref.token_ids
        for ours, theirs in zip(logits, ref.logits):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [1 / 3, 2 / 9, 1 / 9])
def test_eval_places_trio_ve_in_its_authors_shape(ratio):
    from trio_edge.calibration.evaluate import method_schedule

    adapter = load("trio-tiny").adapter
    grid = adapter.default_grid()
    m = adapter.image_token_count(grid)
    schedule, shape = method_schedule(adapter, grid, "trio-ve", ratio)
    assert "ocy1/TRIO README shape" in shape and [c.layer for c in schedule.cuts] == [adapter.num_layers // 2]
    assert abs(schedule.vision.tokens - 1.5 * ratio * m) <= 2.5  # T moves the vision tokens by 5 (tiles)
    assert abs(schedule.budget_ratio(adapter.num_layers, m) - ratio) < 0.005


@pytest.mark.slow
def test_the_released_geometry_24x24_grid_and_24_layer_tower(tmp_path):
    """LLaVA-NeXT-7B's tower geometry (336 px tiles of 14 px patches: 24x24, 24 layers; narrow hidden size): the
    released rule itself (layers 5 and 22, 16 windows of 6x6, T=96) equals the plain reference."""
    loaded = load(str(make_tiny_llava_next(tmp_path / "geometry", seed=2, tile=336, patch=14, vision_layers=24,
                                           vision_hidden=32)))
    adapter = loaded.adapter
    grid = adapter.default_grid()
    module = module_for(loaded, 96, grid)
    assert module.rule.attention_layers == (5, 22)
    pixels = adapter.pixel_values(random_image(700, 500, seed=7), grid)
    with torch.no_grad():
        features, kept = module(pixels)
    want, want_kept = trio_ve_image_features(loaded.model, pixels, grid, 96)
    assert (kept - 1).tolist() == want_kept and features.shape == (5 * 96 + 48, want.shape[1])
    torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-5)
