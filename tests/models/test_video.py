"""Video loading (trio_edge.models.video): the Qwen sampling rules against transformers' lines, decoded frames
and their metadata across codecs and containers, and a one-line InputError for every unusable video."""

from __future__ import annotations

import io
import os
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from video_files import cut_with_edit_list, gray_frames, indexed_frames, write_audio, write_video

from trio_edge.errors import InputError
from trio_edge.models import video
from trio_edge.models.video import (
    FORMATS_HINT,
    SampledVideo,
    arange_indices,
    linspace_indices,
    load_video,
)


# ---- the sampling rules, against plain transcriptions of transformers 5.24's lines -----------------------------
def transformers_arange(total_num_frames: int, num_frames: int) -> list[int]:
    """Qwen2VLVideoProcessor.sample_frames with num_frames given (already a multiple of the temporal patch
    size), then the frames transformers' read_video_pyav keeps for those indices."""
    indices = torch.arange(0, total_num_frames, total_num_frames / num_frames).int()
    # read_video_pyav: `for i, frame in enumerate(container.decode(video=0)): if i > end_index: break;
    # if i >= 0 and i in indices: frames.append(frame)` over a stream of total_num_frames frames
    end_index = int(indices[-1])
    return [i for i in range(total_num_frames) if i <= end_index and i in indices.tolist()]


def transformers_linspace(total_num_frames: int, num_frames: int) -> list[int]:
    """Qwen3VLVideoProcessor.sample_frames with num_frames given."""
    return np.linspace(0, total_num_frames - 1, num_frames).round().astype(int).tolist()


# every pair up to 120 frames (num_frames == total included), then long clips with non-integer ratios
RULE_PAIRS = [(total, num) for total in range(1, 121) for num in range(1, total + 1)] + [
    (total, num) for total in (599, 1001, 4799, 35_999, 36_000) for num in (1, 2, 7, 8, 14, 30, 32, 64, 129)]


def test_arange_indices_equal_transformers():
    for total, num in RULE_PAIRS:
        indices = arange_indices(total, num)
        assert indices == transformers_arange(total, num), (total, num)
        assert len(indices) == num and indices[-1] < total, (total, num)  # always num frames, all in the clip


