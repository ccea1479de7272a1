"""Image loading and fixed-grid letterboxing.

Every image is letterboxed to one grid resolution chosen at export, so the processor always picks
that resolution, no unpadding happens, and the image-token count is a constant of the export.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

from ..errors import InputError

# Decompression-bomb guard: the largest image (in pixels) we decode at all. Checked on the header, before a
# single pixel is allocated; PIL's own guard (which only warns between 1x and 2x its limit) is left as is.
MAX_IMAGE_PIXELS = 12_000 * 12_000
# JPEGs are decoded at a reduced scale (DCT scaling, 1/2..1/8) while both sides stay at least this large:
# big photos cost a fraction of their full-size memory and the grid is far smaller anyway.
JPEG_DRAFT_SIZE = (2048, 2048)
FORMATS_HINT = "pass a PNG, JPEG, WebP, BMP or GIF file"


def load_image(source):
    """Open an image from a path, bytes or PIL image and return it as RGB; InputError otherwise.

    Animated images give their first frame; alpha is composited on white; 16-bit and float images are
    stretched to 8 bits; images over MAX_IMAGE_PIXELS are refused from their header alone."""
    from PIL import Image

    if isinstance(source, Image.Image):
        _check_size(source.size, "image")
        return _to_rgb(source, "image")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError("the image is empty (0 bytes); " + FORMATS_HINT)
        return _decode(io.BytesIO(data), "image bytes")
    if not isinstance(source, (str, Path)) and not hasattr(source, "__fspath__"):
        raise InputError(f"the image must be a file path, bytes or a PIL image, not {type(source).__name__}")
    name, data = read_input_file(source, "image", FORMATS_HINT)
    return _decode(io.BytesIO(data), f"image {name}")


def read_input_file(source, kind: str, formats_hint: str) -> tuple[str, bytes]:
    """(the path as messages show it, the file's bytes) of an image file; every failure is a one-line
    InputError (see `check_input_file`)."""
    path, name = check_input_file(source, kind, formats_hint)
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as error:  # the file vanished or changed permissions meanwhile
        raise InputError(f"cannot read {kind} {name}: {os_reason(error)}; check the path and its permissions") from None
    if not data:
        raise InputError(f"{kind} {name} is empty (0 bytes); {formats_hint}")
    return name, data


def check_input_file(source, kind: str, formats_hint: str) -> tuple[Path, str]:
    """(the path, how messages name it) of an image or video file (`kind`) that exists and can be opened;
    a missing file, a directory, a device or pipe, an empty or unreadable file is a one-line InputError."""
    path = Path(source)
    name, article = display_path(path), "an" if kind[0] in "aeiou" else "a"
    try:
        if path.is_dir():
            raise InputError(f"{kind} file not found: {name} is a directory; pass {article} {kind} file inside it")
        if not path.exists():
            raise InputError(f"{kind} file not found: {name}; check the path")
        if not path.is_file():
            raise InputError(f"{kind} {name} is not a regular file (a device or pipe?); pass {article} {kind} file")
        if path.stat().st_size == 0:
            raise InputError(f"{kind} {name} is empty (0 bytes); {formats_hint}")
        open(path, "rb").close()  # unreadable files are refused here, with the OS's reason
    except InputError:
        raise
    except (OSError, ValueError) as error:  # permissions, a NUL in the path, a file vanishing meanwhile
        raise InputError(f"cannot read {kind} {name}: {os_reason(error)}; check the path and its permissions") from None
    return path, name


def os_reason(error: BaseException) -> str:
    """An OS error's reason without Python's `[Errno N] ...: 'path'` decoration."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def display_path(path: Path) -> str:
    """The path for a message: at most 200 characters, undecodable bytes shown escaped (never a crash)."""
    text = str(path)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 200 else "..." + text[-197:]


def _check_size(size: tuple[int, int], what: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InputError(f"{what} has no pixels ({width}x{height}); " + FORMATS_HINT)
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{what} is {width}x{height} = {width * height} pixels, over the {MAX_IMAGE_PIXELS}-pixel "
                         "limit (decompression-bomb guard); downscale it first (e.g. to at most 4096 pixels a side)")


def _decode(stream, what: str):
    """Header first (size guard), then the first frame's pixels; every decoder failure -> InputError."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL's decoders warn about damaged metadata ("Corrupt EXIF data", ...) and about sizes past its own
            # limit: neither is the user's business here (our limit applies below; damage that matters raises)
            warnings.simplefilter("ignore")
            image = Image.open(stream)
            _check_size(image.size, what)
            if image.format == "JPEG":
                image.draft("RGB", JPEG_DRAFT_SIZE)
            image.load()  # the first frame of animated GIF / WebP / APNG
            return _to_rgb(image, what)
    except InputError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own guard, when it is stricter than ours
        raise InputError(f"{what} is over the pixel limit (decompression-bomb guard: {error}); downscale it first "
                         "(e.g. to at most 4096 pixels a side)") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot decode {what}: not a recognised image format (corrupt, or not an image); "
                         + FORMATS_HINT) from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error,
            ZeroDivisionError, OverflowError) as error:  # what PIL's decoders raise on malformed data
        reason = str(error) or type(error).__name__
        raise InputError(f"cannot decode {what}: {reason} (corrupt or truncated file); " + FORMATS_HINT) from None


def _to_rgb(image, what: str = "image"):
    """Any PIL mode -> RGB: alpha composited on white, 16-bit/float stretched to 0..255, the rest converted."""
    import numpy as np
    from PIL import Image, ImageOps

    try:  # phone photos: apply the EXIF orientation (only when there is one: transposing copies the pixels)
        if image.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):
            image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF: use the pixels as stored
        pass
    try:
        if image.mode == "RGB":
            return image
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
            rgba = image if image.mode == "RGBA" else image.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba)  # alpha over opaque white
            return canvas
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            array = np.asarray(image).astype(np.float32)  # one float32 copy: 4 bytes a pixel
            low, high = float(array.min()), float(array.max())
            if not (np.isfinite(low) and np.isfinite(high)):
                array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
                low, high = float(array.min()), float(array.max())
            array -= low
            array *= 255.0 / max(high - low, 1e-12)
            np.rint(array, out=array)
            gray = Image.fromarray(array.astype(np.uint8))
            del array  # free the float copy before the RGB one is made
            return gray.convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError, TypeError) as error:
        raise InputError(f"cannot convert {what} (mode {image.mode}) to RGB: {error}; save it as an 8-bit RGB "
                         "PNG or JPEG") from None


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
