"""open_pipeline: the one way to open a pipeline, used by every command, trio_edge.load and the server.

An export directory runs its graphs on a backend (onnxruntime by default, tensorrt after trio-build, or
torch: the exported plan rebuilt as PyTorch modules); a model (alias, Hugging Face id, local directory, or
an already loaded `models.registry.LoadedModel`) runs the PyTorch reference pipeline with a schedule.
"""

from __future__ import annotations

from pathlib import Path

from .. import defaults
from ..artifact.graphs import graph_specs
from ..artifact.manifest import Manifest, is_export_dir, read_manifest, safe_member
from ..artifact.plan import plan_for, visual_items
from ..artifact.weights import check_backend, ort_disabled_optimizers
from ..errors import ArtifactError, BackendUnavailableError, InputError
from ..trio.schedule import Schedule
from .backends import BACKENDS, check_device
from .host_memory import keep_freed_host_memory
from .pipeline import Pipeline

# options that only make sense for a model: an export fixed them when it was written
MODEL_ONLY_OPTIONS = ("schedule", "cuts", "keep_ratio", "budget", "schedule_file", "preset", "positions", "threshold",
                      "precision", "method", "grid", "max_text_tokens", "nms_iterations", "images", "video_frames",
                      "budget_per_image")


def open_pipeline(source, *, backend: str | None = None, device: str = defaults.DEVICE,
                  cuda_graphs: bool | None = None, threads: int | None = None, verify: bool = True,
                  max_new_tokens: int | None = None, low_memory: bool = False, **model_options) -> Pipeline:
    """A ready Pipeline for an export directory or a model (see the module docstring).

    `backend`: default onnxruntime for an export, torch for a model (the only backend a model runs on).
    `cuda_graphs`: replay captured CUDA graphs (torch backend on CUDA, TensorRT decode; default on there).
    `max_new_tokens`: a model pipeline's longest answer (an export fixed its own).
    `low_memory`: ONNX Runtime without its CPU arena and memory pattern: about half the peak host memory of a
    request, for memory-bound devices (onnxruntime backend only). Otherwise a CPU pipeline makes the process
    keep freed host memory for reuse (runtime.host_memory: process-wide, no page faults per request).
    `model_options` (models only): schedule (a Schedule) or cuts / keep_ratio / schedule_file with
    positions / threshold / precision; method, seed, grid, max_text_tokens, nms_iterations.
    """
    is_export = check_open(source, backend=backend, device=device, max_new_tokens=max_new_tokens,
                           low_memory=low_memory, **model_options)
    if device == "cpu" and not low_memory:
        keep_freed_host_memory()
    if is_export:
        return open_export(source, backend=backend or defaults.EXPORT_BACKEND, device=device, cuda_graphs=cuda_graphs,
                           threads=threads, verify=verify, low_memory=low_memory)
    given = {k: v for k, v in model_options.items() if v is not None}  # None: the default
    return open_model(source, device=device, cuda_graphs=cuda_graphs,
                      max_new_tokens=defaults.MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens, **given)


def check_open(source, *, backend: str | None = None, device: str = defaults.DEVICE, max_new_tokens: int | None = None,
               low_memory: bool = False, cuda_graphs: bool | None = None, threads: int | None = None,
               verify: bool = True, **model_options) -> bool:
    """What open_pipeline checks before it loads any weights or graphs (a server runs it before it binds its port):
    the backend and device, options an export fixed, and for an export its manifest and whether the backend can
    run it; for a model name, that it resolves. Takes open_pipeline's options (cuda_graphs, threads and verify
    need no check). Returns whether `source` is an export directory."""
    if backend is not None and backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    check_device(device)
    if not _is_loaded_model(source) and _is_export(source):
        given = sorted(k for k in MODEL_ONLY_OPTIONS if model_options.get(k) is not None)
        if given or max_new_tokens is not None:
            names = given + (["max_new_tokens"] if max_new_tokens is not None else [])
            raise InputError(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} fixed at export; re-export "
                             f"{source} with trio-export to change {'it' if len(names) == 1 else 'them'}")
        unknown = sorted(set(model_options) - set(MODEL_ONLY_OPTIONS) - {"seed"})
        if unknown:
            raise TypeError(f"open_pipeline got unexpected options {unknown}")
        check_export(Path(source), read_manifest(source, verify_hashes=False), backend or defaults.EXPORT_BACKEND,
                     device, low_memory)
        return True
    if low_memory:
        raise InputError("low_memory (--low-memory) applies to ONNX Runtime, which runs export directories; "
                         f"{source} is a model: export it with trio-export and open the export")
    if backend not in (None, defaults.MODEL_BACKEND):
        raise InputError(f"{source} is not an export directory; --backend {backend} needs one "
                         f"(run trio-export {source} -o DIR first)")
    if model_options.get("method") is not None:
        from ..trio.methods import method_info

        method_info(model_options["method"])  # an unknown rule's name
    if not _is_loaded_model(source):
        from ..models.registry import resolve

        resolve(str(source))  # an unknown name or a missing directory fails here, before any loading
    return False


