"""Sample images shipped inside the package, reachable from any directory after an install.

    import trio_edge.samples
    trio_edge.samples.path("color")     # .../trio_edge/assets/samples/color.png
    trio_edge.samples.records()         # [{"image": <path>, "question": ..., "answer": ...}, ...]

From a shell: `python -m trio_edge.samples color` prints the path (no argument: every name and its question).
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


def names() -> list[str]:
    """The sample images' names, e.g. ['color', 'count', 'shape']."""
    return sorted(image.stem for image in _folder().glob("*.png"))


def path(name: str) -> Path:
    """The file of sample image `name` ('color', 'shape' or 'count'; a '.png' suffix is accepted)."""
    stem = name[:-4] if name.endswith(".png") else name
    if stem not in names():
        raise InputError(f"no sample image named {name!r}; the samples are {', '.join(names())}")
    return _folder() / f"{stem}.png"


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
