"""TensorRT backend: engines built by trio-build, run zero-copy on one CUDA stream.

Per call: pick the execution context whose optimization profile fits the input shapes (profile 0 =
decode, query length 1; profile 1 = prefill), set input shapes, bind the torch CUDA tensors' pointers
(set_tensor_address), read the output shapes back from the context, bind freshly allocated or reused
output tensors (a segment's kv_out at its kv input's own address: the engine scatters the new KV slots into
the cache in place) and run execute_async_v3 on the backend's stream. Decode steps replay a CUDA graph of
that call once the same tensor addresses come round again (see DecodeGraphs).

Importing this module never imports tensorrt; only loading engines does.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ...artifact.dtypes import TORCH_DTYPES
from ...artifact.manifest import safe_member
from ...errors import ArtifactError, BackendUnavailableError, InputError
from .base import Backend

INSTALL_HINT = ("pip install 'trio-edge[tensorrt]' on x86-64/SBSA servers; on Jetson TensorRT comes with JetPack: "
                "sudo apt install python3-libnvinfer (use the system Python, or a venv made with "
                "--system-site-packages). The ONNX export and trio-check work without TensorRT")

# trt.DataType member name <-> torch dtype: the one table both directions use.
TRT_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT64": torch.int64,
                    "INT32": torch.int32, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}

STATIC_INPUT_BYTES = 64 * 1024  # decode inputs up to this size are copied into static buffers (ids, positions)
MAX_CAPTURED_GRAPHS = 32


# ---- pure helpers (unit-tested without TensorRT) ---------------------------------------------------------
def import_tensorrt():
    """`import tensorrt` (version 10 or newer), or a BackendUnavailableError saying how to install it."""
    try:
        import tensorrt
    except ImportError as error:
        raise BackendUnavailableError(f"TensorRT is not installed here ({error}): {INSTALL_HINT}") from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailableError(f"TensorRT {tensorrt.__version__} is too old: trio-edge needs TensorRT 10 or "
                                      f"newer ({INSTALL_HINT})")
    return tensorrt


def require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"{what} needs an NVIDIA GPU, but CUDA is not usable here (torch "
                                      f"{torch.__version__}, built for CUDA {torch.version.cuda}); run it on the GPU "
                                      "that will run the engines")


def platform_info(tensorrt_version: str, device_index: int = 0) -> dict:
    """What an engine is tied to: the TensorRT version and the GPU (name and compute capability)."""
    major, minor = torch.cuda.get_device_capability(device_index)
    return {"version": tensorrt_version, "gpu": torch.cuda.get_device_name(device_index),
            "compute_capability": f"{major}.{minor}"}


def check_engine_compatibility(recorded: dict | None, current: dict, *, directory: str | Path = "DIR") -> None:
    """Refuse engines built with another TensorRT version or for another GPU (they would fail or misbehave)."""
    if not recorded:
        raise ArtifactError(f"{directory} has no TensorRT engines (its manifest.json has no 'tensorrt' section): "
                            f"run trio-build {directory} first")
    missing = [k for k in ("version", "gpu", "compute_capability", "engines") if k not in recorded]
    if missing:
        raise ArtifactError(f"{directory}/manifest.json: the 'tensorrt' section lacks {', '.join(missing)}; "
                            f"rebuild with trio-build {directory}")
    labels = {"version": "TensorRT version", "gpu": "GPU", "compute_capability": "compute capability"}
    differing = [labels[k] for k in labels if str(recorded[k]) != str(current[k])]
    if differing:
        def sm(cc):
            return "sm_" + str(cc).replace(".", "")

        raise ArtifactError(
            f"TensorRT engines in {directory} do not fit this machine ({' and '.join(differing)} "
            f"{'differs' if len(differing) == 1 else 'differ'}): engines were "
            f"built for {recorded['gpu']} ({sm(recorded['compute_capability'])}) with TensorRT {recorded['version']}; "
            f"this is {current['gpu']} ({sm(current['compute_capability'])}) with TensorRT {current['version']}: "
            f"rebuild with trio-build {directory}")


def torch_dtype(trt_dtype) -> torch.dtype:
    """torch dtype of a trt.DataType (or of its member name)."""
    name = getattr(trt_dtype, "name", trt_dtype)
    if name not in TRT_TORCH_DTYPES:
        raise ArtifactError(f"engine tensor type {name} has no torch equivalent here")
    return TRT_TORCH_DTYPES[name]


def select_profile(profile_ranges: list[dict[str, tuple]], shapes: dict[str, tuple]) -> int | None:
    """Index of the first profile whose (min shape, max shape) of every dynamic input contains `shapes`."""
    for index, ranges in enumerate(profile_ranges):
        if all(len(shapes[name]) == len(low) and all(lo <= s <= hi for lo, s, hi in zip(low, shapes[name], high))
               for name, (low, high) in ranges.items()):
            return index
    return None


# ---- engines ------------------------------------------------------------------------------------------------
@dataclass
class LoadedEngine:
    engine: object
    contexts: list  # one execution context per optimization profile, context i runs profile i
    inputs: list[str]
    outputs: list[str]
    dtypes: dict[str, torch.dtype]
    host_inputs: set[str]  # shape-tensor inputs: TensorRT reads them from host memory
    profile_ranges: list[dict[str, tuple]]  # per profile: dynamic input -> (min shape, max shape)

    @property
    def has_decode_profile(self) -> bool:
        return len(self.contexts) > 1  # built with [decode, prefill] profiles (engine_build.optimization_profiles)


def load_engine(trt, runtime, path: Path, stream: torch.cuda.Stream) -> LoadedEngine:
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ArtifactError(f"TensorRT could not deserialize {path} (see its log above); rebuild with trio-build")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    dynamic = [n for n in inputs if any(d < 0 for d in engine.get_tensor_shape(n))]
    ranges = []
    contexts = []
    for profile in range(engine.num_optimization_profiles):
        context = engine.create_execution_context()
        if context is None or not context.set_optimization_profile_async(profile, stream.cuda_stream):
            raise BackendUnavailableError(f"TensorRT could not create an execution context for {path.name} "
                                          "(out of GPU memory?)")
        contexts.append(context)
        shapes = {n: engine.get_tensor_profile_shape(n, profile) for n in dynamic}  # [min, opt, max]
        ranges.append({n: (tuple(s[0]), tuple(s[2])) for n, s in shapes.items()})
    stream.synchronize()
    return LoadedEngine(engine, contexts, inputs, [n for n in names if n not in inputs],
                        {n: torch_dtype(engine.get_tensor_dtype(n)) for n in names},
                        {n for n in inputs if engine.is_shape_inference_io(n)}, ranges)


def check_signature(graph: str, loaded: LoadedEngine, spec) -> None:
    """The engine must have the manifest graph's outputs and (a subset of) its inputs, with the same dtypes."""
    declared = {t.name: TORCH_DTYPES[t.dtype] for t in (*spec.inputs, *spec.outputs)}
    problems = [n for n in loaded.inputs if n not in declared]
    problems += [t.name for t in spec.outputs if t.name not in loaded.outputs]
    problems += [f"{n} ({loaded.dtypes[n]} vs {declared[n]})" for n in (*loaded.inputs, *loaded.outputs)
                 if n in declared and loaded.dtypes[n] != declared[n]]
    if problems:
        raise ArtifactError(f"engine of graph {graph} does not match the manifest's signature ({', '.join(problems)}); "
                            "rebuild with trio-build")


