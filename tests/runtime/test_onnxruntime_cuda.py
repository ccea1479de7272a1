"""ONNX Runtime on CUDA (IO binding on torch tensors, torch's stream) gives the CPU session's results.

Needs onnxruntime-gpu and a CUDA GPU (run in GPU sessions via benchmarks/gpu_session.sh)."""

from __future__ import annotations

import pytest
import torch
from helpers import PROMPTS, assert_same_generations

from trio_edge import load


def cuda_provider_available() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(not cuda_provider_available(), reason="needs onnxruntime-gpu and a CUDA GPU")
def test_cuda_io_binding_matches_cpu(exported, images):
    _, directory, _ = exported
    cpu = load(directory, backend="onnxruntime", device="cpu")
    gpu = load(directory, backend="onnxruntime", device="cuda")
    assert_same_generations(cpu, gpu, zip(images[:3], PROMPTS))  # the KV buffers carry over on the device
    assert all(kv.is_cuda for kv in gpu.kv.values())


@pytest.mark.skipif(not cuda_provider_available(), reason="needs onnxruntime-gpu and a CUDA GPU")
def test_cuda_gqa_on_shared_buffers_matches_cpu(export_model, images, tmp_path):
    """The onnxruntime target on ORT CUDA (GroupQueryAttention takes fp16/bf16 there): each layer's past and present
    bound to one view of the device buffer, answers as on ORT CPU, and the buffers never leave the device."""
    from trio_edge.artifact.graphs import cache_inputs
    from trio_edge.exporters.export import export

    directory = tmp_path / "gqa-fp16"
    export(export_model.source, directory, cuts="1:40", dtype="fp16", target="onnxruntime", loaded=export_model,
           max_text_tokens=48, max_new_tokens=12, progress=False)
    cpu = load(directory, backend="onnxruntime", device="cpu")
    gpu = load(directory, backend="onnxruntime", device="cuda")
    buffers = {name: kv.data_ptr() for name, kv in gpu.kv.items()}
    assert_same_generations(cpu, gpu, zip(images[:3], PROMPTS), max_new_tokens=4, tol=2e-2)
    assert {name: kv.data_ptr() for name, kv in gpu.kv.items()} == buffers and all(kv.is_cuda for kv in gpu.kv.values())
    spec = gpu.backend.specs[gpu.plan.segments[-1].name]
    assert "kv" not in {t.name for t in spec.inputs} and cache_inputs(spec, gpu.kv[spec.name])