def check_export(directory: Path, manifest: Manifest, backend: str, device: str, low_memory: bool) -> None:
    """Whether `backend` on `device` can run this export (before any graph is loaded)."""
    check_backend(manifest.quantization, backend, directory)
    if backend != "torch":  # the torch backend rebuilds the modules; it never runs the graph files
        manifest.check_runnable(directory)
    if backend == "tensorrt":
        from .backends.tensorrt_backend import TensorRTBackend

        manifest.check_tensorrt_target(directory)
        TensorRTBackend.check_export(directory, manifest, device)
    if backend == "onnxruntime":
        manifest.check_onnxruntime_device(directory, device)
    if low_memory and backend != "onnxruntime":
        raise InputError(f"low_memory (--low-memory) applies to the onnxruntime backend only, not {backend}; "
                         "drop it or use --backend onnxruntime")


def _is_loaded_model(source) -> bool:
    return not isinstance(source, (str, Path))


def _is_export(source) -> bool:
    """An export directory, or a directory that is no model checkpoint either (e.g. a killed export's partial
    directory): opening it as an export says what is missing."""
    path = Path(source)
    if is_export_dir(path):
        return True
    weights = any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))
    return path.is_dir() and not ((path / "config.json").is_file() and weights)


def open_export(directory, *, backend: str = defaults.EXPORT_BACKEND, device: str = defaults.DEVICE,
                cuda_graphs: bool | None = None, threads: int | None = None, verify: bool = True,
                ort_cache: bool = True, low_memory: bool = False) -> Pipeline:
    """An export directory's graphs on `backend`, with pre/post-processing from the export's own files.
    `ort_cache`: ONNX Runtime loads through the optimized-graph cache (runtime.backends.ort_sessions).
    `low_memory`: ONNX Runtime without its CPU arena and memory pattern (see ort_sessions)."""
    directory = Path(directory)
    manifest = read_manifest(directory, verify_hashes=verify)
    check_export(directory, manifest, backend, device, low_memory)
    specs = manifest.specs()
    adapter = _io_adapter(directory)
    if backend == "onnxruntime":
        from .backends.onnxruntime_backend import OnnxRuntimeBackend

        files = {name: safe_member(directory, manifest.graphs[name].file) for name in specs}
        quantized = manifest.quantization is not None
        disabled = {name: ort_disabled_optimizers(spec.kind, quantized=quantized, dtype=manifest.model.dtype)
                    for name, spec in specs.items()}
        engine = OnnxRuntimeBackend(specs, files, device=device, threads=threads, disabled_optimizers=disabled,
                                    export_key=manifest.content_key() if ort_cache else None, low_memory=low_memory)
    elif backend == "torch":
        engine = _torch_backend_for(manifest, manifest.specs(runtime_form=True), device, cuda_graphs)
    else:
        from .backends.tensorrt_backend import TensorRTBackend

        engine = TensorRTBackend.from_export(directory, manifest, specs, device=device,
                                             cuda_graphs=cuda_graphs is not False)
    pipeline = Pipeline(manifest.plan, engine, adapter, stop_token_ids=manifest.io.stop_token_ids,
                        dtype=manifest.model.dtype)
    pipeline.weight_format, pipeline.from_export = manifest.weight_format(), True
    return pipeline


