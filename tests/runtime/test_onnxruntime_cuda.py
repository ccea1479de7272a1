"""ONNX Runtime on CUDA (IO binding on torch tensors, torch's stream) gives the CPU session's results.

Needs onnxruntime-gpu and a CUDA GPU (run in GPU sessions via benchmarks/gpu_session.sh)."""

from __future__ import annotations

import pytest
import torch

from helpers import PROMPTS
from trio_edge.runtime.loader import load


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
    for index in range(3):  # several requests: the KV buffers carry over on the device
        image, prompt = images[index], PROMPTS[index]
        expected = cpu.generate(image, prompt, max_new_tokens=8)
        got = gpu.generate(image, prompt, max_new_tokens=8)
        assert got.kept == expected.kept
        assert got.token_ids == expected.token_ids
        torch.testing.assert_close(got.first_logits.cpu(), expected.first_logits, rtol=1e-3, atol=1e-3)
    assert all(kv.is_cuda for kv in gpu.kv.values())
