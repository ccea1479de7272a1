"""ONNX Runtime backend: CPU or CUDA, every call through IO binding.

Inputs and outputs are torch tensors bound by pointer (on CUDA no host round trips per stage or per
token); outputs are allocated by torch with the shapes the graph signature implies, except an output the
signature marks as its input updated in place (a segment's kv_out): that one is bound to the input's own
buffer, and the graph's scatter of the new KV slots then writes there without copying the cache.

Sessions open when the backend is built, except in low-memory mode: there each graph opens at its first run,
and the graphs a request runs once during prefill (vision tower, select stages) run alone and close as soon as
another graph opens (the vision graph stays open across a request's images), so their weights are never resident
beside the decoder's (see ort_sessions). The cost: those graphs open again
for every request (from the optimized-graph cache, so without the optimizer passes), and a prefill-only graph
opens with every other graph closed. Embed graphs open in the form of ort_forms (the token table kept fp16), and in
low-memory mode segment graphs too (wide int4 products split by columns).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...artifact.dtypes import ORT_TYPES, TORCH_DTYPES, dtype_name
from ...artifact.graphs import GraphKind
from ...errors import BackendUnavailableError
from ..host_memory import release_freed_host_memory
from .base import Backend
from .ort_forms import embed_form, low_memory_segment_form
from .ort_sessions import (LOW_MEMORY_SETTINGS, SESSION_SETTINGS, cache_entry, cache_limit_bytes, open_session,
                           session_options)

PREFILL_ONLY = (GraphKind.VISION, GraphKind.SELECT)  # run once per request, before the first token
# graphs opened in another form (ort_forms), always or in low-memory mode; named in the settings (and so in the
# optimized-graph cache's key)
GRAPH_FORMS = {GraphKind.EMBED: ("fp16 table rows merged in fp32", embed_form)}
LOW_MEMORY_FORMS = {**GRAPH_FORMS,
                    GraphKind.SEGMENT: ("wide int4 products split by columns", low_memory_segment_form)}
# ONNX Runtime's CPU attention (its GroupQueryAttention kernel, and the tensorrt target's explicit MatMul-Softmax
# form) computes every query of a call against every key and materialises the (heads, T, keys) probabilities,
# so a T-token prefill does the whole T x T square where causal attention needs half of it (PyTorch's SDPA
# skips the masked half). Chunks of 1024 do about (T^2 + 1024 T) / 2 of it, with smaller probability
# buffers: at 2,979 tokens on the wide LLaVA-NeXT shape (onnxruntime target, 2 cores, interleaved requests, 6
# each) the unpruned TTFT median went 1143 -> 1045 ms (chunks of 768 / 1536: 1057 / 1047), same tokens.
# CUDA's kernels are causal-aware: no chunks there.
CPU_PREFILL_CHUNK_TOKENS = 1024


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime "
                                      "(CPU) or pip install 'trio-edge[gpu]' (CUDA)") from None
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, specs, graph_files: dict[str, Path], device: str = "cpu", threads: int | None = None,
                 disabled_optimizers: dict[str, tuple[str, ...]] | None = None, export_key: str | None = None,
                 low_memory: bool = False):
        """`low_memory`: no CPU arena, no memory pattern, no weight prepacking (see ort_sessions), sessions opened
        at first use and prefill-only graphs run alone, closed when another graph opens. `disabled_optimizers`: per
        graph, the ONNX Runtime graph optimizers to skip (see artifact.weights.ort_disabled_optimizers).
        `export_key` (the export's file hashes) turns on the optimized-graph cache (see ort_sessions); None loads
        without it."""
        super().__init__(specs, device)
        ort = _import_ort()
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError(
                    f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider (providers: "
                    f"{', '.join(ort.get_available_providers())}); pip install 'trio-edge[gpu]' (onnxruntime-gpu) "
                    "or use --device cpu")
        self._ort, self._files, self._threads, self._low_memory = ort, dict(graph_files), threads, low_memory
        self.prefill_chunk_tokens = CPU_PREFILL_CHUNK_TOKENS if self.device.type == "cpu" else None
        self._disabled, self._export_key = disabled_optimizers or {}, export_key
        if export_key is not None:
            cache_limit_bytes()  # a bad $TRIO_EDGE_ORT_CACHE_GB fails here, before any graph is opened
        self.settings = {**SESSION_SETTINGS, "intra_op_num_threads": threads or "physical cores",
                         "disabled_optimizers": {name: sorted(skip) for name, skip in self._disabled.items()},
                         "device": str(self.device)}
        if low_memory:
            self.settings.update(LOW_MEMORY_SETTINGS)
        self._forms = LOW_MEMORY_FORMS if low_memory else GRAPH_FORMS
        self.settings["graph_forms"] = {kind.value: what for kind, (what, _) in self._forms.items()}
        self.sessions, self.cache = {}, {}  # open sessions; graph -> 'hit' | 'miss' | 'off' of its last open
        if not low_memory:
            for name in graph_files:
                self._session(name)

    def _session(self, name: str):
        """The open session of graph `name`, opened now if it is not."""
        if name not in self.sessions:
            ort, entry = self._ort, None
            if self._export_key is not None:
                entry = cache_entry(self._export_key, name, ort.__version__, self.settings)
            kind = self.specs[name].kind
            if self._low_memory:
                # a prefill-only graph runs alone: the others reopen from the cache after it; it closes when another
                # graph opens (it stays open across the images or frame groups of one request)
                closing = list(self.sessions) if kind in PREFILL_ONLY else [
                    other for other in self.sessions if self.specs[other].kind in PREFILL_ONLY]
                for other in closing:
                    del self.sessions[other]
                if closing:
                    release_freed_host_memory()
            form = self._forms[kind][1] if kind in self._forms else None
            self.sessions[name], self.cache[name] = open_session(
                ort, self._files[name], session_options(ort, self._threads, self._low_memory),
                self._providers(kind), self._disabled.get(name, ()), entry, form=form,
                reopen_options=(lambda: session_options(ort, self._threads, True)) if self._low_memory else None)
        return self.sessions[name]

    def _providers(self, kind: str) -> list:
        if self.device.type != "cuda":
            return ["CPUExecutionProvider"]
        # ORT runs on torch's current stream: graphs and torch ops stay ordered without host syncs.
        stream = torch.cuda.current_stream(self.device).cuda_stream
        cuda_options = {"device_id": self.device.index or 0, "user_compute_stream": str(stream)}
        if kind == "select":  # fp32 for an exact selection: no TF32 there (the CUDA EP's default)
            cuda_options["use_tf32"] = "0"
        return [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]

    def run_impl(self, graph, inputs):
        spec, session = self.specs[graph], self._session(graph)
        binding = session.io_binding()
        kind, index = self.device.type, self.device.index or 0
        bound = {t.name: inputs[t.name].contiguous() for t in spec.inputs}  # alive until the run ends
        for name, value in bound.items():
            binding.bind_input(name, kind, index, ORT_TYPES[dtype_name(value.dtype)], tuple(value.shape), value.data_ptr())
        shapes = spec.output_shapes({name: tuple(value.shape) for name, value in inputs.items()})
        written = dict(spec.in_place)
        outputs = {}
        for t in spec.outputs:
            if t.name in written and bound[written[t.name]] is inputs[written[t.name]]:
                out = bound[written[t.name]]  # the caller's own buffer: the graph updates it in place
            else:
                out = torch.empty(shapes[t.name], dtype=TORCH_DTYPES[t.dtype], device=self.device)
            binding.bind_output(t.name, kind, index, ORT_TYPES[t.dtype], tuple(out.shape), out.data_ptr())
            outputs[t.name] = out
        session.run_with_iobinding(binding)
        return outputs

    def close(self):
        self.sessions.clear()
