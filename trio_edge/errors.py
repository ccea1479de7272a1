"""Typed errors: each says what was wrong and what to do about it.

The CLI prints these as one line (no traceback); anything else is a bug.
"""


class TrioEdgeError(Exception):
    """Base class of every error trio-edge raises on purpose."""


class InputError(TrioEdgeError, ValueError):
    """A user input (image, prompt, flag) is unusable."""


class ScheduleError(InputError):
    """A pruning schedule does not fit the model."""


class ModelNotFoundError(TrioEdgeError):
    """A model alias, hub id or directory could not be resolved or loaded."""


class UnsupportedModelError(TrioEdgeError):
    """The model's architecture has no adapter."""


class ExportError(TrioEdgeError):
    """Exporting a graph failed or its validation found a mismatch."""


class ArtifactError(TrioEdgeError):
    """An export directory is missing files, corrupted, or from an incompatible tool version."""


class BackendUnavailableError(TrioEdgeError):
    """A runtime backend (onnxruntime-gpu, tensorrt, CUDA) is not installed or usable here."""


def require_whole_numbers(named: dict[str, object], *, minimum: int = 1, error: type[InputError] = InputError) -> None:
    """Raise `error` naming the first value (name -> value) that is not a whole number of at least `minimum`
    (True and False are ints to Python, not counts)."""
    for name, value in named.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise error(f"{name} must be a whole number of at least {minimum}, got {value!r}")
