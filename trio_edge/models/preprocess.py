"""Image loading and fixed-grid letterboxing.

Every image is letterboxed to one grid resolution chosen at export, so the processor always picks
that resolution, no unpadding happens, and the image-token count is a constant of the export.
"""

from __future__ import annotations

import io
from pathlib import Path

from ..errors import InputError

# Largest image we decode at all (pixels): beyond this, PIL's decompression-bomb guard refuses it.
MAX_IMAGE_PIXELS = 12_000 * 12_000


def load_image(source):
    """Open an image from a path, bytes or PIL image and return it as RGB; clear errors otherwise."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    if isinstance(source, Image.Image):
        image = source
    else:
        data = _read_bytes(source)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Image.DecompressionBombError as error:
            raise InputError(f"image {source!s:.200} is too large to decode safely ({error}); "
                             f"downscale it below {MAX_IMAGE_PIXELS} pixels") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise InputError(f"cannot decode image {source!s:.200}: {error}. Pass a PNG, JPEG, WebP, "
                             "BMP or GIF file") from None
    if getattr(image, "n_frames", 1) > 1:
        image = next(iter(ImageSequence.Iterator(image)))  # animated: the first frame
    return _to_rgb(image)


def _read_bytes(source) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        data = path.read_bytes()
    if not data:
        raise InputError(f"image {source!s:.200} is empty (0 bytes)")
    return data


def _to_rgb(image):
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        span = max(float(array.max() - array.min()), 1e-12)
        array = ((array - array.min()) / span * 255.0).round().astype("uint8")
        return Image.fromarray(array).convert("RGB")
    return image.convert("RGB")


def letterbox(image, width: int, height: int, fill: tuple[int, int, int]):
    """Resize to fit inside (width, height) keeping aspect ratio, centred on a `fill` canvas."""
    from PIL import Image

    scale = min(width / image.width, height / image.height)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(new_size, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (width, height), fill)
    canvas.paste(resized, ((width - new_size[0]) // 2, (height - new_size[1]) // 2))
    return canvas


def parse_grid(text: str) -> tuple[int, int]:
    """'672x672' -> (672, 672) as (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--grid must look like WIDTHxHEIGHT (e.g. 672x672), got {text!r}") from None
    if width <= 0 or height <= 0:
        raise InputError(f"--grid sides must be positive, got {text!r}")
    return width, height
