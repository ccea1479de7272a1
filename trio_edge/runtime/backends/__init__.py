"""Runtime backends behind one small interface (see base.Backend)."""

from __future__ import annotations

from ...errors import BackendUnavailableError

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def check_device(device: str) -> None:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise BackendUnavailableError(f"unknown device {device!r}; use cpu or cuda")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"--device {device} asked for, but no CUDA GPU is usable here (torch {torch.__version__}, "
                "cuda available: False); use --device cpu"
            )
