"""Sample images (and a sample video clip) shipped inside the package, reachable from any directory after an install.

    import trio_edge.samples
    trio_edge.samples.path("color")     # .../trio_edge/assets/samples/color.png
    trio_edge.samples.path("moving")    # .../trio_edge/assets/samples/moving.mp4: a red circle crossing, 16 frames
    trio_edge.samples.records()         # [{"image": <path>, "question": ..., "answer": ...}, ...]

From a shell: `python -m trio_edge.samples color` prints the path (no argument: every image's name and question).
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

from .errors import InputError


def _folder() -> Path:
    # package data (pyproject: trio_edge = ["assets/**/*"]); a plain directory for regular and editable installs
    return Path(str(resources.files("trio_edge") / "assets" / "samples"))


SUFFIXES = (".png", ".mp4")  # sample images, and the sample video clip


def names() -> list[str]:
    """The samples' names, e.g. ['color', 'count', 'moving', 'shape'] ('moving' is the video clip)."""
    return sorted(item.stem for suffix in SUFFIXES for item in _folder().glob(f"*{suffix}"))


def path(name: str) -> Path:
    """The file of sample `name` ('color', 'shape', 'count' or the clip 'moving'; its suffix is accepted)."""
    candidates = [name] if name.endswith(SUFFIXES) else [f"{name}{suffix}" for suffix in SUFFIXES]
    found = [_folder() / file for file in candidates if (_folder() / file).is_file()]
    if not found:
        raise InputError(f"no sample named {name!r}; the samples are {', '.join(names())}")
    return found[0]


def records() -> list[dict]:
    """Each sample with its question and the answer trio-tiny was trained to give (`image` is a full path)."""
    lines = (_folder() / "samples.jsonl").read_text().splitlines()
    return [{**record, "image": str(_folder() / record["image"])} for record in map(json.loads, filter(None, lines))]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        for record in records():
            print(f"{Path(record['image']).stem}\t{record['question']}\t{record['answer']}")
        return 0
    try:
        for name in argv:
            print(path(name))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
