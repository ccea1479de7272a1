"""A video per request (trio-export --video-frames F), on the tiny Qwen2.5-VL and Qwen3-VL.

- Pruning off, the pipeline (both runtime forms) equals transformers' `generate` with the video (pixel_values_videos,
  video_grid_thw; Qwen2.5-VL's second_per_grid_ts, Qwen3-VL's timestamps in the text), token for token with every
  step's logits; so does the exported pipeline on ONNX Runtime.
- Qwen3-VL's prompt is transformers' Qwen3VLProcessor's expansion of the video, timestamps included.
- Keep-all cuts equal the unpruned pipeline; TRIO, FastV and DART over the frame groups keep exactly what plain
  implementations from transformers' own layers keep on the union of the groups' tokens.
- A video of the wrong format, a corrupt one, one longer than the limit or with too few frames is one line, exit 2.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from helpers import hf_generate, make_pipeline
from video_files import indexed_frames, write_video

from trio_edge.errors import InputError
from trio_edge.trio.schedule import Schedule

GRIDS = {"qwen2.5-vl": (224, 224), "qwen3-vl": (256, 256)}  # 64 image tokens per frame pair
QUESTION = "what happens in the video?"


@pytest.fixture(scope="module")
def clip() -> bytes:
    """3 s at 8 fps, 96x64: frames move and carry their index (lossless, so both sides decode the same pixels)."""
    return write_video(None, indexed_frames(24, 96, 64), fps=8, codec="ffv1", container="matroska")


@pytest.fixture(scope="module")
def families(qwen2_5, qwen3):
    return {"qwen2.5-vl": qwen2_5, "qwen3-vl": qwen3}


@pytest.mark.parametrize("runtime_form", [True, False], ids=["runtime-form", "export-form"])
@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_unpruned_with_a_video_equals_generate(families, clip, family, runtime_form):
    loaded = families[family]
    grid = GRIDS[family]
    video = loaded.adapter.load_video(clip, 8)
    expected_ids, expected_logits = hf_generate(loaded, None, QUESTION, grid, 5, video=video)
    pipeline = make_pipeline(loaded, Schedule(), max_new_tokens=5, grid=grid, video_frames=8, max_text_tokens=96,
                             runtime_form=runtime_form)
    result = pipeline.generate(prompt=QUESTION, video=clip)
    assert result.token_ids == expected_ids
    for ours, theirs in zip(pipeline.backend.logits, expected_logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert result.frame_groups == [list(video.frame_indices[i:i + 2]) for i in range(0, 8, 2)]


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_frames_letterboxed_as_they_decode_give_the_same_pixels(families, clip, family):
    """The pipeline and trio-serve letterbox each kept frame to the export's size while decoding (no full-size frame
    is held): the vision inputs are exactly those of letterboxing the full-size frames later."""
    adapter, grid = families[family].adapter, GRIDS[family]
    early = adapter.load_video(clip, 8, grid)
    assert {frame.size for frame in early.frames} == {grid}
    for ours, full_size in zip(adapter.video_pixel_values(early, grid),
                               adapter.video_pixel_values(adapter.load_video(clip, 8), grid), strict=True):
        assert torch.equal(ours, full_size)


def test_the_frames_and_their_times_matter(qwen2_5, qwen3, clip):
    """The parity above is not vacuous: other frames (a shorter clip), or the same frames at another frame rate
    (Qwen2.5-VL's temporal positions, Qwen3-VL's timestamps), change the logits."""
    other_rate = write_video(None, indexed_frames(24, 96, 64), fps=2, codec="ffv1", container="matroska")
    for loaded in (qwen2_5, qwen3):
        grid = GRIDS[loaded.adapter.family]
        pipeline = make_pipeline(loaded, Schedule(), max_new_tokens=1, grid=grid, video_frames=8, max_text_tokens=96)
        first = pipeline.generate(prompt=QUESTION, video=clip).first_logits
        slower = pipeline.generate(prompt=QUESTION, video=other_rate).first_logits
        assert (first - slower).abs().max() > 1e-4


def test_qwen3_prompt_is_the_processors_expansion(qwen3, clip):
    """transformers' Qwen3VLProcessor.replace_video_token (run on a stand-in processor holding what it reads)
    writes the same text for the video as the adapter: '<T seconds>' + <|vision_start|> + pads + <|vision_end|>
    per frame pair, inside the template's own pair."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    adapter = qwen3.adapter
    video = adapter.load_video(clip, 8)
    merge = int(adapter.vision_config.spatial_merge_size)
    _, h, w = adapter._thw(GRIDS["qwen3-vl"])
    stand_in = SimpleNamespace(video_processor=SimpleNamespace(merge_size=merge, temporal_patch_size=2),
                               vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
                               video_token="<|video_pad|>")
    stand_in._calculate_timestamps = Qwen3VLProcessor._calculate_timestamps.__get__(stand_in)
    inputs = {"video_grid_thw": torch.tensor([[4, h, w]]),
              "video_metadata": [VideoMetadata(total_num_frames=video.total_frames, fps=video.fps,
                                               frames_indices=list(video.frame_indices))]}
    expansion = Qwen3VLProcessor.replace_video_token(stand_in, inputs, 0)
    ours = adapter.expanded_prompt(QUESTION, 64, video=video, for_model=True)
    template = adapter.format_prompt(QUESTION, video=video)
    assert ours == template.replace("<|video_pad|>", expansion)
    assert "<0.2 seconds>" in ours and "<2.7 seconds>" in ours and ours.count("<|vision_start|>") == 5


