"""models/video.py: a clip decoded with PyAV and sampled to a fixed number of frames by each Qwen family's rule;
every bad clip is one InputError line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from video_files import indexed_frames, write_video

from trio_edge.errors import InputError
from trio_edge.models.video import SampledVideo, arange_indices, linspace_indices, load_video

LOSSLESS = dict(codec="ffv1", container="matroska", pix_fmt="bgr0")


@pytest.fixture(scope="module")
def frames():
    return indexed_frames(24, 64, 48)


@pytest.fixture(scope="module")
def lossless(frames):
    return write_video(None, frames, fps=8, **LOSSLESS)


def plain_qwen2_vl_rule(total: int, frames: int) -> list[int]:
    """transformers 5.24, Qwen2VLVideoProcessor.sample_frames with num_frames (a multiple of the temporal patch):
    torch.arange(0, total_num_frames, total_num_frames / num_frames).int()."""
    return torch.arange(0, total, total / frames).int().tolist()


def plain_qwen3_vl_rule(total: int, frames: int) -> list[int]:
    """transformers 5.24, Qwen3VLVideoProcessor.sample_frames with num_frames:
    np.linspace(0, total_num_frames - 1, num_frames).round().astype(int)."""
    return np.linspace(0, total - 1, frames).round().astype(int).tolist()


@pytest.mark.parametrize("total", [2, 3, 7, 8, 16, 24, 25, 100, 301, 1799])
@pytest.mark.parametrize("count", [2, 4, 6, 8, 16])
def test_the_sampling_rules_are_the_processors(total, count):
    if count > total:
        return
    assert arange_indices(total, count) == plain_qwen2_vl_rule(total, count)
    assert linspace_indices(total, count) == plain_qwen3_vl_rule(total, count)
    for rule in (arange_indices, linspace_indices):
        picked = rule(total, count)
        assert len(picked) == count and picked == sorted(set(picked)) and 0 <= picked[0] and picked[-1] < total


def test_the_sampled_frames_are_the_clips_frames_at_those_indices(frames, lossless):
    video = load_video(lossless, 8, linspace_indices)
    assert video.frame_indices == tuple(plain_qwen3_vl_rule(24, 8))
    for index, frame in zip(video.frame_indices, video.frames):
        assert frame.mode == "RGB" and np.array_equal(np.asarray(frame), frames[index])
    assert (video.fps, video.total_frames, video.duration_s) == (8.0, 24, 3.0)
    assert video.sampled_fps == pytest.approx(8 / 24 * 8)
    assert video.timestamps_s() == [i / 8 for i in video.frame_indices]


@pytest.mark.parametrize("codec, container, pix_fmt", [("mpeg4", "mp4", "yuv420p"), ("libvpx", "webm", "yuv420p"),
                                                       ("png", "mov", "rgb24")])
def test_common_containers_decode_alike(frames, codec, container, pix_fmt, tmp_path):
    path = write_video(tmp_path / f"clip.{container}", frames, fps=8, codec=codec, container=container,
                       pix_fmt=pix_fmt)
    from_path = load_video(path, 4, arange_indices)
    from_bytes = load_video(path.read_bytes(), 4, arange_indices)
    assert from_path.frame_indices == from_bytes.frame_indices == tuple(plain_qwen2_vl_rule(24, 4))
    assert from_path.total_frames == 24 and from_path.fps == 8.0
    for a, b, index in zip(from_path.frames, from_bytes.frames, from_path.frame_indices):
        assert np.array_equal(np.asarray(a), np.asarray(b))
        corner = np.asarray(a)[:8, :8].astype(float).mean()
        assert abs(corner - 8 * index) < 12  # the frame's own index block, through lossy coding


def test_decoding_twice_gives_the_same_frames(lossless):
    first, second = (load_video(lossless, 6, linspace_indices) for _ in range(2))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first.frames, second.frames))
    assert isinstance(first, SampledVideo)


def refused(source, message: str, frames: int = 4, **limits) -> str:
    with pytest.raises(InputError) as caught:
        load_video(source, frames, linspace_indices, **limits)
    text = str(caught.value)
    assert message in text and "\n" not in text, text
    return text


def test_bad_clips_are_refused_in_one_line(lossless, frames, tmp_path):
    import io

    from PIL import Image

    refused(tmp_path / "nope.mp4", "video file not found")
    refused(tmp_path, "is a directory")
    (tmp_path / "empty.mp4").write_bytes(b"")
    refused(tmp_path / "empty.mp4", "empty (0 bytes)")
    refused(b"", "empty (0 bytes)")
    refused(12, "must be a file path or bytes")
    png = io.BytesIO()
    Image.fromarray(frames[0]).save(png, format="PNG")
    refused(png.getvalue(), "video")  # an image: decoded as a one-frame 'video' at best, or refused
    refused(np.random.RandomState(0).bytes(5000), "cannot decode the video:")
    mp4 = write_video(None, frames, fps=8)
    refused(mp4[: len(mp4) // 2], "the video")
    damaged = bytearray(lossless)
    damaged[len(damaged) // 3: len(damaged) // 3 + 4000] = bytes(4000)
    try:
        load_video(bytes(damaged), 4, linspace_indices)  # ffv1 may conceal the damage: either is acceptable
    except InputError as error:
        assert "\n" not in str(error)
    refused(lossless, "has 24 frames; this export samples 30", frames=30)
    refused(lossless, "3.0 s long, over the 2 s limit", max_seconds=2)
    refused(lossless, "frames, over the 10-frame limit", max_frames=10)
    refused(lossless, "64x48 frames = 3072 pixels, over the 1000-pixel limit", max_pixels=1000)


def test_an_audio_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "tone.wav"
    with av.open(str(path), mode="w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    refused(path, "has no video stream")


def test_a_frame_count_of_zero_is_a_programming_error(lossless):
    with pytest.raises(ValueError, match="num_frames"):
        load_video(lossless, 0, linspace_indices)
