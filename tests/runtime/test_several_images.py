"""Several images per request (trio-export --images N), on the tiny LLaVA-NeXT, Qwen2.5-VL and Qwen3-VL.

- Pruning off, the pipeline (both runtime forms) equals transformers' `generate` with N images, token for token with
  every step's logits; so do the exported graphs (LLaVA-NeXT and Qwen2.5-VL, ONNX Runtime).
- Keep-all cuts equal the unpruned pipeline: the select graphs read and write every image span.
- TRIO, FastV, DART and PyramidDrop over several images keep exactly what the plain reference (tests/reference.py,
  built from transformers' own layers) keeps when it runs the rule on the union of the images' tokens; with
  --budget-per-image, TRIO keeps exactly the greedy rule run on each image's span with its share of the budget.
- Requests with another number of images, and options that cannot apply, are refused with one line.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import PROMPTS, hf_generate, make_pipeline, random_image
from reference import embed_prompt_rows, reference_generate, reference_saliency

from trio_edge.errors import InputError, ScheduleError
from trio_edge.trio.schedule import Schedule, split_keep
from trio_edge.trio.selection import select_tokens

QWEN_GRIDS = {"qwen2.5-vl": (224, 224), "qwen3-vl": (256, 256)}  # 64 image tokens each


@pytest.fixture(scope="module")
def pictures():
    return [random_image(w, h, seed=10 + i) for i, (w, h) in enumerate([(120, 80), (64, 90), (100, 100), (70, 40)])]


@pytest.fixture(scope="module")
def families(tiny, qwen2_5, qwen3):
    return {"llava-next": tiny, "qwen2.5-vl": qwen2_5, "qwen3-vl": qwen3}


def grid_of(loaded):
    return QWEN_GRIDS.get(loaded.adapter.family, loaded.adapter.default_grid())


@pytest.mark.parametrize("runtime_form", [True, False], ids=["runtime-form", "export-form"])
@pytest.mark.parametrize("family", ["llava-next", "qwen2.5-vl", "qwen3-vl"])
def test_unpruned_with_several_images_equals_generate(families, pictures, family, runtime_form):
    loaded = families[family]
    count = 3
    expected_ids, expected_logits = hf_generate(loaded, pictures[:count], PROMPTS[0], grid_of(loaded), 5)
    pipeline = make_pipeline(loaded, Schedule(), max_new_tokens=5, grid=grid_of(loaded), images=count,
                             runtime_form=runtime_form)
    result = pipeline.generate(pictures[:count], PROMPTS[0])
    assert result.token_ids == expected_ids
    for ours, theirs in zip(pipeline.backend.logits, expected_logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert result.prompt_tokens > count * loaded.adapter.image_token_count(grid_of(loaded))


def test_the_images_and_their_order_matter(tiny, pictures):
    """The parity above is not vacuous: swapping two images changes the logits."""
    pipeline = make_pipeline(tiny, Schedule(), max_new_tokens=1, images=2)
    pipeline.generate(pictures[:2], PROMPTS[1])
    pipeline.generate(pictures[1::-1], PROMPTS[1])
    first, swapped = pipeline.backend.logits
    assert (first - swapped).abs().max() > 1e-3


@pytest.mark.parametrize("family, cuts", [("llava-next", "0:264,2:264"), ("qwen2.5-vl", "1:192,3:192"),
                                          ("qwen3-vl", "1:192,2:192")])
def test_keep_all_cuts_over_several_images_are_the_unpruned_pipeline(families, pictures, family, cuts):
    loaded = families[family]
    grid = grid_of(loaded)
    full = make_pipeline(loaded, Schedule(), max_new_tokens=4, grid=grid, images=3).generate(pictures[:3], PROMPTS[2])
    schedule = loaded.adapter.schedule(grid, 3, cuts=cuts)
    pruned = make_pipeline(loaded, schedule, max_new_tokens=4, grid=grid, images=3).generate(pictures[:3], PROMPTS[2])
    assert pruned.token_ids == full.token_ids
    torch.testing.assert_close(pruned.first_logits, full.first_logits, rtol=1e-4, atol=1e-4)
    assert [len(k) for k in pruned.kept] == [192 if family != "llava-next" else 264] * 2


@pytest.mark.parametrize("method, cuts", [("trio", "1:90,3:40"), ("fastv", "2:60"), ("dart", "2:60"),
                                          ("pdrop", "1:90,2:40")])
def test_kept_sets_over_several_images_equal_the_reference_on_their_union(tiny, pictures, method, cuts):
    """Each rule is defined per image token: over several images it runs on the union of their spans (text between
    them), one budget. The reference runs transformers' own layers on the whole prompt and the rule on the image
    rows, wherever they are."""
    images = pictures[:3]
    schedule = tiny.adapter.schedule(tiny.adapter.default_grid(), 3, cuts=cuts, method=method)
    inputs = tiny.adapter.hf_inputs(images, PROMPTS[0], tiny.adapter.default_grid())
    expected = reference_generate(tiny.model, inputs, schedule, 3, tiny.adapter.stop_token_ids(), method=method)
    for runtime_form in (True, False):
        result = make_pipeline(tiny, schedule, max_new_tokens=3, images=3, method=method,
                               runtime_form=runtime_form).generate(images, PROMPTS[0])
        assert result.kept == expected.kept
        assert result.token_ids == expected.token_ids
    per_image = result.kept_per_item[0]
    assert sum(len(k) for k in per_image) == schedule.cuts[0].keep and len(per_image) == 3
    assert sum(1 for k in per_image if k) >= 2  # the budget really spreads over several images


def test_per_image_budgets_run_the_rule_on_each_image(tiny, pictures):
    """--budget-per-image: TRIO's greedy rule on each image's span alone, with KEEP split evenly (the first
    KEEP % N images one more), on the saliency of the whole prompt's proxy loss."""
    images, keep = pictures[:3], 80
    grid = tiny.adapter.default_grid()
    schedule = tiny.adapter.schedule(grid, 3, cuts=f"1:{keep}")
    result = make_pipeline(tiny, schedule, max_new_tokens=1, images=3, budget_per_image=True).generate(
        images, PROMPTS[0])
    embeds, rows = embed_prompt_rows(tiny.model, tiny.adapter.hf_inputs(images, PROMPTS[0], grid))
    from reference import run_layer

    with torch.no_grad():
        h = run_layer(tiny.model, 0, embeds, torch.arange(embeds.shape[0]))
    saliency = reference_saliency(tiny.model, 1, h, torch.arange(h.shape[0]))[rows]
    per_image = len(rows) // 3
    expected = []
    for index, share in enumerate(split_keep(keep, 3)):
        span = slice(index * per_image, (index + 1) * per_image)
        expected += (select_tokens(saliency[span], h[rows][span], share, 0.8) + index * per_image).tolist()
    assert result.kept == [expected]
    assert [len(k) for k in result.kept_per_item[0]] == [27, 27, 26]


