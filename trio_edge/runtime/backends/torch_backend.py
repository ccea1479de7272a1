"""PyTorch backend: runs the plan's PyTorch modules (the reference, and GPUs without ORT/TensorRT)."""

from __future__ import annotations

import torch

from .base import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, specs, modules: dict[str, torch.nn.Module], device: str = "cpu"):
        super().__init__(specs, device)
        self.modules = {name: module.to(self.device) for name, module in modules.items()}

    @torch.inference_mode(False)
    def run_impl(self, graph, inputs):
        spec = self.specs[graph]
        args = [inputs[t.name] for t in spec.inputs]
        with torch.no_grad():  # selects re-enable grad locally for the proxy gradient
            outputs = self.modules[graph](*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {t.name: out for t, out in zip(spec.outputs, outputs)}
