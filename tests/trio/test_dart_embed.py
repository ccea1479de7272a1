"""DART at the embedding level as NVIDIA TensorRT Edge-LLM runs it (`--method dart-embed`): the fixed-shape rule
equals a plain step-by-step transcription of Edge-LLM's DartPruner (tests/reference.py edge_llm_dart_keep) on
random and tie-heavy embeddings in every span layout; on Qwen3-VL its cut at layer 0 compacts tokens, DeepStack
planes and M-RoPE rows together and answers as the plain prefill from transformers' layers (one image, several, a
video); the exported graphs answer as PyTorch."""

from __future__ import annotations

import pytest
import torch
from helpers import make_pipeline, random_image
from reference import edge_llm_dart_keep, qwen3_plain_prefill
from video_files import indexed_frames, write_video

from trio_edge.errors import ScheduleError
from trio_edge.trio.dart_embed import embedding_dart_fixed, growth_counts, quotas_for_keep, span_quotas

LAYOUTS = {  # (text before, [span, text after it], ...)
    "one image": (5, [(64, 9)]),
    "three images": (4, [(40, 3), (40, 3), (40, 8)]),
    "unequal spans": (2, [(7, 1), (33, 2), (18, 6)]),
    "tiny spans": (6, [(3, 1), (2, 1), (5, 7)]),
}


def layout(name: str):
    before, spans = LAYOUTS[name]
    visual = [False] * before
    for span, after in spans:
        visual += [True] * span + [False] * after
    return visual, tuple(span for span, _ in spans)


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("fraction", [1.0, 0.75, 0.5, 0.25, 0.1, 0.02])
@pytest.mark.parametrize("ties", [False, True], ids=["random", "duplicates"])
def test_the_rule_equals_edge_llms_selection(name, fraction, ties):
    visual, spans = layout(name)
    generator = torch.Generator().manual_seed(hash((name, fraction, ties)) % 2**31)
    embeds = torch.randn(len(visual), 24, generator=generator)
    if ties:  # repeated rows and equal norms: the lower-position rule decides
        embeds[1::3] = embeds[0]
        embeds[visual.index(True) + 2] = embeds[visual.index(True)]
    quotas = span_quotas(spans, fraction)
    rows = torch.tensor([i for i, flag in enumerate(visual) if flag])
    kept, norms = embedding_dart_fixed(embeds, rows, spans, quotas)
    assert kept.tolist() == edge_llm_dart_keep(embeds, visual, fraction)
    assert quotas_for_keep(spans, sum(quotas)) == quotas or len(set(spans)) > 1
    torch.testing.assert_close(norms, embeds.abs().sum(dim=-1)[rows])


def test_quotas_round_the_reduction_ratio_as_a_cpp_float():
    """Edge-LLM reads --dartReductionRatio into a float: 1 - 0.9f = 0.10000002, so 120 tokens keep 13."""
    assert span_quotas((120,), 0.1) == (13,) and span_quotas((120, 64), 0.25) == (30, 16)
    assert span_quotas((3,), 0.01) == (1,) and span_quotas((50,), 1.0) == (50,)


def test_each_pivot_adds_its_share_of_what_is_left():
    assert growth_counts(20, 4, 4) == [2, 2, 2, 2, 2, 2, 2, 2]
    assert growth_counts(10, 4, 4) == [1, 1, 1, 1, 1, 1]  # 4 pivots + 6
    assert growth_counts(3, 3, 4) == [] and growth_counts(13, 4, 2) == [2, 2, 2, 1, 1, 1]


GRID = (256, 256)  # 64 image tokens per image / frame pair