def test_arange_indices_drop_the_index_past_the_end():
    # torch.arange(0, 17, 17 / 14) has 15 elements, the last 17: a frame the clip does not have
    assert torch.arange(0, 17, 17 / 14).int().tolist()[-1] == 17
    assert arange_indices(17, 14) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15]
    # float32 rounding: 11 * 30 / 22 is 14.999999999999998 in float64, 15.0 in torch's float32 output
    assert 11 * (30 / 22) < 15 and arange_indices(30, 22)[11] == 15
    assert arange_indices(16, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert arange_indices(8, 8) == list(range(8))


def test_linspace_indices_equal_transformers():
    for total, num in RULE_PAIRS + [(total, num) for total in range(1, 9) for num in range(total + 1, 13)]:
        assert linspace_indices(total, num) == transformers_linspace(total, num), (total, num)
    assert linspace_indices(16, 8) == [0, 2, 4, 6, 9, 11, 13, 15]
    assert linspace_indices(4, 6) == [0, 1, 1, 2, 2, 3]  # more than the clip has: repeats, as transformers does


@pytest.mark.parametrize("rule", [arange_indices, linspace_indices])
@pytest.mark.parametrize("total, num", [(0, 1), (5, 0), (True, 1), (5, 2.0), (-3, 1)])
def test_rules_refuse_non_counts(rule, total, num):
    with pytest.raises(ValueError, match="whole number"):
        rule(total, num)


def test_arange_indices_refuse_more_samples_than_frames():
    with pytest.raises(ValueError, match="cannot sample 6 frames from 5"):
        arange_indices(5, 6)


# ---- decoded frames and metadata ----------------------------------------------------------------------------
@pytest.mark.parametrize("codec, container", [("png", "mov"), ("png", "avi"), ("ffv1", "matroska")])
@pytest.mark.parametrize("rule, num_frames", [(linspace_indices, 5), (arange_indices, 4)])
def test_lossless_frames_are_the_written_pixels(codec, container, rule, num_frames):
    written = indexed_frames(12)
    clip = load_video(write_video(None, written, 6, codec, container), num_frames, rule)
    assert clip.frame_indices == tuple(rule(12, num_frames))
    assert len(clip.frames) == num_frames
    for frame, index in zip(clip.frames, clip.frame_indices):
        assert frame.mode == "RGB" and frame.size == (32, 24)
        np.testing.assert_array_equal(np.asarray(frame), written[index])


@pytest.mark.parametrize("codec, container", [("mpeg4", "mp4"), ("libx264", "mp4"), ("libvpx", "webm")])
def test_lossy_frames_are_the_sampled_ones(codec, container):
    clip = load_video(write_video(None, gray_frames(16), 8, codec, container), 8, linspace_indices)
    assert clip.frame_indices == (0, 2, 4, 6, 9, 11, 13, 15)
    assert (clip.fps, clip.total_frames) == (8.0, 16)
    levels = [float(np.asarray(frame).mean()) for frame in clip.frames]
    assert levels == pytest.approx([12 * index for index in clip.frame_indices], abs=4)


def test_sampled_video_fields_of_a_known_clip():
    clip = load_video(write_video(None, gray_frames(16), 8), 8, arange_indices)  # 16 frames at 8 fps
    assert isinstance(clip, SampledVideo)
    assert clip.frame_indices == (0, 2, 4, 6, 8, 10, 12, 14)
    assert isinstance(clip.frames, tuple) and all(isinstance(frame, Image.Image) for frame in clip.frames)
    assert clip.fps == 8.0 and isinstance(clip.fps, float)
    assert clip.total_frames == 16
    assert clip.duration_s == 2.0
    assert clip.sampled_fps == 4.0  # 8 of 16 frames of an 8 fps clip
    assert clip.timestamps_s() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def test_ntsc_frame_rate_is_kept_as_a_fraction():
    clip = load_video(write_video(None, gray_frames(10), Fraction(30000, 1001)), 2, linspace_indices)
    assert clip.fps == pytest.approx(30000 / 1001, rel=1e-9)
    assert clip.duration_s == pytest.approx(10 * 1001 / 30000, rel=1e-9)
    assert clip.timestamps_s() == pytest.approx([0.0, 9 * 1001 / 30000])


def test_webm_has_no_frame_count_in_its_header_and_is_counted():
    import av

    data = write_video(None, gray_frames(11), 8, "libvpx", "webm")
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].frames == 0  # WebM/Matroska do not store it
    clip = load_video(data, 3, linspace_indices)
    assert clip.total_frames == 11 and clip.frame_indices == (0, 5, 10)


def test_an_edit_list_cut_is_counted_from_what_decodes():
    """An MP4 whose edit list hides its first 3 frames: the header counts 16, only 13 decode."""
    import av

    data = cut_with_edit_list(write_video(None, gray_frames(16), 8), 3)
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].frames == 16
    clip = load_video(data, 4, linspace_indices)
    assert clip.total_frames == 13 and clip.frame_indices == (0, 4, 8, 12)
    levels = [float(np.asarray(frame).mean()) for frame in clip.frames]
    assert levels == pytest.approx([12 * (index + 3) for index in clip.frame_indices], abs=4)
    with pytest.raises(InputError, match="has 13 frames; this export samples 14"):
        load_video(data, 14, linspace_indices)


def test_every_frame_and_a_single_frame():
    clip = load_video(write_video(None, gray_frames(8), 8), 8, arange_indices)
    assert clip.frame_indices == tuple(range(8)) and clip.sampled_fps == 8.0
    single = load_video(write_video(None, gray_frames(1), 4, "png", "mov"), 1, linspace_indices)
    assert single.frame_indices == (0,) and single.total_frames == 1 and single.duration_s == 0.25


def test_decoding_twice_gives_the_same_frames():
    for data in (write_video(None, indexed_frames(10), 5), write_video(None, indexed_frames(10), 5, "libvpx", "webm")):
        first, second = (load_video(data, 4, linspace_indices) for _ in range(2))
        assert first.frame_indices == second.frame_indices
        for a, b in zip(first.frames, second.frames):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bytes_and_paths_give_the_same_clip(tmp_path):
    data = write_video(None, indexed_frames(9), 6)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    reference = load_video(data, 3, linspace_indices)
    for source in (bytearray(data), memoryview(data), path, str(path), os.fsencode(path).decode()):
        clip = load_video(source, 3, linspace_indices)
        assert (clip.frame_indices, clip.fps, clip.total_frames) == (
            reference.frame_indices, reference.fps, reference.total_frames)
        for a, b in zip(clip.frames, reference.frames):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_path_like_objects_are_paths(tmp_path):
    path = write_video(tmp_path / "clip.mkv", gray_frames(4), 4, "ffv1", "matroska")

    class PathLike:
        def __fspath__(self):
            return str(path)

    assert load_video(PathLike(), 2, linspace_indices).frame_indices == (0, 3)


