"""Video loading for the Qwen video path: decode a clip with PyAV and keep the frames a sampling rule picks.

Frame indices count the frames the decoder outputs, in presentation order from 0, as transformers' own PyAV
reader (`video_utils.read_video_pyav`) counts them, so a rule gives the same frames here as in transformers.
Only the kept frames are converted to RGB; the decoder stops after the last one.

Every problem with the file is an InputError of one line (what was wrong, what to do). A bad `num_frames` or a
sampling rule that returns unusable indices is the caller's bug, not the user's: ValueError.
"""

from __future__ import annotations

import io
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .preprocess import check_input_file, os_reason

# A clip longer than this is refused: every frame up to the last sampled one is decoded, so the cost of a
# request grows with its length even though the export samples a fixed number of frames.
MAX_VIDEO_SECONDS = 600.0
# 10 minutes at 60 fps; checked on its own since a high frame rate costs decoding time at any length.
MAX_VIDEO_FRAMES = 36_000
# Decompression-bomb guard, as for images: the largest frame (in pixels) decoded at all.
MAX_FRAME_PIXELS = 4096 * 4096
# All the pixels one clip may cost to decode (every frame up to the last sampled one, and the whole clip once more
# where the container stores no frame count): twice a 10-minute 1080p clip at 30 fps. A small file can hold a long,
# large, static clip that decodes for minutes; this bounds that work.
MAX_DECODED_PIXELS = 2 * 600 * 30 * 1920 * 1080
FORMATS_HINT = "pass an MP4, MKV, WebM, MOV or AVI video"
# The only demuxers FFmpeg may pick (its `format_whitelist`). Beyond matching FORMATS_HINT, this keeps
# playlist-like formats (HLS, concat, ...) out: those open further files or URLs named inside the data.
DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"

SampleRule = Callable[[int, int], Sequence[int]]


@dataclass(frozen=True)
class SampledVideo:
    """The frames a sampling rule picked from a video, with what the model's processor needs to place them."""

    frames: tuple  # RGB PIL images, one per sampled frame, in time order
    frame_indices: tuple[int, ...]  # indices of the sampled frames in the decoded stream (0-based)
    fps: float  # the stream's average frame rate (frames per second)
    total_frames: int  # frames in the stream

    @property
    def duration_s(self) -> float:
        return self.total_frames / self.fps

    @property
    def sampled_fps(self) -> float:
        """Sampled frames per second of video: transformers' VideoMetadata.sampled_fps."""
        return len(self.frame_indices) / self.total_frames * self.fps

    def timestamps_s(self) -> list[float]:
        """When each sampled frame is shown, in seconds from the start (VideoMetadata.timestamps)."""
        return [index / self.fps for index in self.frame_indices]


def arange_indices(total_frames: int, num_frames: int) -> list[int]:
    """Qwen2-VL / Qwen2.5-VL's rule: the frames transformers 5.24's `Qwen2VLVideoProcessor.sample_frames`
    (models/qwen2_vl/video_processing_qwen2_vl.py) picks when given `num_frames`, which the caller has already
    rounded to a multiple of the temporal patch size: `torch.arange(0, total, total / num_frames).int()`.

    torch.arange sizes its output as ceil(total / step) in float64, which for some pairs is num_frames + 1
    (17 frames, 14 samples: the 15th index is 17, past the last frame). transformers' PyAV reader never reaches
    that frame and so returns num_frames frames; here it is dropped too, leaving num_frames indices. Computed
    with torch itself: its float32 output rounds some values up to the next whole number where float64 would
    not (30 frames, 22 samples: 11 * 30/22 is 14.999999999999998, 15.0 in float32), and its CPU kernels
    (vectorised per instruction set) are the arithmetic to match, not a transcription of it."""
    import torch

    _check_rule_arguments(total_frames, num_frames)
    if num_frames > total_frames:  # transformers raises too: it cannot pick more frames than there are
        raise ValueError(f"cannot sample {num_frames} frames from {total_frames}")
    indices = torch.arange(0, total_frames, total_frames / num_frames).int().tolist()
    return [index for index in indices if index < total_frames]


def linspace_indices(total_frames: int, num_frames: int) -> list[int]:
    """Qwen3-VL's rule: the frames transformers 5.24's `Qwen3VLVideoProcessor.sample_frames`
    (models/qwen3_vl/video_processing_qwen3_vl.py) picks when given `num_frames`:
    `np.linspace(0, total - 1, num_frames).round().astype(int)` (round half to even, as numpy does).
    Asked for more frames than there are, it repeats some, as transformers does."""
    import numpy as np

    _check_rule_arguments(total_frames, num_frames)
    return np.linspace(0, total_frames - 1, num_frames).round().astype(int).tolist()


