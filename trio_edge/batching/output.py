"""The output of trio-batch: one JSON line per record, appended and flushed as each answer arrives, so a run
that is killed loses only the records in flight; `--resume` reads the ids already written and skips them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from ..files import check_output_file


def prepare_output(path, *, input_path, resume: bool, force: bool) -> set:
    """Check the output path and return the ids it already holds (resume), after cutting off a last line that
    a killed run left half-written. An existing output needs `resume` or `force` (which empties it)."""
    path = Path(path)
    check_output_file(path, "the output")
    if Path(input_path).exists() and path.exists() and path.resolve() == Path(input_path).resolve():
        raise InputError(f"the output {path} is the input; write the answers to another file")
    if resume and force:
        raise InputError("pass either --resume (keep the answers in the output) or --force (overwrite it), not both")
    if not path.exists():
        return set()
    if force:
        path.write_text("")
        return set()
    if not resume:
        raise InputError(f"the output {path} exists; pass --resume to answer only the records not in it yet, or "
                         "--force to overwrite it")
    return _written_ids(path)


def _written_ids(path: Path) -> set:
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]  # a killed run may leave a last line without its newline
    if len(complete) < len(data):
        with open(path, "r+b") as file:
            file.truncate(len(complete))
    ids = set()
    for number, line in enumerate(complete.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, TypeError, KeyError):
            raise InputError(f"the output {path} line {number} is not a trio-batch answer; resume into the output "
                             "of an earlier trio-batch run, or pass --force to overwrite it") from None
    return ids


class OutputWriter:
    """Appends one JSON line per answer and flushes it to the OS at once (a killed process loses nothing written)."""

    def __init__(self, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, answer: dict) -> None:
        self.file.write(json.dumps(answer, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
