"""ONNX Runtime backend: CPU, or CUDA with IO binding so tensors stay on the GPU between graphs.

On CUDA, inputs and outputs are torch CUDA tensors bound by pointer (no host round trips per stage
or per token); output buffers are allocated by ORT on the device and handed back via DLPack.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import BackendUnavailableError
from .base import Backend

NP_TO_ORT = {torch.float32: "float", torch.float16: "float16", torch.int64: "int64", torch.bool: "bool"}


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime "
                                      "(CPU) or pip install 'trio-edge[gpu]' (CUDA)") from None
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, specs, graph_files: dict[str, Path], device: str = "cpu", threads: int | None = None):
        super().__init__(specs, device)
        ort = _import_ort()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError(
                    f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider (providers: "
                    f"{', '.join(ort.get_available_providers())}); pip install 'trio-edge[gpu]' (onnxruntime-gpu) "
                    "or use --device cpu")
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.sessions = {name: ort.InferenceSession(str(path), options, providers=providers)
                         for name, path in graph_files.items()}

    def run_impl(self, graph, inputs):
        if self.device.type == "cuda":
            return self._run_bound(graph, inputs)
        spec = self.specs[graph]
        feed = {t.name: inputs[t.name].numpy() for t in spec.inputs}
        outputs = self.sessions[graph].run([t.name for t in spec.outputs], feed)
        return {t.name: torch.from_numpy(out) for t, out in zip(spec.outputs, outputs)}

    def _run_bound(self, graph, inputs):
        spec, session = self.specs[graph], self.sessions[graph]
        binding = session.io_binding()
        index = self.device.index or 0
        for t in spec.inputs:
            value = inputs[t.name].contiguous()
            binding.bind_input(t.name, "cuda", index, NP_TO_ORT[value.dtype], tuple(value.shape), value.data_ptr())
        for t in spec.outputs:
            binding.bind_output(t.name, "cuda", index)
        session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {t.name: torch.from_dlpack(v.to_dlpack()) for t, v in zip(spec.outputs, values)}

    def close(self):
        self.sessions.clear()