class DecodeGraphs:
    """CUDA graphs of decode-step engine calls, keyed by (graph, context, every bound tensor address).

    The first call with a key runs normally (the warm-up TensorRT needs after shape changes); the second
    captures the execute_async_v3 call into a torch.cuda.CUDAGraph; later ones replay it. A key equal to the
    current addresses means the graph reads and writes exactly the current tensors, so replay is exact.
    """

    def __init__(self, stream: torch.cuda.Stream, limit: int = MAX_CAPTURED_GRAPHS):
        self.stream, self.limit = stream, limit
        self.graphs: OrderedDict[tuple, torch.cuda.CUDAGraph | None] = OrderedDict()  # None: warmed up only
        self.failed: set[str] = set()

    def run(self, graph: str, context, addresses: dict[str, int], enqueue) -> None:
        key = (graph, id(context), tuple(addresses.items()))
        if graph in self.failed or key not in self.graphs:
            enqueue()
            if graph not in self.failed:
                self._remember(key, None)
            return
        captured = self.graphs[key]
        if captured is None:
            captured = self._capture(graph, enqueue)
            if captured is None:  # capture failed: this graph runs without CUDA graphs from now on
                enqueue()
                return
        self._remember(key, captured)
        with torch.cuda.stream(self.stream):
            captured.replay()

    def _capture(self, graph: str, enqueue) -> torch.cuda.CUDAGraph | None:
        captured = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(captured, stream=self.stream, capture_error_mode="thread_local"):
                enqueue()
        except RuntimeError as error:
            self.failed.add(graph)
            warnings.warn(f"{graph}: CUDA graph capture failed ({error}); running it without CUDA graphs",
                          RuntimeWarning, stacklevel=4)
            return None
        return captured

    def _remember(self, key, captured) -> None:
        self.graphs[key] = captured
        self.graphs.move_to_end(key)
        while len(self.graphs) > self.limit:
            self.graphs.popitem(last=False)

    def clear(self) -> None:
        self.graphs.clear()


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, specs, engine_files: dict[str, Path], device: str = "cuda", *, cuda_graphs: bool = True):
        super().__init__(specs, device)
        if self.device.type != "cuda":
            raise BackendUnavailableError("the tensorrt backend runs on the GPU: pass --device cuda")
        trt = import_tensorrt()
        require_cuda("the tensorrt backend")
        if self.device.index is not None:
            torch.cuda.set_device(self.device.index)  # engines load onto, and run on, the current device
        self.stream = torch.cuda.Stream(self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # outlives the engines it deserialized
        self.engines = {name: load_engine(trt, self._runtime, path, self.stream) for name, path in engine_files.items()}
        for name, loaded in self.engines.items():
            check_signature(name, loaded, specs[name])
        self.cuda_graphs = cuda_graphs
        self.decode_graphs = DecodeGraphs(self.stream)
        self._reused: dict[tuple, torch.Tensor] = {}  # decode outputs and static decode inputs

    @staticmethod
    def check_export(directory, manifest, device: str = "cuda") -> None:
        """Whether this export's engines can run here: built (trio-build), on a GPU, by this TensorRT for this GPU."""
        section = manifest.tensorrt
        if not section:  # checked before importing tensorrt: the message holds on any machine
            check_engine_compatibility(section, {}, directory=directory)
        if not str(device).startswith("cuda"):
            raise BackendUnavailableError("the tensorrt backend runs on the GPU: pass --device cuda")
        trt = import_tensorrt()
        require_cuda("the tensorrt backend")
        index = torch.device(device).index or 0
        check_engine_compatibility(section, platform_info(trt.__version__, index), directory=directory)

    @classmethod
    def from_export(cls, directory, manifest, specs, device: str = "cuda", *, cuda_graphs: bool = True):
        directory = Path(directory)
        cls.check_export(directory, manifest, device)
        section = manifest.tensorrt
        files = {}
        for name in specs:
            entry = section["engines"].get(name)
            if entry is None or entry.get("file") not in manifest.files:
                raise ArtifactError(f"{directory}: no engine for graph {name} in the manifest; rebuild with "
                                    f"trio-build {directory}")
            files[name] = safe_member(directory, entry["file"])
        return cls(specs, files, device=device, cuda_graphs=cuda_graphs)

    # ---- one call -------------------------------------------------------------------------------------------
    def run_impl(self, graph, inputs):
        loaded = self.engines[graph]
        profile = select_profile(loaded.profile_ranges, {n: tuple(inputs[n].shape) for n in loaded.inputs})
        if profile is None:
            raise InputError(f"graph {graph}: input shapes {({n: tuple(inputs[n].shape) for n in loaded.inputs})} fit "
                             f"none of the engine's optimization profiles {loaded.profile_ranges}")
        context = loaded.contexts[profile]
        decode = loaded.has_decode_profile and profile == 0
        graphed = decode and self.cuda_graphs and not loaded.host_inputs
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # inputs were written on the caller's stream
        bound = self._bind_inputs(graph, loaded, context, inputs, static=graphed)
        outputs = self._bind_outputs(graph, loaded, context, bound, reuse=decode)
        addresses = {name: tensor.data_ptr() for name, tensor in {**bound, **outputs}.items()}

        def enqueue():
            for name, address in addresses.items():
                context.set_tensor_address(name, address)
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run graph {graph} (see its log above)")

        if graphed:
            self.decode_graphs.run(graph, context, addresses, enqueue)
        else:
            enqueue()
        caller.wait_stream(self.stream)  # outputs are read on the caller's stream
        return {t.name: outputs[t.name] for t in self.specs[graph].outputs}

    def _bind_inputs(self, graph, loaded, context, inputs, *, static: bool) -> dict[str, torch.Tensor]:
        bound = {}
        for name in loaded.inputs:
            value = inputs[name]
            if name in loaded.host_inputs:
                value = value.detach().cpu().contiguous()  # shape tensors live in host memory
            else:
                value = value.to(self.device, non_blocking=True).contiguous()  # no copy for CUDA tensors
                if static and value.nbytes <= STATIC_INPUT_BYTES:
                    value = self._static_copy(graph, name, value)
            if not context.set_input_shape(name, tuple(value.shape)):
                raise InputError(f"graph {graph}: TensorRT refused shape {tuple(value.shape)} for input {name}")
            bound[name] = value
        return bound

    def _static_copy(self, graph, name, value: torch.Tensor) -> torch.Tensor:
        """Small per-step inputs (token id, position, past length) get fixed addresses for CUDA graphs."""
        buffer = self._buffer(("static", graph, name), tuple(value.shape), value.dtype)
        with torch.cuda.stream(self.stream):
            buffer.copy_(value, non_blocking=True)
        return buffer

    def _bind_outputs(self, graph, loaded, context, bound, *, reuse: bool) -> dict[str, torch.Tensor]:
        """Fresh or reused output tensors; an output the graph writes in place into an input (a segment's
        kv_out: one scatter of the new KV slots into kv) gets the input's own address, so no cache is copied."""
        written = dict(self.specs[graph].in_place)
        outputs = {}
        for name in loaded.outputs:
            shape = tuple(context.get_tensor_shape(name))  # known once every input shape is set
            if any(d < 0 for d in shape):
                raise RuntimeError(f"graph {graph}: output {name} has a data-dependent shape {shape}")
            dtype = loaded.dtypes[name]
            if name in written:
                source = bound[written[name]]
                if tuple(source.shape) != shape or source.dtype != dtype:
                    raise RuntimeError(f"graph {graph}: in-place output {name} {shape} does not match input "
                                       f"{written[name]} {tuple(source.shape)}")
                outputs[name] = source
            elif reuse:
                outputs[name] = self._buffer(("out", graph, name), shape, dtype)
            else:  # prefill / vision / select: one call per request, the caller may keep the result
                outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return outputs

    def _buffer(self, key, shape, dtype) -> torch.Tensor:
        """A buffer reused across decode steps (stable addresses), reallocated only when its shape changes."""
        buffer = self._reused.get(key)
        if buffer is None or tuple(buffer.shape) != shape or buffer.dtype != dtype:
            buffer = torch.empty(shape, dtype=dtype, device=self.device)
            self._reused[key] = buffer
        return buffer

    def close(self):
        if hasattr(self, "decode_graphs"):
            self.stream.synchronize()
            self.decode_graphs.clear()  # captured graphs use the contexts' memory: drop them first
        for loaded in getattr(self, "engines", {}).values():
            loaded.contexts.clear()  # contexts before their engine
        self.engines, self._reused = {}, {}
