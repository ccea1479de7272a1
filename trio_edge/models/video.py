"""Video files -> a fixed number of sampled RGB frames, with PyAV (FFmpeg's decoders), for the Qwen video path.

The number of frames is fixed at export (--video-frames): a clip of any length is sampled uniformly by the model
family's own rule (the two rules below, exact to transformers' video processors), so the vision graph always sees
the same shapes. Every bad input is one InputError line: a missing or empty file, something that is not a video, a
damaged stream, a clip longer than the limit or with fewer frames than the export samples, frames too large.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .preprocess import read_input_file

MAX_VIDEO_SECONDS = 600.0  # the longest clip decoded at all (its frames are sampled uniformly anyway)
MAX_VIDEO_FRAMES = 36_000  # frames in the stream (10 minutes at 60 fps)
MAX_FRAME_PIXELS = 4096 * 4096  # one decoded frame (decompression-bomb guard, as for images)
FORMATS_HINT = "pass an MP4, MKV, WebM, MOV or AVI video"


@dataclass(frozen=True)
class SampledVideo:
    """The frames a request shows the model, and where they came from in the clip."""

    frames: tuple  # RGB PIL images, in time order
    frame_indices: tuple[int, ...]  # each frame's index in the decoded stream (0-based)
    fps: float  # the stream's average frame rate
    total_frames: int  # frames in the stream

    @property
    def duration_s(self) -> float:
        return self.total_frames / self.fps

    @property
    def sampled_fps(self) -> float:
        """Sampled frames per second of the clip (transformers' VideoMetadata.sampled_fps)."""
        return len(self.frame_indices) / self.total_frames * self.fps

    def timestamps_s(self) -> list[float]:
        """Each sampled frame's time in the clip, in seconds (its index / fps)."""
        return [index / self.fps for index in self.frame_indices]


def arange_indices(total: int, frames: int) -> list[int]:
    """`frames` of `total` frames, as transformers' Qwen2VLVideoProcessor.sample_frames picks them for num_frames
    (used by Qwen2.5-VL): torch.arange(0, total, total / frames).int(), the count a multiple of the temporal patch
    already (the export checks it)."""
    import torch

    return torch.arange(0, total, total / frames).int().tolist()[:frames]


def linspace_indices(total: int, frames: int) -> list[int]:
    """`frames` of `total` frames, as transformers' Qwen3VLVideoProcessor.sample_frames picks them for num_frames:
    np.linspace(0, total - 1, frames).round().astype(int)."""
    import numpy as np

    return np.linspace(0, total - 1, frames).round().astype(int).tolist()


def load_video(source, num_frames: int, sample_indices, *, max_seconds: float = MAX_VIDEO_SECONDS,
               max_frames: int = MAX_VIDEO_FRAMES, max_pixels: int = MAX_FRAME_PIXELS) -> SampledVideo:
    """Decode a video (a path or bytes) and keep the `num_frames` frames `sample_indices(total, num_frames)` picks.

    The limits are checked from the container's header where it tells (duration, frame count, frame size), else
    while decoding; a stream that does not store its frame count (some WebM files) is counted by decoding it."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a whole number >= 1, got {num_frames!r}")
    name, data = _read(source)
    try:
        return _decode(data, name, num_frames, sample_indices, max_seconds, max_frames, max_pixels)
    except InputError:
        raise
    except _decoder_errors() as error:
        reason = getattr(error, "strerror", None) or " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"cannot decode {name}: {reason} (corrupt or truncated file, or not a video); "
                         f"{FORMATS_HINT}") from None


def _read(source) -> tuple[str, bytes]:
    """(how to name it in messages, its bytes); a missing, empty or unreadable file is an InputError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError("the video is empty (0 bytes); " + FORMATS_HINT)
        return "the video", data
    if not isinstance(source, (str, Path)) and not hasattr(source, "__fspath__"):
        raise InputError(f"the video must be a file path or bytes, not {type(source).__name__}")
    name, data = read_input_file(source, "video", FORMATS_HINT)
    return f"video {name}", data


def _decoder_errors() -> tuple:
    import av

    # FFmpeg's failures (InvalidDataError, EOFError, ...) subclass av.FFmpegError; PyAV raises the rest on headers
    # it cannot parse
    return (av.FFmpegError, ValueError, OSError, IndexError, KeyError, ZeroDivisionError, OverflowError, EOFError)


def _decode(data: bytes, name: str, num_frames: int, sample_indices, max_seconds: float, max_frames: int,
            max_pixels: int) -> SampledVideo:
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.video:
            raise InputError(f"{name} has no video stream (an audio file or an image?); {FORMATS_HINT}")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if not (math.isfinite(fps) and fps > 0):
            raise InputError(f"{name} has no frame rate in its header; re-encode it (e.g. ffmpeg -i IN -r 30 "
                             "OUT.mp4)")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise InputError(f"{name} has {width}x{height} frames = {width * height} pixels, over the {max_pixels}-"
                             "pixel limit; downscale it first")
        total = int(stream.frames or 0)
        seconds = _header_seconds(container, stream)
        _check_length(name, seconds, total, fps, max_seconds, max_frames)
        if total <= 0:  # the container does not store the count: count the frames by decoding once
            total = sum(1 for _ in _frames(container, stream, name, max_frames))
            container.seek(0)
            _check_length(name, None, total, fps, max_seconds, max_frames)
        if total < num_frames:
            raise InputError(f"{name} has {total} frame{'s' if total != 1 else ''}; this export samples "
                             f"{num_frames}: use a longer clip or re-export with a smaller --video-frames")
        wanted = [int(i) for i in sample_indices(total, num_frames)]
        keep, frames, last, decoded = set(wanted), {}, None, 0
        for index, frame in enumerate(_frames(container, stream, name, max_frames)):
            decoded = index + 1
            if index in keep:
                frames[index] = frame.to_image()
            last = frame
            if len(frames) == len(keep):
                break
        if decoded == 0:
            raise InputError(f"{name}: no frame could be decoded (corrupt or empty stream); {FORMATS_HINT}")
        missing = [i for i in wanted if i not in frames]
        if missing:  # the header promised more frames than the stream holds: a truncated file
            if decoded < num_frames:
                raise InputError(f"{name}: only {decoded} frames could be decoded (truncated file?); this export "
                                 f"samples {num_frames}")
            for index in missing:  # the last frames are missing: the clip's last decoded frame stands in
                frames[index] = last.to_image()
    return SampledVideo(tuple(frames[i] for i in wanted), tuple(wanted), fps, total)


def _frames(container, stream, name: str, max_frames: int):
    """The stream's decoded frames in order, stopping with an InputError past `max_frames`."""
    for count, frame in enumerate(container.decode(stream)):
        if count >= max_frames:
            raise InputError(f"{name} has more than {max_frames} frames, over the {max_frames}-frame limit; trim the "
                             "clip")
        yield frame


def _header_seconds(container, stream) -> float | None:
    """The clip's duration from its header (the stream's, else the container's), None when it does not say."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # av.time_base: microseconds
    return None


def _check_length(name: str, seconds, frames: int, fps: float, max_seconds: float, max_frames: int) -> None:
    seconds = seconds if seconds is not None else (frames / fps if frames > 0 else None)
    if seconds is not None and seconds > max_seconds:
        raise InputError(f"{name} is {seconds:.1f} s long, over the {max_seconds:g} s limit; trim the clip")
    if frames > max_frames:
        raise InputError(f"{name} has {frames} frames, over the {max_frames}-frame limit; trim the clip")