def _io_adapter(directory: Path):
    """Pre/post-processing (tokenizer, image processor, prompt rules) from the export's own files."""
    from transformers import AutoConfig

    from ..models.families import adapter_class_for

    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        adapter_class = adapter_class_for(config)
        processor = adapter_class.load_processor(lambda auto_class: auto_class.from_pretrained(directory,
                                                                                              local_files_only=True))
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{directory}: the model config or processor files cannot be read "
                            f"({str(error).splitlines()[0]}); re-export with trio-export") from None
    return adapter_class(config, processor)


def _torch_backend_for(manifest: Manifest, specs, device, cuda_graphs):
    """The PyTorch modules of the exported plan, rebuilt from the model the manifest names."""
    from ..artifact.dtypes import TORCH_DTYPES
    from ..models.registry import load as load_model
    from ..models.split import build_modules
    from .backends.torch_backend import TorchBackend

    loaded = load_model(manifest.model.source, dtype=TORCH_DTYPES[manifest.model.dtype])
    return TorchBackend(specs, build_modules(loaded.adapter, manifest.plan, runtime_form=True), device=device,
                        cuda_graphs=cuda_graphs)


def open_model(model, schedule: Schedule | None = None, *, grid=None, max_text_tokens: int = defaults.MAX_TEXT_TOKENS,
               max_new_tokens: int = defaults.MAX_NEW_TOKENS, device: str = defaults.DEVICE,
               method: str | None = None, seed: int = 0, nms_iterations: int = defaults.NMS_ITERATIONS,
               cuda_graphs: bool | None = None, runtime_form: bool = True, images: int = 1, video_frames: int = 0,
               budget_per_image: bool = False, **schedule_options) -> Pipeline:
    """The PyTorch pipeline of a model (no export): the same stages the graphs run, in eager mode (CUDA graphs
    on CUDA). `model` is a name or a loaded model; `schedule` a Schedule (resolved for the same images / video), or
    give the user options (cuts, keep_ratio, schedule_file, positions, threshold, precision); neither means no
    pruning. `images` / `video_frames` / `budget_per_image`: what a request takes, as trio-export's options."""
    from ..artifact.dtypes import dtype_name
    from ..models.registry import load as load_model
    from ..models.split import build_modules
    from .backends.torch_backend import TorchBackend

    from ..trio.presets import method_for

    check_device(device)
    method = method_for(method, schedule_options.get("preset"), defaults.METHOD)
    loaded = model if _is_loaded_model(model) else load_model(str(model))
    adapter = loaded.adapter
    grid = adapter.grid_for(grid) if grid is None or isinstance(grid, str) else tuple(grid)
    adapter.validate_grid(grid)
    items = visual_items(adapter, images, video_frames)
    if schedule is None:
        schedule = adapter.schedule(grid, items, bool(video_frames), method=method,
                                    **{k: v for k, v in schedule_options.items() if v is not None})
    elif any(v is not None for v in schedule_options.values()):
        raise InputError("pass either a Schedule or schedule options (cuts, keep_ratio, ...), not both")
    plan = plan_for(adapter, schedule, grid=grid, max_text_tokens=max_text_tokens, max_new_tokens=max_new_tokens,
                    nms_iterations=nms_iterations, method=method, images=images, video_frames=video_frames,
                    budget_per_image=budget_per_image)
    dtype = dtype_name(next(loaded.model.parameters()).dtype)
    specs = graph_specs(plan, tile_count=adapter.tile_count(grid), pixel_shape=adapter.pixel_shape(grid), dtype=dtype)
    modules = build_modules(adapter, plan, seed=seed, runtime_form=runtime_form)
    backend = TorchBackend(specs, modules, device=device, cuda_graphs=cuda_graphs)
    return Pipeline(plan, backend, adapter, stop_token_ids=adapter.stop_token_ids(), dtype=dtype)
