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
