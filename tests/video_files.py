"""Writes small test videos with PyAV (`from video_files import write_video`)."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np

# Lossless codecs get an RGB pixel format, so decoded rgb24 pixels equal the written ones exactly (ffv1 has no
# rgb24; bgr0 holds the same 8-bit values, reordered and padded). Lossy codecs get the yuv420p players read.
PIXEL_FORMATS = {"png": "rgb24", "ffv1": "bgr0"}


def write_video(path, frames: list[np.ndarray], fps, codec: str = "mpeg4", container: str = "mp4"):
    """Encode `frames` (HxWx3 uint8 RGB, all one size) at `fps` (int, float or Fraction) with `codec` into
    `container` (a PyAV format name: mp4, matroska, webm, mov, avi); write them to `path` and return the
    Path, or return the bytes when `path` is None."""
    import av

    height, width = frames[0].shape[:2]
    rate = Fraction(fps).limit_denominator(100_000)
    buffer = io.BytesIO()
    # bitexact: no random segment UIDs or version strings, so the same frames give the same bytes each run
    with av.open(buffer, mode="w", format=container, options={"fflags": "+bitexact"}) as output:
        stream = output.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = PIXEL_FORMATS.get(codec, "yuv420p")
        for pixels in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")))
        output.mux(stream.encode())  # flush the encoder's delayed frames
    return _bytes_or_file(buffer.getvalue(), path)


def write_audio(path, seconds: float = 0.5, container: str = "matroska", sample_rate: int = 8000):
    """An audio-only file (silence, 16-bit PCM) in `container`, written to `path` or returned as bytes."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container, options={"fflags": "+bitexact"}) as output:
        stream = output.add_stream("pcm_s16le", rate=sample_rate)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, int(seconds * sample_rate)), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = sample_rate
        output.mux(stream.encode(frame))
        output.mux(stream.encode())
    return _bytes_or_file(buffer.getvalue(), path)


def gray_frames(count: int, width: int = 32, height: int = 24, step: int = 12) -> list[np.ndarray]:
    """Flat frames whose level is index * step: lossy codecs keep a flat level within a few units."""
    return [np.full((height, width, 3), index * step % 256, np.uint8) for index in range(count)]


def indexed_frames(count: int, width: int = 32, height: int = 24) -> list[np.ndarray]:
    """Frames that differ at every pixel for every index (the index is in the red channel, the position in
    green and blue), for exact comparisons through lossless codecs."""
    rows, cols = np.mgrid[0:height, 0:width]
    frames = []
    for index in range(count):
        pixels = np.empty((height, width, 3), np.uint8)
        pixels[..., 0] = index
        pixels[..., 1] = (rows * 7 + index) % 256
        pixels[..., 2] = (cols * 5 + 3 * index) % 256
        frames.append(pixels)
    return frames


def cut_with_edit_list(data: bytes, leading: int) -> bytes:
    """The MP4 `data` remuxed (no re-encoding) so that an edit list hides its first `leading` frames, as
    `ffmpeg -ss ... -c copy` leaves a clip: the header still counts every frame, the decoder skips the hidden
    ones. Assumes a constant frame duration."""
    import av

    output_buffer = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(output_buffer, mode="w", format="mp4") as output:
        video = source.streams.video[0]
        stream = output.add_stream_from_template(video)
        for packet in source.demux(video):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            shift = leading * packet.duration  # times before 0 fall outside the edit
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = stream
            output.mux(packet)
    return output_buffer.getvalue()


def _bytes_or_file(data: bytes, path):
    """`data` itself when `path` is None, else the Path it was written to."""
    if path is None:
        return data
    path = Path(path)
    path.write_bytes(data)
    return path
