"""The input of trio-batch: records (`id`, `image` -- one path or URL, or a list of them for an export that takes
several -- or `video`, `prompt`, generation options) from a JSONL file, or one record per image of a folder.
Everything is checked before any pipeline opens: a bad line is one error naming it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
OPTIONS = ("max_new_tokens", "temperature", "top_p", "seed")  # what Pipeline.generate takes per request
KEYS = ("id", "image", "video", "prompt", *OPTIONS)


@dataclass(frozen=True)
class Record:
    id: str | int
    image: str | list[str] | None  # an absolute path or an http(s) URL, a list of them in prompt order; None: video
    prompt: str
    options: dict = field(default_factory=dict)
    video: str | None = None  # an absolute path or an http(s) URL (an export made with --video-frames)

    def to_json(self) -> dict:
        visual = {"video": self.video} if self.video is not None else {"image": self.image}
        return {"id": self.id, **visual, "prompt": self.prompt, **self.options}


def read_records(source, *, prompt: str | None = None, options: dict | None = None) -> list[Record]:
    """The records of a JSONL file (relative image paths are relative to the file's folder) or of a folder of
    images (ids: the file names; `prompt` for each). `prompt` and `options` are the defaults of records that
    do not set their own."""
    path = Path(source)
    defaults = {k: v for k, v in (options or {}).items() if v is not None}
    if path.is_dir():
        if prompt is None:
            raise InputError(f"{path} is a folder of images: pass --prompt, the question asked about each image")
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise InputError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of images or a "
                             "JSONL file")
        return [Record(p.name, str(p.resolve()), prompt, dict(defaults)) for p in images]
    if not path.is_file():
        raise InputError(f"input {path} not found; pass a JSONL file of records or a folder of images")
    records, lines_of = [], {}
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = _record(line, number, path, prompt, defaults)
            if record.id in lines_of:
                raise InputError(f"{path} line {number}: the id {record.id!r} is already used on line "
                                 f"{lines_of[record.id]}; ids must be unique (resuming relies on them)")
            lines_of[record.id] = number
            records.append(record)
    if not records:
        raise InputError(f"{path} has no records; write one JSON object per line, e.g. "
                         '{"id": "1", "image": "cat.png", "prompt": "what is it?"}')
    return records


def _record(line: str, number: int, path: Path, prompt: str | None, defaults: dict) -> Record:
    where = f"{path} line {number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"{where} is not JSON ({error.msg}); the input must be JSONL: one JSON object per line "
                         "(or a folder of images)") from None
    if not isinstance(data, dict):
        raise InputError(f"{where} is a JSON {type(data).__name__}, not an object with id, image and prompt")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise InputError(f"{where} has unknown keys {unknown}; a record has {', '.join(KEYS)}")
    ident = data.get("id")
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or ident == "":
        raise InputError(f"{where} has {'no id' if ident is None else f'the id {ident!r}'}; each record needs an "
                         "id (a string or a whole number), unique in the file")
    image, video = data.get("image"), data.get("video")
    if (image is None) == (video is None):
        raise InputError(f"{where} (id {ident!r}) has {'both an image and a video' if image is not None else 'no image'}"
                         "; give its path or http(s) URL as \"image\" (a list of them for several images) or, for a "
                         "video export, as \"video\"")
    locations = [video] if video is not None else image if isinstance(image, list) else [image]
    if not locations or not all(isinstance(v, str) and v.strip() for v in locations):
        raise InputError(f"{where} (id {ident!r}): \"{'video' if video is not None else 'image'}\" must be a path or "
                         "http(s) URL (\"image\" may be a non-empty list of them)")
    question = data.get("prompt", prompt)
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"{where} (id {ident!r}) has no prompt; give it as \"prompt\" (or pass --prompt for "
                         "every record without one)")
    located = [v if v.lower().startswith(("http://", "https://")) else str((path.parent / v).resolve())
               for v in locations]
    options = {**defaults, **{k: data[k] for k in OPTIONS if k in data}}
    if video is not None:
        return Record(ident, None, question, options, video=located[0])
    return Record(ident, located if isinstance(image, list) else located[0], question, options)
