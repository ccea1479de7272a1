"""Test videos written with PyAV: frames whose content encodes their index, so a test can tell which were sampled."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def indexed_frames(count: int, width: int = 64, height: int = 48, seed: int = 0) -> list[np.ndarray]:
    """`count` RGB frames (H, W, 3) uint8: a smooth scene that moves, each frame's index written into a corner
    block (value 8 * index) so decoded frames can be matched to their index even after lossy coding."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    centre = rng.rand(2) * [width, height]
    frames = []
    for index in range(count):
        cx, cy = (centre + index * np.array([3.0, 2.0])) % [width, height]
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.3 * width) ** 2))
        frame = np.stack([200 * blob, 120 + 100 * np.sin(x / 7 + index), 255 * (1 - blob)], axis=-1)
        frame[:8, :8] = (8 * index) % 256
        frames.append(frame.clip(0, 255).astype(np.uint8))
    return frames


def write_video(path: str | Path | None, frames: list[np.ndarray], fps: int = 8, codec: str = "mpeg4",
                container: str = "mp4", pix_fmt: str = "yuv420p") -> bytes | Path:
    """Encode frames into a video file at `path` (returned), or into bytes when `path` is None."""
    import av

    buffer = io.BytesIO() if path is None else None
    with av.open(buffer if path is None else str(path), mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue() if path is None else Path(path)