def _check_rule_arguments(total_frames, num_frames) -> None:
    for name, value in (("total_frames", total_frames), ("num_frames", num_frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


def load_video(source, num_frames: int, sample_indices: SampleRule, *, max_seconds: float = MAX_VIDEO_SECONDS,
               max_frames: int = MAX_VIDEO_FRAMES, max_pixels: int = MAX_FRAME_PIXELS,
               max_decoded_pixels: int = MAX_DECODED_PIXELS, fit: Callable | None = None) -> SampledVideo:
    """Decode the first video stream of a file path or bytes and keep the `num_frames` frames that
    `sample_indices(total_frames, num_frames)` picks (e.g. `arange_indices`, `linspace_indices`). `fit` (an RGB PIL
    image -> the image to keep) is applied to each kept frame as it decodes, so that full-size frames are not held
    (e.g. the letterbox to an export's size).

    The frame rate is the stream's average rate; the frame count is the header's where it has one (MP4, MOV,
    AVI), counted by decoding otherwise (MKV, WebM do not store it), and recounted when the header promised
    more frames than decode (an MP4 cut with an edit list). Limits are checked on the header before anything
    is decoded and again on what decodes: a clip over `max_seconds` or `max_frames`, or with frames over
    `max_pixels`, is refused, as is one with fewer than `num_frames` frames, and anything unreadable, not a
    video, corrupt or truncated (InputError, one line). So is a clip whose decoding would pass `max_decoded_pixels`
    (frames decoded x their pixels), refused from the header's size before decoding where it can be.

    `num_frames` under 1, or a rule that does not return `num_frames` increasing indices inside the clip, is a
    bug in the caller: ValueError, not InputError."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a whole number of at least 1, got {num_frames!r}")
    open_stream, what = _opener(source)
    limits = _Limits(max_seconds, max_frames, max_pixels, max_decoded_pixels, what)
    fps, header_frames, header_seconds = _read_header(open_stream, what, limits)
    if header_frames:
        total, exact = header_frames, False
    else:
        total, span = _count_frames(open_stream, what, fps, limits)
        _check_complete(what, span, header_seconds)
        exact = True  # counted by decoding
    while True:  # a second round only when the header overstated the frame count
        limits.check_total(total, fps)
        if total < num_frames:
            raise InputError(f"{what} has {_frames_text(total)}; this export samples {num_frames}: use a longer "
                             "clip or re-export with a smaller --video-frames")
        indices = _checked_indices(sample_indices, total, num_frames)
        limits.check_decoding(indices[-1] + 1)
        frames, decoded, span = _decode_at(open_stream, what, indices, limits, fps, fit)
        if frames is not None:
            return SampledVideo(frames=frames, frame_indices=tuple(indices), fps=fps, total_frames=total)
        if decoded == 0:
            raise InputError(f"{what} has no decodable frames (corrupt or truncated file); " + FORMATS_HINT)
        if exact:  # counted a moment ago, yet it ended sooner now
            raise InputError(f"{what} decoded to {_frames_text(total)}, then to {decoded}; the file changed while "
                             "it was read: pass a file that is not being written to")
        # the stream ended before the header's count: every frame was decoded, so `decoded` is the true count
        # (an edit list hiding frames, as `ffmpeg -ss ... -c copy` leaves), unless the file was cut short
        _check_complete(what, span, header_seconds)
        total, exact = decoded, True


class _Limits:
    """The size guards, with the one-line refusals they raise."""

    def __init__(self, max_seconds: float, max_frames: int, max_pixels: int, max_decoded_pixels: int, what: str):
        self.max_seconds, self.max_frames, self.max_pixels, self.what = max_seconds, max_frames, max_pixels, what
        self.max_decoded_pixels = max_decoded_pixels
        self.decoded_pixels = 0  # by every pass over the clip so far
        self.frame_pixels = None  # one frame's, from the header when it says

    def decoded(self, frame) -> None:
        """Check one more decoded frame: its size, and the pixels decoded so far against the budget."""
        self.check_pixels(frame.width, frame.height)
        self.decoded_pixels += frame.width * frame.height
        if self.decoded_pixels > self.max_decoded_pixels:
            self._refuse_decoding()

    def check_decoding(self, frames: int) -> None:
        """Refuse before decoding `frames` more frames when the header's frame size says they pass the budget."""
        if self.frame_pixels and self.decoded_pixels + frames * self.frame_pixels > self.max_decoded_pixels:
            self._refuse_decoding()

    def _refuse_decoding(self) -> None:
        raise InputError(f"{self.what} costs more than {self.max_decoded_pixels} decoded pixels to sample (every "
                         "frame up to the last sampled one is decoded: a long clip of large frames); trim or downscale "
                         "it (e.g. ffmpeg -i IN -t 60 -vf scale=-2:720 OUT.mp4)")

    def check_seconds(self, seconds: float, at_least: bool = False) -> None:
        if seconds > self.max_seconds:
            lasts = "lasts more than" if at_least else "lasts"
            raise InputError(f"{self.what} {lasts} {seconds:.1f} s, over the {self.max_seconds:g} s limit; trim the "
                             f"clip (e.g. ffmpeg -i IN -t {self.max_seconds:g} OUT.mp4)")

    def check_frames(self, frames: int, at_least: bool = False) -> None:
        if frames > self.max_frames:
            has = "has more than" if at_least else "has"
            count = frames - 1 if at_least else frames
            raise InputError(f"{self.what} {has} {count} frames, over the {self.max_frames}-frame limit; trim the "
                             "clip or lower its frame rate (e.g. ffmpeg -i IN -r 10 OUT.mp4)")

    def check_total(self, total: int, fps: float) -> None:
        self.check_frames(total)
        self.check_seconds(total / fps)

    def check_pixels(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise InputError(f"{self.what} has {width}x{height} = {width * height}-pixel frames, over the "
                             f"{self.max_pixels}-pixel limit (decompression-bomb guard); downscale it first "
                             "(e.g. ffmpeg -i IN -vf scale=-2:1080 OUT.mp4)")


def _opener(source) -> tuple[Callable[[], io.RawIOBase | io.BufferedIOBase], str]:
    """(a function that opens the video afresh as a binary file object, how messages name it).

    FFmpeg is only ever handed a Python file object, never the path: it would read a path as a URL, where
    names like `concat:a|b` or `subfile:...` select protocols that open other files."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError("the video is empty (0 bytes); " + FORMATS_HINT)
        return (lambda: io.BytesIO(data)), "the video"
    if not isinstance(source, (str, Path)) and not hasattr(source, "__fspath__"):
        raise InputError(f"the video must be a file path or bytes, not {type(source).__name__}")
    path, name = check_input_file(source, "video", FORMATS_HINT)

    def open_path():
        try:
            return open(path, "rb")
        except OSError as error:  # it vanished or changed permissions between two reads
            raise InputError(f"cannot read video {name}: {os_reason(error)}; check the path and its "
                             "permissions") from None

    return open_path, f"video {name}"


class _Decoding:
    """`with _Decoding(open_stream, what) as stream:` opens the video afresh and gives its first video stream
    (`stream.container` is the container); closes both after, and turns every PyAV failure inside into a
    one-line InputError."""

    def __init__(self, open_stream, what: str):
        self.open_stream, self.what = open_stream, what
        self.file = self.container = None

    def __enter__(self):
        import av

        self.file = self.open_stream()
        try:
            self.container = av.open(self.file, mode="r", options={"format_whitelist": DEMUXERS})
        except av.error.ArgumentError:  # the format_whitelist refused the demuxer FFmpeg recognised
            self.close()
            raise InputError(f"cannot decode {self.what}: not an MP4, MKV, WebM, MOV or AVI container (an image, "
                             "audio or other file?); " + FORMATS_HINT) from None
        except BaseException as error:
            self.close()
            self.translate(error, "not a video, or a corrupt or truncated one")
            raise
        if not self.container.streams.video:
            audio = bool(self.container.streams.audio)
            self.close()
            if audio:
                raise InputError(f"{self.what} holds no video stream, only audio; " + FORMATS_HINT)
            # an MP4 cut before its index (moov) or with a damaged one opens with no streams, or a bare data one
            raise InputError(f"cannot decode {self.what}: it holds no video stream (a corrupt or truncated file?); "
                             + FORMATS_HINT)
        return self.container.streams.video[0]

    def __exit__(self, kind, error, trace):
        self.close()
        if error is not None:
            self.translate(error, "corrupt or truncated file")
        return False

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
        if self.file is not None:
            self.file.close()
            self.file = None

    def translate(self, error: BaseException, likely_cause: str) -> None:
        """Raise InputError for what PyAV raises on malformed data; anything else propagates unchanged."""
        import av

        if isinstance(error, InputError):
            return
        # FFmpegError: every FFmpeg error code (InvalidDataError, EOFError, MemoryError, ...); ValueError:
        # PyAV's own checks (an unknown codec, a pixel format it cannot convert); OSError/IndexError: reads
        # past the end of damaged data
        if isinstance(error, (av.error.FFmpegError, ValueError, OSError, IndexError)):
            raise InputError(f"cannot decode {self.what}: {os_reason(error)} ({likely_cause}); " + FORMATS_HINT) from None


def _read_header(open_stream, what: str, limits: _Limits) -> tuple[float, int | None, float | None]:
    """(average frame rate, the header's frame count or None, its duration in seconds or None) after the
    header-level limit checks."""
    with _Decoding(open_stream, what) as stream:
        fps = _frame_rate(stream, what)
        frames = stream.frames if stream.frames and stream.frames > 0 else None
        if frames is not None:
            limits.check_frames(frames)
        seconds = _header_seconds(stream, stream.container)
        if seconds is not None:
            limits.check_seconds(seconds)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height:
            limits.check_pixels(width, height)
            limits.frame_pixels = width * height
        return fps, frames, seconds


def _frame_rate(stream, what: str) -> float:
    """The stream's average frame rate (what transformers' PyAV reader uses), else FFmpeg's guess."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and rate > 0 and math.isfinite(float(rate)):
            return float(rate)
    raise InputError(f"{what} has no frame rate in its header (a broken or variable-rate stream?); re-encode it "
                     "at a fixed rate (e.g. ffmpeg -i IN -r 30 OUT.mp4)")


def _header_seconds(stream, container) -> float | None:
    """The video stream's duration by its header, when the header says; the container's only when this is its
    one stream (the container's duration is that of its longest stream, maybe an audio track)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container is not None and container.duration and len(container.streams) == 1:
        import av

        return container.duration / av.time_base
    return None


def _frames_text(count: int) -> str:
    return f"{count} frame" if count == 1 else f"{count} frames"


class _Span:
    """The time the decoded frames cover, from their timestamps: first to last, plus one frame."""

    def __init__(self, fps: float):
        self.fps, self.first, self.last, self.known = fps, None, None, True

    def add(self, frame) -> None:
        time = frame.time
        if time is None:  # a frame without a timestamp: the span is unknown
            self.known = False
        elif self.first is None:
            self.first = self.last = time
        else:
            self.last = max(self.last, time)

    def seconds(self) -> float | None:
        if not self.known or self.first is None:
            return None
        return self.last - self.first + 1 / self.fps


def _check_complete(what: str, span: float | None, header_seconds: float | None) -> None:
    """Refuse a stream whose frames end well before the duration its header gives: a file cut short, which
    otherwise decodes as a shorter clip (Matroska/WebM store no frame count to compare with). The margin
    covers rounding and a header's duration that includes a last frame's display time."""
    if span is None or header_seconds is None:
        return
    if span < header_seconds - max(1.0, 0.1 * header_seconds):
        raise InputError(f"{what} ends after {span:.1f} s of the {header_seconds:.1f} s its header gives (a "
                         "truncated or corrupt file); pass the complete video")


def _count_frames(open_stream, what: str, fps: float, limits: _Limits) -> tuple[int, float | None]:
    """(frames in the stream, the seconds they span) by decoding all of them, for containers whose header has
    no count, stopping as soon as a limit is passed."""
    count = 0
    span = _Span(fps)
    with _Decoding(open_stream, what) as stream:
        for frame in stream.container.decode(stream):
            limits.decoded(frame)
            count += 1
            limits.check_frames(count, at_least=True)
            limits.check_seconds(count / fps, at_least=True)
            span.add(frame)
    if count == 0:
        raise InputError(f"{what} has no decodable frames (corrupt or truncated file); " + FORMATS_HINT)
    return count, span.seconds()


def _checked_indices(sample_indices: SampleRule, total: int, num_frames: int) -> list[int]:
    """The rule's indices, or ValueError when they are not `num_frames` increasing indices inside the clip."""
    picked = sample_indices(total, num_frames)
    try:
        indices = [operator.index(index) for index in picked]
    except TypeError:
        indices = None
    if (indices is None or len(indices) != num_frames or indices[0] < 0 or indices[-1] >= total
            or any(later <= earlier for earlier, later in zip(indices, indices[1:]))):
        raise ValueError(f"the sampling rule returned {picked!r} for {total} frames and {num_frames} "
                         f"samples; it must return {num_frames} increasing frame indices in 0..{total - 1}")
    return indices


def _decode_at(open_stream, what: str, indices: list[int], limits: _Limits, fps: float,
               fit: Callable | None) -> tuple[tuple | None, int, float | None]:
    """(the frames at `indices` as RGB PIL images, each passed through `fit` when given, frames decoded, the seconds
    they span), decoding up to the last index; the frames are None when the stream ended before it (the count was
    wrong), and then every frame was decoded."""
    wanted = set(indices)
    last = indices[-1]
    kept = []
    decoded = 0
    span = _Span(fps)
    with _Decoding(open_stream, what) as stream:
        for frame in stream.container.decode(stream):
            limits.decoded(frame)
            if decoded in wanted:
                image = frame.to_image()  # rgb24, as transformers' reader converts (to_ndarray("rgb24"))
                kept.append(fit(image) if fit is not None else image)
            decoded += 1
            span.add(frame)
            if decoded > last:
                return tuple(kept), decoded, span.seconds()
    return None, decoded, span.seconds()