# ---- refusals: one line, InputError, naming the problem -------------------------------------------------------
def refusal(source, *, num_frames=4, rule=linspace_indices, **limits) -> str:
    with pytest.raises(InputError) as caught:
        load_video(source, num_frames, rule, **limits)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert "Traceback" not in message and "Errno" not in message and "'<none>'" not in message
    return message


def test_missing_directory_and_special_files(tmp_path):
    assert refusal(tmp_path / "nope.mp4") == f"video file not found: {tmp_path / 'nope.mp4'}; check the path"
    assert refusal(tmp_path) == f"video file not found: {tmp_path} is a directory; pass a video file inside it"
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    assert refusal(fifo) == f"video {fifo} is not a regular file (a device or pipe?); pass a video file"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert refusal(empty) == f"video {empty} is empty (0 bytes); {FORMATS_HINT}"
    assert refusal(b"") == f"the video is empty (0 bytes); {FORMATS_HINT}"
    assert refusal(bytearray()) == f"the video is empty (0 bytes); {FORMATS_HINT}"


def test_long_and_odd_paths_are_shown_shortened_and_escaped(tmp_path):
    message = refusal(tmp_path / ("x" * 300 + ".mp4"))
    assert "..." in message and len(message) < 300
    assert "\\udcff" in refusal(os.fsdecode(bytes(tmp_path) + b"/\xff.mp4"))  # undecodable name, no crash


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    path = write_video(tmp_path / "locked.mp4", gray_frames(4), 4)
    path.chmod(0)
    assert refusal(path) == f"cannot read video {path}: Permission denied; check the path and its permissions"


def test_unreadable_file_as_the_os_reports_it(tmp_path, monkeypatch):
    """The same refusal where the tests run as root: the open itself fails as it does without permission."""
    path = write_video(tmp_path / "locked.mp4", gray_frames(4), 4)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(video, "open", denied, raising=False)
    assert refusal(path) == f"cannot read video {path}: Permission denied; check the path and its permissions"


@pytest.mark.parametrize("source", [3, None, 2.5, ["clip.mp4"], Image.new("RGB", (4, 4))])
def test_other_source_types(source):
    assert refusal(source).startswith("the video must be a file path or bytes, not ")


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


NOT_A_CONTAINER = f"not an MP4, MKV, WebM, MOV or AVI container (an image, audio or other file?); {FORMATS_HINT}"
NOT_A_VIDEO = f"Invalid data found when processing input (not a video, or a corrupt or truncated one); {FORMATS_HINT}"


def test_not_a_video(tmp_path):
    image = tmp_path / "photo.mp4"  # a PNG with a video's name: FFmpeg would read it as a 1-frame image stream
    image.write_bytes(png_bytes())
    assert refusal(image) == f"cannot decode video {image}: {NOT_A_CONTAINER}"
    assert refusal(png_bytes()) == f"cannot decode the video: {NOT_A_CONTAINER}"
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 40)
    assert refusal(text) == f"cannot decode video {text}: {NOT_A_VIDEO}"
    assert refusal(np.random.default_rng(0).bytes(4096)) == f"cannot decode the video: {NOT_A_VIDEO}"


def test_audio_only_files():
    assert refusal(write_audio(None, container="matroska")) == (
        f"the video holds no video stream, only audio; {FORMATS_HINT}")
    assert refusal(write_audio(None, container="wav")) == f"cannot decode the video: {NOT_A_CONTAINER}"


def test_playlists_that_open_other_files_are_not_read(tmp_path, monkeypatch):
    """HLS and concat playlists name other files or URLs that FFmpeg would open: not demuxers we allow."""
    target = write_video(tmp_path / "other.mp4", gray_frames(8), 8)
    concat = f"ffconcat version 1.0\nfile '{target}'\n".encode()
    hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nfile://{target}\n#EXT-X-ENDLIST\n".encode()
    for playlist in (concat, hls):
        assert refusal(playlist).startswith("cannot decode the video: ")
    # a file named like an FFmpeg URL is read as that file: handed the name, FFmpeg would open other.mp4
    monkeypatch.chdir(tmp_path)
    (tmp_path / "concat:other.mp4").write_bytes(b"junk" * 100)
    assert refusal("concat:other.mp4") == f"cannot decode video concat:other.mp4: {NOT_A_VIDEO}"