@pytest.mark.parametrize("family, cuts", [("qwen2.5-vl", "1:256,3:256"), ("qwen3-vl", "1:256,2:256")])
def test_keep_all_cuts_over_a_video_are_the_unpruned_pipeline(families, clip, family, cuts):
    loaded = families[family]
    grid = GRIDS[family]
    options = dict(max_new_tokens=4, grid=grid, video_frames=8, max_text_tokens=96)
    full = make_pipeline(loaded, Schedule(), **options).generate(prompt=QUESTION, video=clip)
    schedule = loaded.adapter.schedule(grid, 4, cuts=cuts)
    pruned = make_pipeline(loaded, schedule, **options).generate(prompt=QUESTION, video=clip)
    assert pruned.token_ids == full.token_ids and pruned.kept == [list(range(256))] * 2
    torch.testing.assert_close(pruned.first_logits, full.first_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method, cuts", [("trio", "1:100,2:40"), ("fastv", "2:80"), ("dart", "2:60")])
def test_kept_sets_over_the_frame_groups_equal_plain_implementations(qwen3, clip, method, cuts):
    """Qwen3-VL: every frame pair is its own span after its timestamp; a cut selects from all of them at once."""
    from reference import qwen3_plain_prefill

    grid = GRIDS["qwen3-vl"]
    video = qwen3.adapter.load_video(clip, 8)
    schedule = qwen3.adapter.schedule(grid, 4, cuts=cuts, method=method)
    inputs = qwen3.adapter.hf_inputs(None, QUESTION, grid, video=video)
    kept, logits = qwen3_plain_prefill(qwen3.model, inputs, {c.layer: c.keep for c in schedule.cuts}, method)
    for runtime_form in (True, False):
        ours = make_pipeline(qwen3, schedule, max_new_tokens=1, grid=grid, video_frames=8, max_text_tokens=96,
                             method=method, runtime_form=runtime_form).generate(prompt=QUESTION, video=clip)
        assert ours.kept == kept
        torch.testing.assert_close(ours.first_logits[0], logits, rtol=1e-4, atol=1e-4)
    assert sum(1 for group in ours.kept_per_item[0] if group) >= 2


def test_video_requests_are_checked(qwen2_5, clip, tmp_path):
    pipeline = make_pipeline(qwen2_5, Schedule(), max_new_tokens=1, grid=GRIDS["qwen2.5-vl"], video_frames=8,
                             max_text_tokens=96)
    with pytest.raises(InputError, match="takes one video of 8 frames and no image"):
        pipeline.generate("picture.png", QUESTION)
    with pytest.raises(InputError, match="has 6 frames; this export samples 8"):
        pipeline.generate(prompt=QUESTION, video=write_video(None, indexed_frames(6), fps=8))
    with pytest.raises(InputError, match="cannot decode the video"):
        mp4 = write_video(None, indexed_frames(24, 96, 64), fps=8)
        pipeline.generate(prompt=QUESTION, video=mp4[: len(mp4) // 2])
    with pytest.raises(InputError, match="video file not found"):
        pipeline.generate(prompt=QUESTION, video=tmp_path / "missing.mp4")


@pytest.mark.slow
def test_video_exports_answer_as_generate_and_pytorch(qwen2_5, qwen3, clip, tmp_path, capsys):
    """ONNX Runtime: unpruned Qwen2.5-VL and Qwen3-VL video exports equal generate token for token; a Qwen3-VL export with TRIO
    over the frame pairs keeps what PyTorch keeps; trio-run --video reports the kept tokens per frame pair; bad clips
    are one line and exit 2, and nothing is written."""
    import trio_edge
    from trio_edge.cli.run import main as run_main

    for loaded, grid in ((qwen2_5, "224x224"), (qwen3, "256x256")):  # unpruned: transformers' own answer
        unpruned = tmp_path / f"{loaded.adapter.family}-video"
        trio_edge.export(loaded.source, unpruned, video_frames=8, grid=grid, max_text_tokens=96, max_new_tokens=5,
                         progress=False, loaded=loaded)
        video = loaded.adapter.load_video(clip, 8)
        expected_ids, _ = hf_generate(loaded, None, QUESTION, GRIDS[loaded.adapter.family], 5, video=video)
        with trio_edge.load(unpruned) as pipeline:
            assert pipeline.generate(prompt=QUESTION, video=clip).token_ids == expected_ids

    pruned = tmp_path / "qwen3-video-trio"
    trio_edge.export(qwen3.source, pruned, video_frames=8, grid="256x256", cuts="1:100,2:40", max_text_tokens=96,
                     max_new_tokens=4, progress=False, loaded=qwen3, target="onnxruntime")
    schedule = qwen3.adapter.schedule(GRIDS["qwen3-vl"], 4, cuts="1:100,2:40")
    want = make_pipeline(qwen3, schedule, max_new_tokens=4, grid=GRIDS["qwen3-vl"], video_frames=8,
                         max_text_tokens=96).generate(prompt=QUESTION, video=clip)
    path = tmp_path / "clip.mkv"
    path.write_bytes(clip)
    assert run_main([str(pruned), "--video", str(path), "--prompt", QUESTION, "--json"]) == 0
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert body["kept"] == want.kept and body["token_ids"] == want.token_ids
    assert len(body["kept_per_frame_group"][0]) == 4 and len(body["frame_groups"]) == 4
    records = tmp_path / "records.jsonl"  # trio-batch: a video per record
    records.write_text(json.dumps({"id": "clip", "video": str(path), "prompt": QUESTION}) + "\n")
    trio_edge.batch(pruned, records, tmp_path / "answers.jsonl", progress=False)
    assert json.loads((tmp_path / "answers.jsonl").read_text())["kept"] == want.kept
    from trio_edge.cli.bench import main as bench_main  # trio-bench --video: the clip decoded once, then measured

    assert bench_main([str(pruned), "--video", str(path), "--prompt", QUESTION, "--warmup", "0", "--iters", "1",
                       "--new-tokens", "2", "--quiet", "--json", str(tmp_path / "bench.json")]) == 0
    assert json.loads((tmp_path / "bench.json").read_text())
    for bad, message in ((tmp_path / "missing.mp4", "video file not found"),
                         (write_video(tmp_path / "short.mp4", indexed_frames(5), fps=8), "has 5 frames")):
        assert run_main([str(pruned), "--video", str(bad), "--prompt", QUESTION]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
