"""PyTorch backend: runs the plan's PyTorch modules (the reference, and GPUs without ORT/TensorRT).

On CUDA, modules marked `cuda_graph_safe` (vision, embed, decoder segments) are captured as CUDA graphs per
input shape and replayed (`cuda_graphs=False` runs them eagerly); the select stages always run eagerly
(their proxy gradient and convergence check are not capture-safe).
"""

from __future__ import annotations

import torch

from ...errors import BackendUnavailableError
from .base import Backend
from .cuda_graphs import CapturedCalls


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, specs, modules: dict[str, torch.nn.Module], device: str = "cpu",
                 cuda_graphs: bool | None = None):
        super().__init__(specs, device)
        self.modules = {name: module.to(self.device) for name, module in modules.items()}
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise BackendUnavailableError(f"CUDA graphs need a CUDA device, not {device!r}; drop the CUDA-graph option on CPU")
        self.captured = CapturedCalls()

    @torch.inference_mode(False)
    def run_impl(self, graph, inputs):
        spec = self.specs[graph]
        module = self.modules[graph]
        names = [t.name for t in spec.inputs]
        args = [inputs[name] for name in names]
        if self.cuda_graphs and getattr(module, "cuda_graph_safe", False):
            outputs = self.captured.run(graph, module, args, names)
        else:
            with torch.no_grad():  # selects re-enable grad locally for the proxy gradient
                outputs = module(*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {t.name: out for t, out in zip(spec.outputs, outputs)}