def test_truncated_and_damaged_files():
    data = write_video(None, gray_frames(16), 8)  # the MP4 index (moov) is written last
    truncated = refusal(data[:len(data) // 2])
    assert truncated.startswith("cannot decode the video: ") and "corrupt or truncated" in truncated
    damaged = bytearray(data)
    middle = len(damaged) // 2
    damaged[middle - 100:middle + 100] = bytes(byte ^ 0xFF for byte in damaged[middle - 100:middle + 100])
    flipped = refusal(bytes(damaged))
    assert flipped.startswith("cannot decode the video: ") and "corrupt or truncated" in flipped


CLUSTER = b"\x1f\x43\xb6\x75"  # the EBML id of a Matroska cluster, the element that holds the frames


@pytest.mark.parametrize("codec, container", [("libvpx", "webm"), ("ffv1", "matroska")])
def test_truncated_matroska(codec, container):
    """Matroska/WebM store no frame count: a cut file is caught by its frames ending before its duration."""
    data = write_video(None, gray_frames(16), 8, codec, container)
    assert refusal(data[:len(data) // 2]).endswith(
        " s of the 2.0 s its header gives (a truncated or corrupt file); pass the complete video")
    cut_in_first_cluster = data[:data.index(CLUSTER) + 12]
    assert refusal(cut_in_first_cluster, num_frames=1) == (
        f"the video has no decodable frames (corrupt or truncated file); {FORMATS_HINT}")


def test_damaged_frame_data_inside_a_valid_container():
    """The header and index intact, the coded frames garbled: the decoder's own error, one line."""
    frames = [np.random.default_rng(index).integers(0, 256, (24, 32, 3), np.uint8) for index in range(16)]
    data = bytearray(write_video(None, frames, 8))
    middle = len(data) // 2  # noise does not compress: the middle of the file is frame data, the index is after
    data[middle - 100:middle + 100] = bytes(byte ^ 0xFF for byte in data[middle - 100:middle + 100])
    assert refusal(bytes(data), num_frames=16) == (
        f"cannot decode the video: Invalid data found when processing input (corrupt or truncated file); "
        f"{FORMATS_HINT}")


def test_too_few_frames():
    assert refusal(write_video(None, gray_frames(5), 8), num_frames=8) == (
        "the video has 5 frames; this export samples 8: use a longer clip or re-export with a smaller "
        "--video-frames")
    assert refusal(write_video(None, gray_frames(5), 8, "libvpx", "webm"), num_frames=6).startswith(
        "the video has 5 frames; this export samples 6: ")
    assert refusal(write_video(None, gray_frames(1), 8, "png", "mov"), num_frames=2).startswith(
        "the video has 1 frame; this export samples 2: ")


def test_no_frame_rate():
    stream = SimpleNamespace(average_rate=None, guessed_rate=Fraction(0))
    with pytest.raises(InputError) as caught:
        video._frame_rate(stream, "video clip.mp4")
    assert str(caught.value) == ("video clip.mp4 has no frame rate in its header (a broken or variable-rate "
                                 "stream?); re-encode it at a fixed rate (e.g. ffmpeg -i IN -r 30 OUT.mp4)")
    assert video._frame_rate(SimpleNamespace(average_rate=None, guessed_rate=Fraction(25)), "v") == 25.0


def test_longer_than_max_seconds(tmp_path):
    message = "lasts 2.0 s, over the 1 s limit; trim the clip (e.g. ffmpeg -i IN -t 1 OUT.mp4)"
    assert refusal(write_video(None, gray_frames(16), 8), max_seconds=1.0) == f"the video {message}"
    path = write_video(tmp_path / "clip.webm", gray_frames(16), 8, "libvpx", "webm")
    assert refusal(path, max_seconds=1.0) == f"video {path} {message}"
    assert load_video(path, 4, linspace_indices, max_seconds=2.0).duration_s == 2.0  # the limit itself passes


def test_more_frames_than_max_frames():
    hint = "trim the clip or lower its frame rate (e.g. ffmpeg -i IN -r 10 OUT.mp4)"
    assert refusal(write_video(None, gray_frames(16), 8), max_frames=10) == (
        f"the video has 16 frames, over the 10-frame limit; {hint}")
    # WebM has no count in its header: refused while counting, as soon as the limit is passed
    assert refusal(write_video(None, gray_frames(16), 8, "libvpx", "webm"), max_frames=10) == (
        f"the video has more than 10 frames, over the 10-frame limit; {hint}")
    assert load_video(write_video(None, gray_frames(16), 8), 4, linspace_indices, max_frames=16).total_frames == 16


def test_frames_over_max_pixels():
    for data in (write_video(None, gray_frames(4), 4), write_video(None, gray_frames(4), 4, "libvpx", "webm")):
        assert refusal(data, max_pixels=32 * 24 - 1) == (
            "the video has 32x24 = 768-pixel frames, over the 767-pixel limit (decompression-bomb guard); "
            "downscale it first (e.g. ffmpeg -i IN -vf scale=-2:1080 OUT.mp4)")
        assert load_video(data, 2, linspace_indices, max_pixels=32 * 24).total_frames == 4


def test_decoding_over_the_pixel_budget():
    """A clip whose frames up to the last sampled one pass max_decoded_pixels is refused: from the header before
    decoding (MP4), while counting where the header has no count (WebM: the counting pass decodes every frame)."""
    message = ("the video costs more than {} decoded pixels to sample (every frame up to the last sampled one is "
               "decoded: a long clip of large frames); trim or downscale it (e.g. ffmpeg -i IN -t 60 -vf scale=-2:720 "
               "OUT.mp4)")
    mp4, webm = write_video(None, gray_frames(16), 8), write_video(None, gray_frames(16), 8, "libvpx", "webm")
    frame = 32 * 24
    assert refusal(mp4, max_decoded_pixels=16 * frame - 1) == message.format(16 * frame - 1)  # linspace: up to 15
    assert load_video(mp4, 4, linspace_indices, max_decoded_pixels=16 * frame).total_frames == 16
    assert load_video(mp4, 4, arange_indices, max_decoded_pixels=13 * frame).frame_indices == (0, 4, 8, 12)
    assert refusal(webm, max_decoded_pixels=16 * frame - 1) == message.format(16 * frame - 1)
    assert refusal(webm, max_decoded_pixels=31 * frame) == message.format(31 * frame)  # counted, then decoded
    assert load_video(webm, 4, linspace_indices, max_decoded_pixels=32 * frame).total_frames == 16


def test_fit_shrinks_each_kept_frame_as_it_decodes():
    seen = []

    def fit(image):
        seen.append(image.size)
        return image.resize((4, 3))

    clip = load_video(write_video(None, indexed_frames(6), 6, "png", "mov"), 3, linspace_indices, fit=fit)
    assert seen == [(32, 24)] * 3 and [frame.size for frame in clip.frames] == [(4, 3)] * 3


# ---- the caller's bugs: ValueError, not InputError ------------------------------------------------------------
@pytest.mark.parametrize("num_frames", [0, -1, True, 2.0, None])
def test_num_frames_must_be_a_count(num_frames):
    with pytest.raises(ValueError, match="num_frames must be a whole number of at least 1") as caught:
        load_video(write_video(None, gray_frames(4), 4), num_frames, linspace_indices)
    assert not isinstance(caught.value, InputError)


@pytest.mark.parametrize("rule", [
    lambda total, num: list(range(num - 1)),  # too few
    lambda total, num: list(range(total - num + 1, total + 1)),  # past the end
    lambda total, num: [0] * num,  # not increasing
    lambda total, num: [-1] + list(range(num - 1)),  # before the start
    lambda total, num: [0.5] * num,  # not whole numbers
])
def test_a_rule_with_unusable_indices_is_a_bug(rule):
    with pytest.raises(ValueError, match="must return 3 increasing frame indices in 0..7") as caught:
        load_video(write_video(None, gray_frames(8), 8), 3, rule)
    assert not isinstance(caught.value, InputError)


def test_a_rule_may_return_numpy_or_torch_indices():
    data = write_video(None, gray_frames(8), 8)
    assert load_video(data, 3, lambda total, num: np.array([0, 3, 7])).frame_indices == (0, 3, 7)
    assert load_video(data, 3, lambda total, num: torch.tensor([1, 2, 5]).int()).frame_indices == (1, 2, 5)
