"""trio-edge: export vision-language models (LLaVA-NeXT, LLaVA-1.5, Qwen2.5-VL, Qwen3-VL) to ONNX / TensorRT with
visual-token selection inside the graphs, and run them with fixed pruned-token shapes on edge GPUs.

    import trio_edge

    info = trio_edge.export("trio-tiny", "exports/trio-tiny", keep_ratio=0.111)   # graphs + manifest
    with trio_edge.load("exports/trio-tiny") as pipeline:                        # ONNX Runtime, CPU
        result = pipeline.generate("cat.png", "what color is the cat?")
        print(result.text, result.kept, result.timings["ttft"])

An export made with images=N takes a list of N images per request; one made with video_frames=F (Qwen) takes
`generate(video="clip.mp4", prompt=...)`.

`export` and `load` take the same options as `trio-export` and `trio-run`, with the same defaults
(`trio_edge.defaults`); `serve.run` / `serve.start` are `trio-serve`, `batch` is `trio-batch`. Heavy modules (torch, transformers, onnx) are imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ArtifactError,
    BackendUnavailableError,
    ExportError,
    InputError,
    ModelNotFoundError,
    ScheduleError,
    TrioEdgeError,
    UnsupportedModelError,
)
from .trio.schedule import Cut, Schedule, resolve_schedule, schedule_for_ratio

try:
    __version__ = version("trio-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

# public name -> (module, attribute), imported on first access (PEP 562)
_LAZY = {
    "export": ("trio_edge.exporters.export", "export"),
    "ExportInfo": ("trio_edge.exporters.export", "ExportInfo"),
    "load": ("trio_edge.runtime.open", "open_pipeline"),
    "Pipeline": ("trio_edge.runtime.pipeline", "Pipeline"),
    "GenerationResult": ("trio_edge.runtime.pipeline", "GenerationResult"),
    "TokenStream": ("trio_edge.runtime.pipeline", "TokenStream"),
    "StreamedToken": ("trio_edge.runtime.pipeline", "StreamedToken"),
    "select_tokens": ("trio_edge.trio.selection", "select_tokens"),
    "serve": ("trio_edge.serve", None),  # the module: trio_edge.serve.run(...) is what trio-serve does
    "samples": ("trio_edge.samples", None),  # the sample images shipped in the package: samples.path("color")
    "batch": ("trio_edge.batching", "batch"),  # trio-batch: answers for a JSONL file of records
    "BatchSummary": ("trio_edge.batching", "BatchSummary"),
}

__all__ = [
    "export", "ExportInfo", "load", "Pipeline", "GenerationResult", "TokenStream", "StreamedToken",
    "select_tokens", "serve", "samples", "batch", "BatchSummary", "Schedule", "Cut", "schedule_for_ratio",
    "resolve_schedule",
    "TrioEdgeError", "InputError", "ScheduleError", "ModelNotFoundError", "UnsupportedModelError", "ExportError",
    "ArtifactError", "BackendUnavailableError", "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = import_module(module) if attribute is None else getattr(import_module(module), attribute)
        globals()[name] = value  # later accesses skip this hook
        return value
    raise AttributeError(f"module 'trio_edge' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
