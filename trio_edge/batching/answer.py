"""One record through one pipeline: its answer line, or its error line (the run goes on)."""

from __future__ import annotations

import logging
import urllib.request

from ..errors import InputError, TrioEdgeError

log = logging.getLogger("trio_edge")
URL_TIMEOUT_S = 30.0
MAX_URL_BYTES = 64 * 1024 * 1024


def answer(pipeline, record: dict) -> dict:
    """`record` (Record.to_json()) -> {"id", "text", "kept", "prompt_tokens", "completion_tokens", "timings"}, or
    {"id", "error"} when this record cannot be answered (unreadable image, prompt too long, ...)."""
    options = {k: record[k] for k in ("max_new_tokens", "temperature", "top_p", "seed") if k in record}
    try:
        if record.get("video") is not None:
            result = pipeline.generate(None, record["prompt"], video=_image(record["video"], "video"), **options)
        else:
            image = record["image"]
            image = [_image(i) for i in image] if isinstance(image, list) else _image(image)
            result = pipeline.generate(image, record["prompt"], **options)
    except (TrioEdgeError, OSError, ValueError) as error:
        return {"id": record["id"], "error": f"{type(error).__name__}: {error}"}
    except Exception as error:  # noqa: BLE001 - one record's failure must not end a run of a million
        log.exception("trio-batch: record %r failed", record["id"])
        return {"id": record["id"], "error": f"{type(error).__name__}: {error}"}
    return {"id": record["id"], "text": result.text, "kept": result.kept, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": len(result.token_ids), "timings": result.timings}


def _image(location: str, kind: str = "image"):
    """A path as is (the pipeline opens it); an http(s) URL's bytes (`kind`: what it is, for messages)."""
    if not location.lower().startswith(("http://", "https://")):
        return location
    try:
        with urllib.request.urlopen(location, timeout=URL_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            data = response.read(MAX_URL_BYTES + 1)
    except OSError as error:
        raise InputError(f"cannot download the {kind} {location}: {getattr(error, 'reason', error)}") from None
    if len(data) > MAX_URL_BYTES:
        raise InputError(f"the {kind} {location} is over {MAX_URL_BYTES // 2**20} MiB")
    return data
