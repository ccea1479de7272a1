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