@pytest.mark.parametrize("request_kind", ["one image", "two images", "video"])
@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_qwen3_cut_at_layer_zero_equals_the_plain_prefill(qwen3, request_kind, fraction):
    """The tokens, DeepStack planes (added after layers 0-2) and M-RoPE rows of the kept tokens follow them; every
    frame pair of a Qwen3-VL video is its own span."""
    adapter, question = qwen3.adapter, "what is in it?"
    images = [random_image(200, 120, seed=1), random_image(90, 150, seed=2)]
    visual = {"one image": dict(images=1), "two images": dict(images=2), "video": dict(video_frames=8)}[request_kind]
    video = None
    if request_kind == "video":
        clip = write_video(None, indexed_frames(16, 96, 64), fps=8, codec="ffv1", container="matroska")
        video = adapter.load_video(clip, 8)
    items = 4 if video is not None else visual["images"]
    schedule = adapter.schedule(GRID, items, video is not None, keep_ratio=fraction, method="dart-embed")
    assert schedule.text() == f"0:{items * -(-64 * fraction // 1):.0f}" and schedule.positions == "original"
    request = {"video": clip} if video is not None else {"image": images[0] if items == 1 else images}
    inputs = adapter.hf_inputs(request.get("image"), question, GRID, video=video)
    kept, logits = qwen3_plain_prefill(qwen3.model, inputs, {0: fraction}, "dart-embed")
    for runtime_form in (True, False):
        result = make_pipeline(qwen3, schedule, max_new_tokens=1, grid=GRID, method="dart-embed",
                               runtime_form=runtime_form, max_text_tokens=96, **visual).generate(prompt=question,
                                                                                                  **request)
        assert result.kept == kept
        torch.testing.assert_close(result.first_logits[0], logits, rtol=1e-4, atol=1e-4)
    assert [len(k) for k in result.kept_per_item[0]] == [len(kept[0]) // items] * items


def test_a_qwen2_5_video_is_one_span(qwen2_5):
    """Qwen2.5-VL writes a video's frame pairs as one visual run: one quota for all of them (Edge-LLM's spans are
    the contiguous runs), so a pair can keep more than its share."""
    clip = write_video(None, indexed_frames(16, 96, 64), fps=8, codec="ffv1", container="matroska")
    schedule = qwen2_5.adapter.schedule((224, 224), 4, True, keep_ratio=0.3, method="dart-embed")
    assert schedule.text() == "0:77"  # ceil(256 x 0.3), where four spans of 64 would keep 4 x 20 = 80
    pipeline = make_pipeline(qwen2_5, schedule, max_new_tokens=1, grid=(224, 224), video_frames=8,
                             method="dart-embed", max_text_tokens=96)
    recorded = {}
    run = pipeline.backend.run

    def recording(graph, inputs):
        if graph.startswith("select"):
            recorded.update(inputs)
        return run(graph, inputs)

    pipeline.backend.run = recording
    result = pipeline.generate(prompt="what happens?", video=clip)
    visual = torch.zeros(recorded["hidden"].shape[1], dtype=torch.bool)
    visual[recorded["image_positions"]] = True
    assert result.kept == [edge_llm_dart_keep(recorded["hidden"][0], visual.tolist(), 0.3)]
    assert pipeline.plan.selects[0].item_tokens == (256,)


def test_what_the_embedding_level_rule_cannot_take(qwen3):
    adapter = qwen3.adapter
    with pytest.raises(ScheduleError, match="prunes the input embeddings once"):
        adapter.schedule(GRID, cuts="2:20", method="dart-embed")
    from trio_edge.runtime.open import open_model

    with pytest.raises(ScheduleError, match="keeps a quota of every visual span already"):
        open_model(qwen3, images=2, cuts="0:40", method="dart-embed", budget_per_image=True, grid="256x256")
    with pytest.raises(ScheduleError, match="cut 0:2 is under the 3 spans of this export; keep at least 3"):
        open_model(qwen3, images=3, cuts="0:2", method="dart-embed", grid="256x256")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_dart_embed_exports_answer_as_pytorch(qwen3, tmp_path, target):
    from trio_edge import load as load_export
    from trio_edge.exporters.export import export
    from trio_edge.exporters.trt_check import check_path, parse_trt_version

    images = [random_image(200, 120, seed=3), random_image(150, 150, seed=4)]
    export(qwen3.source, tmp_path / "export", loaded=qwen3, keep_ratio=0.25, method="dart-embed", images=2,
           max_text_tokens=48, max_new_tokens=4, progress=False, target=target)  # validates every graph
    schedule = qwen3.adapter.schedule(GRID, 2, keep_ratio=0.25, method="dart-embed")
    want = make_pipeline(qwen3, schedule, max_new_tokens=4, grid=GRID, images=2, method="dart-embed",
                         max_text_tokens=48).generate(images, "which one is red?")
    with load_export(tmp_path / "export") as graphs:
        have = graphs.generate(images, "which one is red?")
    assert have.kept == want.kept and have.token_ids == want.token_ids
    if target == "tensorrt":
        assert [f for r in check_path(str(tmp_path / "export"), parse_trt_version("10.3")) for f in r.errors] == []
