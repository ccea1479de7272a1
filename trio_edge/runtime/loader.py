"""load(DIR): an export directory -> a ready Pipeline on the chosen backend and device."""

from __future__ import annotations

from pathlib import Path

from ..errors import ArtifactError, BackendUnavailableError
from ..export.manifest import read_manifest, safe_member
from .backends import BACKENDS, check_device
from .graphs import graph_specs
from .pipeline import Pipeline
from .plan import PipelinePlan


def io_adapter(directory: Path):
    """Pre/post-processing (tokenizer, image processor, prompt rules) from the export's own files."""
    from transformers import AutoConfig, AutoProcessor

    from ..models.llava import adapter_for

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    return adapter_for(config, processor)


def load(directory: str | Path, *, backend: str = "onnxruntime", device: str = "cpu", verify: bool = True,
         threads: int | None = None, cuda_graphs: bool | None = None) -> Pipeline:
    """`cuda_graphs`: replay captured CUDA graphs (torch backend on CUDA, TensorRT decode; default on).
    onnxruntime ignores it."""
    directory = Path(directory)
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    check_device(device)
    manifest = read_manifest(directory, verify_hashes=verify)
    try:
        plan = PipelinePlan.from_dict(manifest["plan"])
        io = manifest["io"]
        dtype = manifest["model"]["dtype"]
    except (KeyError, TypeError) as error:
        raise ArtifactError(f"{directory}/manifest.json lacks a field the runtime needs ({error}); re-export") from None
    specs = graph_specs(plan, tile_count=io["tile_count"], tile_size=io["tile_size"], dtype=dtype)
    adapter = io_adapter(directory)
    if backend == "onnxruntime":
        from .backends.onnxruntime_backend import OnnxRuntimeBackend

        files = {name: safe_member(directory, manifest["graphs"][name]["file"]) for name in specs}
        engine = OnnxRuntimeBackend(specs, files, device=device, threads=threads)
    elif backend == "torch":
        engine = _torch_backend(manifest, plan, specs, device, cuda_graphs)
    else:
        from .backends.tensorrt_backend import TensorRTBackend

        engine = TensorRTBackend.from_export(directory, manifest, specs, device=device,
                                             cuda_graphs=cuda_graphs is not False)
    return Pipeline(plan, engine, adapter, stop_token_ids=io["stop_token_ids"], dtype=dtype)


def _torch_backend(manifest, plan, specs, device, cuda_graphs):
    """The PyTorch modules of the exported plan, rebuilt from the model the manifest names."""
    import torch

    from ..models.registry import load as load_model
    from ..models.split import build_modules
    from .backends.torch_backend import TorchBackend

    loaded = load_model(manifest["model"]["source"], dtype=getattr(torch, manifest["model"]["dtype"]))
    return TorchBackend(specs, build_modules(loaded.adapter, plan, runtime_form=True), device=device, cuda_graphs=cuda_graphs)