def test_requests_with_another_number_of_images_are_refused(tiny, pictures):
    pipeline = make_pipeline(tiny, Schedule(), max_new_tokens=1, images=2)
    with pytest.raises(InputError, match="takes exactly 2 images per request, got 1"):
        pipeline.generate(pictures[0], PROMPTS[0])
    with pytest.raises(InputError, match="takes exactly 2 images per request, got 3"):
        pipeline.generate(pictures[:3], PROMPTS[0])
    with pytest.raises(InputError, match="3 image slots"):
        pipeline.generate(pictures[:2], "<image> <image> <image> which?")
    with pytest.raises(InputError, match="takes images, not a video"):
        pipeline.generate(prompt="what happens?", video=b"not looked at")


@pytest.mark.parametrize("options, message", [
    ({"budget_per_image": True}, "splits each cut's budget over several images"),
    ({"images": 2, "budget_per_image": True, "method": "dart", "cuts": "2:60"}, "DART chooses its pivots"),
    ({"images": 3, "budget_per_image": True, "cuts": "1:2"}, "keeps fewer tokens than the 3 images"),
    ({"images": 2, "method": "sparsevlm", "cuts": "1:60,2:20"}, "SparseVLM's released code takes one image"),
    ({"video_frames": 8}, "takes images only"),
    ({"images": 0}, "--images must be"),
])
def test_options_that_cannot_apply_are_refused(tiny, options, message):
    from trio_edge.runtime.open import open_model

    options = {"cuts": "1:40", **options}
    with pytest.raises(ScheduleError if "budget" in message or "DART" in message or "Sparse" in message
                       or "fewer" in message else InputError, match=message):
        open_model(tiny, **options)


def test_qwen_vision_stage_and_odd_frame_counts_are_refused(qwen2_5):
    from trio_edge.runtime.open import open_model

    with pytest.raises(ScheduleError, match="vision stage takes one image"):
        open_model(qwen2_5, images=2, method="trio-ve", cuts="vision:20", grid="224x224")
    with pytest.raises(InputError, match="groups of 2"):
        open_model(qwen2_5, video_frames=7, grid="224x224")


