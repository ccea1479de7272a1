"""image_url -> RGB PIL image (and video_url -> bytes), with the server's limits: encoded size (413), format, pixel
count (400).

Data URLs (`data:image/png;base64,...`) always; http(s) URLs only when the server allows remote images
(fetching arbitrary URLs from the device is a request-forgery risk, so it is off by default); nothing else
(no file:// paths: a client must never read the server's files).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from ..errors import InputError
from ..models.preprocess import load_image
from .api_errors import ApiError, bad_request

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
DATA_MIME_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp"}
DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)", re.S)
REMOTE_TIMEOUT_S = 10.0
PARAM = "messages"


VIDEO_MIME_TYPES = {"video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/x-msvideo",
                    "video/avi"}  # the containers models.video.DEMUXERS lets FFmpeg open
# kind -> (the data URL expected, its MIME types, the formats named in refusals)
DATA_KINDS = {"image": ("data:image/png;base64,<data> (or image/jpeg, image/webp)", DATA_MIME_TYPES,
                        "PNG, JPEG or WebP"),
              "video": ("data:video/mp4;base64,<data> (or video/webm, video/quicktime, video/x-matroska)",
                        VIDEO_MIME_TYPES, "MP4, WebM, MOV, MKV or AVI")}


def too_large(size: int, limit: int, kind: str = "image") -> ApiError:
    return ApiError(413, f"{kind}_too_large", f"the {kind} is {size} bytes, over this server's limit of {limit} "
                    f"bytes; send a smaller or more compressed {kind}", param=PARAM)


def data_url_bytes(url: str, max_bytes: int, kind: str = "image") -> bytes:
    """The bytes of a base64 data URL of a PNG, JPEG or WebP image (`kind` "video": of a video, VIDEO_DATA)."""
    expected, mimes, formats = DATA_KINDS[kind]
    match = DATA_URL.fullmatch(url)
    if not match:
        raise bad_request(f"invalid_{kind}", f"the {kind} data URL is malformed; expected {expected}", PARAM)
    mime = match["mime"].strip().lower()
    if mime not in mimes:
        raise bad_request(f"unsupported_{kind}_type", f"{kind}s of type {mime or 'unknown'!r} are not supported; "
                          f"send {formats}", PARAM)
    if "base64" not in [p.strip().lower() for p in match["params"].split(";")]:
        raise bad_request(f"invalid_{kind}", f"the {kind} data URL must be base64-encoded ({expected})", PARAM)
    payload = "".join(match["payload"].split())  # line breaks some encoders insert
    if len(payload) // 4 * 3 > max_bytes + 2:  # refuse before decoding: the encoded length tells the size
        raise too_large(len(payload) // 4 * 3, max_bytes, kind)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"invalid_{kind}", f"the {kind} data URL is not valid base64", PARAM) from None
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes, kind)
    return data


async def remote_image_bytes(url: str, client, max_bytes: int, kind: str = "image") -> bytes:
    """Download an http(s) image (or video: `kind`) with an httpx.AsyncClient, stopping as soon as it exceeds
    `max_bytes`."""
    import httpx

    try:
        async with client.stream("GET", url, timeout=REMOTE_TIMEOUT_S) as response:
            if response.status_code != 200:
                raise bad_request(f"{kind}_fetch_failed", f"fetching the {kind} URL gave HTTP {response.status_code}",
                                  PARAM)
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise too_large(declared, max_bytes, kind)
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise too_large(len(data), max_bytes, kind)
            return bytes(data)
    except httpx.HTTPError as error:
        raise bad_request(f"{kind}_fetch_failed", f"cannot fetch the {kind} URL ({type(error).__name__}: {error})",
                          PARAM) from None


def decode_image(data: bytes, max_pixels: int):
    """Encoded PNG/JPEG/WebP bytes -> RGB PIL image; the pixel limit is checked on the header, before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's own decompression-bomb warning: our limit applies below
            header = Image.open(io.BytesIO(data))
            size, kind = header.size, header.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise bad_request("invalid_image", "cannot decode the image: not a recognised image (corrupt, or not an "
                          "image); send PNG, JPEG or WebP", PARAM) from None
    if kind not in FORMATS:
        raise bad_request("unsupported_image_type", f"{kind} images are not supported; send PNG, JPEG or WebP", PARAM)
    if size[0] * size[1] > max_pixels:
        raise bad_request("image_too_many_pixels", f"the image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, "
                          f"over this server's limit of {max_pixels}; downscale it (the model sees it letterboxed "
                          "to its small fixed grid anyway)", PARAM)
    try:
        return load_image(data)
    except InputError as error:
        raise bad_request("invalid_image", str(error), PARAM) from None
