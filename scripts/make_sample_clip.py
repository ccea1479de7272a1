"""Write the sample clip shipped in the package (trio_edge/assets/samples/moving.mp4): a red circle crossing a light
background from left to right while a blue square stays put, 16 frames at 4 fps (4 s), 224x224, MPEG-4.

python scripts/make_sample_clip.py [OUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE, FRAMES, FPS = 224, 16, 4


def frames() -> list[np.ndarray]:
    out = []
    for index in range(FRAMES):
        image = Image.new("RGB", (SIZE, SIZE), (235, 235, 225))
        draw = ImageDraw.Draw(image)
        draw.rectangle((150, 140, 200, 190), fill=(40, 70, 200))
        x = 20 + index * (SIZE - 80) // (FRAMES - 1)
        draw.ellipse((x, 40, x + 40, 80), fill=(210, 40, 40))
        out.append(np.asarray(image))
    return out


def main() -> None:
    import av

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else (Path(__file__).resolve().parents[1] / "trio_edge" / "assets"
                                                         / "samples" / "moving.mp4")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "3"}
        for frame in frames():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