@pytest.mark.slow
def test_exports_with_several_images_answer_as_pytorch_and_generate(tiny, qwen2_5, pictures, tmp_path):
    """ONNX Runtime on exports that take several images: unpruned LLaVA-NeXT and Qwen2.5-VL equal transformers'
    generate token for token; LLaVA-NeXT with TRIO over three images keeps what the PyTorch pipeline keeps, and
    trio-run reports the kept tokens per image."""
    import trio_edge
    from trio_edge.cli.run import main as run_main

    for loaded, images in ((tiny, 2), (qwen2_5, 2)):
        grid = grid_of(loaded)
        out = tmp_path / f"{loaded.adapter.family}-unpruned"
        trio_edge.export(loaded.source, out, images=images, grid=f"{grid[0]}x{grid[1]}", max_text_tokens=40,
                         max_new_tokens=5, progress=False, loaded=loaded,
                         target="onnxruntime" if loaded is qwen2_5 else "tensorrt")
        expected_ids, expected_logits = hf_generate(loaded, pictures[:images], PROMPTS[3], grid, 5)
        with trio_edge.load(out) as pipeline:
            result = pipeline.generate(pictures[:images], PROMPTS[3])
        assert result.token_ids == expected_ids
        torch.testing.assert_close(result.first_logits[0], expected_logits[0], rtol=1e-3, atol=1e-3)

    out = tmp_path / "llava-trio"
    trio_edge.export(tiny.source, out, images=3, cuts="1:90,2:40", max_text_tokens=40, max_new_tokens=4,
                     progress=False, loaded=tiny)
    schedule = tiny.adapter.schedule(tiny.adapter.default_grid(), 3, cuts="1:90,2:40")
    want = make_pipeline(tiny, schedule, max_new_tokens=4, images=3, max_text_tokens=40).generate(pictures[:3],
                                                                                                 PROMPTS[0])
    with trio_edge.load(out) as pipeline:
        have = pipeline.generate(pictures[:3], PROMPTS[0])
    assert have.kept == want.kept and have.token_ids == want.token_ids
    paths = []
    for index, picture in enumerate(pictures[:3]):
        paths += ["--image", str(tmp_path / f"{index}.png")]
        picture.save(paths[-1])
    assert run_main([str(out), *paths, "--prompt", PROMPTS[0], "--json"]) == 0
    records = tmp_path / "records.jsonl"  # trio-batch: a list of images per record; a wrong count fails its record
    records.write_text(json.dumps({"id": "three", "image": paths[1::2], "prompt": PROMPTS[0]}) + "\n"
                       + json.dumps({"id": "one", "image": paths[1], "prompt": PROMPTS[0]}) + "\n")
    trio_edge.batch(out, records, tmp_path / "answers.jsonl", progress=False)
    answers = {row["id"]: row for row in map(json.loads, (tmp_path / "answers.jsonl").read_text().splitlines())}
    assert answers["three"]["kept"] == have.kept and "takes exactly 3 images" in answers["one"]["error"]


def test_trio_run_reports_the_kept_tokens_per_image(tiny, pictures, tmp_path, capsys):
    from trio_edge.cli.run import main as run_main

    paths = []
    for index, picture in enumerate(pictures[:2]):
        paths += ["--image", str(tmp_path / f"{index}.png")]
        picture.save(paths[-1])
    assert run_main([str(tiny.source), *paths, "--prompt", PROMPTS[0], "--images", "2", "--cuts", "1:60",
                     "--max-new-tokens", "2", "--json"]) == 0
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    per_image = body["kept_per_image"][0]
    assert len(per_image) == 2 and sum(len(k) for k in per_image) == 60
    assert sorted(i for k, offset in zip(per_image, (0, 88)) for i in (v + offset for v in k)) == body["kept"][0]
    assert run_main([str(tiny.source), *paths[:2], "--prompt", PROMPTS[0], "--images", "2"]) == 2
    assert "takes exactly 2 images" in capsys.readouterr().err


@pytest.fixture(scope="module")
def llava_1_5(tmp_path_factory):
    """LLaVA-1.5's real architecture scaled down (one 336-px tile; 14 x 14 patches of 24 px), random weights."""
    from trio_edge.models.random_weights import build_random
    from trio_edge.models.registry import load

    return load(str(build_random("llava-1.5-7b", tmp_path_factory.mktemp("llava-1.5"), dtype=torch.float32,
                                 scale=0.03, layers=2, vision_layers=1, patch_size=24)))


def test_llava_1_5_with_several_images_equals_generate(llava_1_5, pictures):
    expected_ids, expected_logits = hf_generate(llava_1_5, pictures[:2], PROMPTS[4], None, 4)
    schedule = llava_1_5.adapter.schedule(llava_1_5.adapter.default_grid(), 2, cuts="1:392")  # keep all
    for pruned in (Schedule(), schedule):
        pipeline = make_pipeline(llava_1_5, pruned, max_new_tokens=4, images=2)
        assert pipeline.generate(pictures[:2], PROMPTS[4]).token_ids == expected_ids
        torch.testing.assert_close(pipeline.backend.logits[0], expected_logits[0], rtol=1e-4, atol=1e-4)
