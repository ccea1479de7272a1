"""TRIO's vision-encoder stage on Qwen2.5-VL (trio.trio_ve_qwen, models.qwen_vision), held to the plain reference of
the authors' Qwen port (tests/qwen_reference.py, checked against ocy1/TRIO's own code):

- the window-cap + global top-k rule == the reference's sequential walk, on random and tie-heavy scores;
- the tower's two attention scores and merger outputs == the reference's vision pass;
- the whole pipeline with --preset trio-qwen (vision stage, then TRIO's cut): the vision stage's kept indices and
  merged features, the cut's kept set, the kept tokens' original M-RoPE rows and the prefill's logits == the
  reference, in the torch runtime's form and the form export traces; the ONNX export answers alike.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import make_pipeline, random_image
from qwen_reference import prefill_after_vision, prefill_reference, ve_keep_indices, vision_pass

from trio_edge.errors import ScheduleError
from trio_edge.models.registry import load
from trio_edge.models.tiny_qwen import make_tiny_qwen2_5_vl
from trio_edge.trio.trio_ve_qwen import TrioVEQwenRule

GRID = (224, 224)  # 8 x 8 merged tokens: 2 x 2 of TRIO's 4x4 windows
PROMPTS = ["what color is the triangle?", "how many circles are there?"]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """Two distinct full-attention blocks (1 and 3 of 4), as the real towers read two different blocks."""
    path = make_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen-ve"), seed=3, vision_layers=4,
                                full_attention_blocks=[1, 3])
    return load(str(path))


@pytest.fixture(scope="module")
def pictures():
    return [random_image(w, h, seed=10 + i) for i, (w, h) in enumerate([(300, 200), (224, 224)])]


def scores(rng: random.Random, count: int, ties: bool) -> list[float]:
    return [float(rng.randrange(5)) / 7 + 0.01 if ties else rng.random() for _ in range(count)]


@pytest.mark.parametrize("merged_hw", [(8, 8), (12, 8), (10, 14), (4, 4), (16, 16)])
def test_the_rule_equals_the_authors_walk(merged_hw):
    rng = random.Random(sum(merged_hw))
    tokens = merged_hw[0] * merged_hw[1]
    for trial in range(12):
        keep = rng.choice([2, 3, tokens // 6, tokens // 2, tokens - 1, tokens])
        local, global_ = scores(rng, tokens, trial % 2 == 0), scores(rng, tokens, trial % 3 == 0)
        rule = TrioVEQwenRule(keep, *merged_hw, num_vision_layers=4, full_attention_blocks=[1, 3])
        ours = rule.select(torch.tensor(local), torch.tensor(global_)).tolist()
        assert ours == ve_keep_indices(local, global_, keep, *merged_hw), (keep, trial)


def test_the_tower_scores_equal_the_reference_vision_pass(qwen, pictures):
    from trio_edge.models.qwen_vision import QwenVisionFeatures

    inputs = qwen.adapter.hf_inputs(pictures[0], PROMPTS[0], GRID)
    reference = vision_pass(qwen.model, inputs["pixel_values"], inputs["image_grid_thw"])
    tower = QwenVisionFeatures(qwen.model.model.visual, (1, 16, 16), score_blocks=(1, 3))
    with torch.no_grad():
        features, received = tower.features_and_scores(inputs["pixel_values"])
        plain = tower(inputs["pixel_values"])
    torch.testing.assert_close(features, reference.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features, plain, rtol=1e-5, atol=1e-5)  # explicit probabilities == SDPA
    torch.testing.assert_close(received[1], torch.tensor(reference.local_scores), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(received[3], torch.tensor(reference.global_scores), rtol=1e-5, atol=1e-9)


def test_the_authors_preset_on_a_shallow_model(qwen):
    schedule = qwen.adapter.schedule(GRID, preset="trio-qwen")
    # int(0.167 * 64) = 10 after the tower; after layer 14 of 28 -> 2 of 4: int(0.333 * 10) = 3
    assert (schedule.vision.keep, schedule.vision.tokens, [(c.layer, c.keep) for c in schedule.cuts]) == (10, 10, [(2, 3)])
    assert schedule.positions == "original" and schedule.provenance["preset"] == "trio-qwen"
    ratio = qwen.adapter.schedule(GRID, method="trio-ve", keep_ratio=1 / 9)  # the same shape at 1/9
    assert (ratio.vision.keep, [(c.layer, c.keep) for c in ratio.cuts]) == (10, [(2, 3)])


@pytest.mark.parametrize("runtime_form", [True, False], ids=["runtime-form", "export-form"])
def test_the_pruned_prefill_equals_the_authors_qwen_code(qwen, pictures, runtime_form):
    schedule = qwen.adapter.schedule(GRID, preset="trio-qwen")
    for picture, prompt in zip(pictures, PROMPTS):
        inputs = qwen.adapter.hf_inputs(picture, prompt, GRID)
        args = (qwen.model, inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"], 0.167)
        reference = prefill_reference(*args, [2], [0.333])
        pipeline = make_pipeline(qwen, schedule, max_new_tokens=1, grid=GRID, runtime_form=runtime_form,
                                 method="trio-ve")
        ours = pipeline.generate(picture, prompt)
        assert ours.vision_kept == [reference.ve_kept] and len(reference.ve_kept) == 10
        assert ours.kept == reference.kept_original and [len(k) for k in ours.kept] == [3]
        torch.testing.assert_close(ours.first_logits[0], reference.last_logits, rtol=1e-4, atol=1e-4)


def test_kept_tokens_keep_their_original_rows_after_the_vision_stage(qwen, pictures):
    schedule = qwen.adapter.schedule(GRID, method="trio-ve", cuts="vision:20")
    inputs = qwen.adapter.hf_inputs(pictures[0], PROMPTS[1], GRID)
    reference = prefill_after_vision(qwen.model, inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
                                     20 / 64)
    pipeline = make_pipeline(qwen, schedule, max_new_tokens=1, grid=GRID, method="trio-ve")
    (pixels,), ids, _ = pipeline.prepare(pictures[0], PROMPTS[1])
    kept = torch.tensor([reference.ve_kept])
    rows = qwen.adapter.prompt_positions(ids, GRID, kept)
    assert torch.equal(rows[:, 0], reference.positions)
    assert qwen.adapter.first_decode_position(rows) == reference.first_decode_position
    merged = pipeline.backend.run("vision", {"pixel_values": pixels})["image_features"]
    torch.testing.assert_close(merged, reference.embeds[ids[0] == qwen.adapter.image_token_id], rtol=1e-5, atol=1e-5)


def test_keep_all_in_the_vision_stage_is_the_unpruned_pipeline(qwen, pictures):
    everything = qwen.adapter.schedule(GRID, method="trio-ve", cuts="vision:64")
    pruned = make_pipeline(qwen, everything, max_new_tokens=4, grid=GRID, method="trio-ve").generate(
        pictures[1], PROMPTS[0])
    full = make_pipeline(qwen, qwen.adapter.schedule(GRID), max_new_tokens=4, grid=GRID).generate(
        pictures[1], PROMPTS[0])
    assert pruned.vision_kept == [list(range(64))] and pruned.token_ids == full.token_ids
    torch.testing.assert_close(pruned.first_logits, full.first_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options, says", [
    ({"preset": "trio-ve-64"}, "is TRIO's LLaVA schedule (per CLIP tile); on this model use --preset trio-qwen"),
    ({"method": "trio-ve", "cuts": "vision:1"}, "keeps vision:1 of 64 image tokens; it needs 2..64"),
    ({"method": "trio-ve", "cuts": "2:8"}, "pass --preset trio-qwen"),
    ({"method": "trio-ve", "cuts": "vision:20,0:8"}, "reruns the decoder layer just executed"),
])
def test_bad_vision_stage_schedules_are_refused_in_one_line(qwen, options, says):
    with pytest.raises(ScheduleError) as error:
        qwen.adapter.schedule(GRID, **options)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_the_qwen_preset_is_refused_on_llava(tiny):
    with pytest.raises(ScheduleError, match="--preset trio-qwen is TRIO's qwen2.5-vl schedule"):
        tiny.adapter.schedule(tiny.adapter.default_grid(), preset="trio-qwen")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_the_exported_vision_stage_answers_as_pytorch(qwen, pictures, tmp_path, target):
    from trio_edge import load as load_export
    from trio_edge.exporters.export import export
    from trio_edge.exporters.trt_check import check_path, parse_trt_version

    export(qwen.source, tmp_path / "export", loaded=qwen, preset="trio-qwen", grid="224x224", max_text_tokens=48,
           max_new_tokens=4, progress=False, target=target)  # validates every graph against its module
    schedule = qwen.adapter.schedule(GRID, preset="trio-qwen")
    with load_export(tmp_path / "export") as graphs:
        for picture, prompt in zip(pictures, PROMPTS):
            torch_answer = make_pipeline(qwen, schedule, max_new_tokens=4, grid=GRID, method="trio-ve").generate(
                picture, prompt)
            onnx_answer = graphs.generate(picture, prompt)
            assert (onnx_answer.vision_kept, onnx_answer.kept) == (torch_answer.vision_kept, torch_answer.kept)
            assert onnx_answer.token_ids == torch_answer.token_ids
    if target == "tensorrt":
        errors = [f for report in check_path(str(tmp_path / "export"), parse_trt_version("10.3")) for f in report.errors]
        assert errors == []
