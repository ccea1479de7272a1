"""Weight-only quantization of an export (--weights int8 / int4) and weight sharing between graphs.

Two steps around the ordinary export:

1. Before tracing, `quantize_model` quantizes every selected linear weight W (N, K) with ONNX Runtime's block
   quantizer kernels (the C++ routines its MatMulNBitsQuantizer calls; or GPTQ, see `gptq.py`) and writes the
   dequantized values back into the model in place. The PyTorch modules then compute exactly what the
   quantized graphs compute, so every graph is still validated against its own module.
2. After each graph is exported, `GraphWeightWriter.rewrite` finds those weights among the graph's
   initializers by content (W, its transpose, or an fp32 copy of either: segments, select graphs and the
   vision graph name and lay them out differently), recovers the integer codes exactly (code = W / scale),
   and replaces each by `DequantizeLinear(int codes [K, N], scales [K / block, N], axis 0, block_size)`
   feeding the consumer: symmetric, no zero point, opset 21, the form TensorRT 10 parses and ONNX Runtime
   fuses into MatMulNBits. The first graph holding a weight stores its codes and scales in its own data file;
   every later graph (a select graph's proxy layer and lm_head) points into that file, so a weight is
   stored once on disk. Unquantized exports with `--select-precision model` share their select graphs'
   weights the same way.

Memory stays near one copy of the model: codes are never held for the whole model, nor for a whole graph: each
weight's codes are recovered from the graph's own initializer (a band of blocks at a time) and written straight
to the graph's new data file (`StagedData`); only the per-block scales are kept for the whole model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from ..artifact.weights import DQ_FORM, QDQ_OPSET, Quantization
from ..errors import ExportError

ONNX_INT = {4: TensorProto.INT4, 8: TensorProto.INT8}
SAMPLE_ROWS = 8  # rows sampled into a weight's content key (then the whole tensor is compared)
SAMPLE_COLUMNS = 64
CODE_BAND_VALUES = 1 << 22  # weight values per band when codes are recovered (16 MB of float32 temporaries)


# ---- step 1: quantize the model's weights in place ------------------------------------------------------
@dataclass
class QuantizedWeight:
    """One weight of the table: its model name, the live parameter (holding the dequantized values), and its
    per-block scales (K / block, N) in the export dtype."""

    name: str
    parameter: torch.Tensor  # (N, K), export dtype (dequantized values when quantized)
    scales: np.ndarray | None  # (K / block, N); None: an unquantized weight that is only shared
    bits: int = 0
    block_size: int = 0


def rtn_codes(weight_kn: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric round-to-nearest codes (K, N) int8 and scales (K / block, N) float32 of W^T (K, N) float32,
    with ONNX Runtime's block quantizer kernels (the values its MatMulNBitsQuantizer writes)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_8bits, quantize_qdq_matmul_4bits

    k, n = weight_kn.shape
    blocks = k // block_size
    weight_kn = np.ascontiguousarray(weight_kn, dtype=np.float32)
    if bits == 4:
        packed = np.zeros((k * n + 1) // 2, np.uint8)
        scales = np.zeros((blocks, n), np.float32)
        quantize_qdq_matmul_4bits(packed, weight_kn, scales, np.zeros((n * blocks + 1) // 2, np.uint8),
                                  block_size, n, k, True)
        return unpack_int4(packed, k * n).reshape(k, n), scales
    packed = np.zeros((n, blocks, block_size), np.uint8)  # MatMulNBits layout: symmetric codes + 128
    scales = np.zeros((n, blocks), np.float32)
    quantize_matmul_8bits(packed, weight_kn, scales, np.zeros((n, (blocks + 1) // 2), np.uint8),
                          block_size, n, k, True)
    codes = (packed.reshape(n, k).astype(np.int16) - 128).astype(np.int8)
    return np.ascontiguousarray(codes.T), np.ascontiguousarray(scales.T)


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """ONNX INT4 bytes (low nibble first) -> int8 values."""
    values = np.empty(packed.size * 2, np.int8)
    values[0::2], values[1::2] = packed & 0x0F, packed >> 4
    return np.where(values >= 8, values - 16, values)[:count].astype(np.int8)


def pack_int4(codes: np.ndarray) -> bytes:
    """int8 values in [-8, 7] -> ONNX INT4 bytes (low nibble first, padded to whole bytes)."""
    flat = codes.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def dequantized(codes_kn: np.ndarray, scales: np.ndarray, block_size: int, dtype: torch.dtype) -> torch.Tensor:
    """W (N, K) in `dtype` = codes x scale, rounded once to `dtype` (what DequantizeLinear outputs)."""
    expanded = np.repeat(scales.astype(np.float32), block_size, axis=0)
    return torch.from_numpy(codes_kn.astype(np.float32) * expanded).T.to(dtype)


@torch.no_grad()
def quantize_model(linears: dict[str, torch.nn.Linear], quantization: Quantization,
                   codes_for=None) -> "WeightTable":
    """Quantize each linear's weight in place (its values become the dequantized ones) and return the table
    the graph rewrite looks weights up in. `codes_for(name, weight)` supplies (codes (K, N), scales) from a
    calibration-aware method; None means round-to-nearest."""
    table = WeightTable()
    for name, linear in linears.items():
        weight = linear.weight
        if codes_for is not None:
            codes, scales = codes_for(name, weight)
        else:
            codes, scales = rtn_codes(weight.detach().float().T.numpy(), quantization.bits, quantization.block_size)
        scales = scales.astype(np.float16 if weight.dtype == torch.float16 else np.float32)
        weight.copy_(dequantized(codes, scales, quantization.block_size, weight.dtype))
        table.add(QuantizedWeight(f"{name}.weight", weight, scales, quantization.bits, quantization.block_size))
    return table


def shared_weights(linears: dict[str, torch.nn.Linear]) -> "WeightTable":
    """The table of an unquantized export whose select graphs share the segments' weights."""
    table = WeightTable()
    for name, linear in linears.items():
        table.add(QuantizedWeight(f"{name}.weight", linear.weight, None))
    return table


# ---- content lookup ---------------------------------------------------------------------------------------
def content_key(array: np.ndarray) -> tuple:
    """Shape plus a digest of a few sampled rows: cheap, and a match is then confirmed on the whole tensor."""
    rows = np.unique(np.linspace(0, array.shape[0] - 1, SAMPLE_ROWS).astype(np.int64))
    sample = np.ascontiguousarray(array[rows][:, :SAMPLE_COLUMNS])
    return tuple(array.shape), hashlib.sha1(sample.tobytes()).hexdigest()


class WeightTable:
    """Weights to store once, found by content in any graph: quantized ones, or (unquantized exports) the
    weights a select graph shares with a segment."""

    def __init__(self):
        self.entries: dict[tuple, tuple[QuantizedWeight, bool]] = {}  # key -> (weight, stored transposed?)

    def add(self, weight: QuantizedWeight) -> None:
        values = weight.parameter.detach().numpy()  # (N, K)
        self.entries[content_key(values)] = (weight, False)
        self.entries[content_key(values.T)] = (weight, True)

    def find(self, array: np.ndarray) -> tuple[QuantizedWeight, bool] | None:
        """(weight, transposed) when `array` holds W (N, K) or W^T (K, N), in the export dtype or as an fp32
        copy of it; None otherwise."""
        if array.ndim != 2 or array.dtype not in (np.float16, np.float32) or not self.entries:
            return None
        for candidate in _export_dtype_views(array, next(iter(self.entries.values()))[0].parameter.dtype):
            found = self.entries.get(content_key(candidate))
            if found is not None:
                weight, transposed = found
                reference = weight.parameter.detach().numpy()
                if np.array_equal(candidate, reference.T if transposed else reference):
                    return weight, transposed
        return None

    def extend(self, other: "WeightTable") -> None:
        self.entries.update(other.entries)

    def __len__(self) -> int:
        return len(self.entries) // 2


def _export_dtype_views(array: np.ndarray, dtype: torch.dtype):
    yield array
    if dtype == torch.float16 and array.dtype == np.float32:  # an fp32 copy (fp32 selection) of an fp16 weight
        as_half = array.astype(np.float16)
        if np.array_equal(as_half.astype(np.float32), array):
            yield as_half


# ---- step 2: rewrite each exported graph ----------------------------------------------------------------
class GraphWeightWriter:
    """Rewrites exported graphs so table weights are stored once: quantized weights become DequantizeLinear of
    shared codes and scales; unquantized ones (select graphs in the model precision) become references into
    the data file of the first graph that held them."""

    def __init__(self, table: WeightTable, quantization: Quantization | None, export_dtype: str):
        self.table, self.quantization, self.export_dtype = table, quantization, export_dtype
        self.stored: dict[str, tuple[TensorProto, ...]] = {}  # weight name -> external references
        self.stored_transposed: dict[str, bool] = {}  # unquantized sharing: does the stored tensor hold W^T?

    def rewrite(self, path: Path) -> dict:
        """Rewrite `path` (and its external data) in place when it holds table weights; returns the graph's
        manifest weight record."""
        model = onnx.load(str(path), load_external_data=False)
        graph, base = model.graph, path.parent
        staged = StagedData(path.with_name(path.name + ".data.tmp"), final_name=path.name + ".data")
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in set(node.input):
                consumers.setdefault(name, []).append(node)
        inserted: dict[int, list[onnx.NodeProto]] = {}  # id of a consumer -> nodes that must run before it
        initializers: dict[str, TensorProto] = {}
        first_here: dict[str, tuple[TensorProto, ...]] = {}  # quantized weights this graph stores first
        floats_here: dict[str, str] = {}  # unquantized weights this graph holds first -> tensor name
        quantized = shared = 0
        for tensor in graph.initializer:
            array = numpy_helper.to_array(tensor, str(base)) if _is_candidate(tensor) else None
            found = self.table.find(array) if array is not None else None
            if found is None or (found[0].scales is None and found[0].name not in self.stored):
                if found is not None and found[0].name not in floats_here:  # later graphs point at these bytes
                    floats_here[found[0].name] = tensor.name
                    self.stored_transposed[found[0].name] = found[1]
                initializers[tensor.name] = tensor
                continue
            weight, transposed = found
            if weight.scales is None:
                source, source_transposed = weight.name, self.stored_transposed[weight.name]
            else:
                self._codes_once(weight, array, transposed, first_here, staged)
                source, source_transposed = None, True
                quantized += 1
            shared += weight.name in self.stored
            for t in self.stored.get(weight.name) or first_here[weight.name]:
                initializers.setdefault(t.name, t)
            for node in consumers.get(tensor.name, []):
                nodes = self._adapt(node, tensor, source, source_transposed, transposed, weight, len(inserted))
                inserted.setdefault(id(node), []).extend(nodes)
        if quantized or shared:
            if quantized:
                _set_opset(model, QDQ_OPSET)
            del graph.initializer[:]
            for tensor in initializers.values():  # one tensor's bytes in memory at a time
                graph.initializer.add().CopyFrom(staged.own(tensor, base))
            nodes = [n for node in graph.node for n in (*inserted.get(id(node), []), node)]
            del graph.node[:]
            graph.node.extend(nodes)
            staged.commit(model, path)
        else:
            staged.discard()
        if first_here or floats_here:  # where this graph stored them (after any rewrite): later graphs point there
            saved = {t.name: t for t in onnx.load(str(path), load_external_data=False).graph.initializer}
            for name, tensors in first_here.items():
                self.stored[name] = tuple(_copy(saved[t.name]) for t in tensors)
            for name, tensor_name in floats_here.items():
                self.stored[name] = (_external_reference(saved[tensor_name], name),)
        record = {"format": self.export_dtype, "shared_tensors": shared}
        if quantized:
            q = self.quantization
            record = {"format": q.format, "form": DQ_FORM, "bits": q.bits, "block_size": q.block_size,
                      "method": q.method, "quantized_tensors": quantized, "shared_tensors": shared}
        return record

    def _codes_once(self, weight: QuantizedWeight, array: np.ndarray, transposed: bool, first_here: dict,
                    staged: "StagedData") -> None:
        """Codes and scales of a quantized weight, made from the graph's own values the first time it is met and
        written straight to the graph's new data file (a graph's codes are never all in memory)."""
        if weight.name in self.stored or weight.name in first_here:
            return
        codes = recover_codes(array if transposed else array.T, weight.scales, weight.block_size, weight.bits)
        if weight.bits == 4:
            codes_tensor = staged.tensor(f"{weight.name}.int4", TensorProto.INT4, codes.shape, pack_int4(codes))
        else:
            codes_tensor = staged.tensor(f"{weight.name}.int8", TensorProto.INT8, codes.shape, codes.tobytes())
        del codes
        scales = np.ascontiguousarray(weight.scales)
        scale_tensor = staged.tensor(f"{weight.name}.scale", helper.np_dtype_to_tensor_dtype(scales.dtype),
                                     scales.shape, scales.tobytes())
        first_here[weight.name] = (codes_tensor, scale_tensor)

    def _adapt(self, node, tensor, source, source_transposed, wanted_transposed, weight, serial) -> list:
        """Nodes that turn the stored form into what `node` read before (W or W^T, in the tensor's dtype).
        Quantized: one DequantizeLinear per consumer, so ONNX Runtime can fuse each into its MatMul."""
        prefix = f"{weight.name}.use{serial}"
        nodes = []
        if source is None:  # quantized: DequantizeLinear yields W^T (K, N) in the export dtype
            source = f"{prefix}.dq"
            nodes.append(helper.make_node("DequantizeLinear", [f"{weight.name}.int{weight.bits}", f"{weight.name}.scale"],
                                          [source], name=f"{source}.node", axis=0, block_size=weight.block_size))
        if node.op_type == "Gemm" and not wanted_transposed and source_transposed and _gemm_is_plain(node, tensor.name):
            node.op_type = "MatMul"  # Gemm(x, W, transB=1) == MatMul(x, W^T): the weight feeds the MatMul directly
            del node.attribute[:]
            wanted_transposed = True
        if wanted_transposed != source_transposed:
            nodes.append(helper.make_node("Transpose", [source], [f"{prefix}.t"], name=f"{prefix}.t.node", perm=[1, 0]))
            source = f"{prefix}.t"
        if tensor.data_type != _onnx_float(weight.parameter.dtype):  # an fp32 copy for fp32 selection
            nodes.append(helper.make_node("Cast", [source], [f"{prefix}.cast"], name=f"{prefix}.cast.node",
                                          to=tensor.data_type))
            source = f"{prefix}.cast"
        for i, name in enumerate(node.input):
            if name == tensor.name:
                node.input[i] = source
        return nodes


class StagedData:
    """A rewritten graph's new data file, written one tensor at a time: `tensor` appends bytes and returns an
    external reference under the file's final name; `commit` saves the graph and swaps both files in. Tensors of
    1 KiB or less stay inline (as onnx.save_model's size_threshold leaves them)."""

    INLINE_BYTES = 1024

    def __init__(self, path: Path, final_name: str):
        self.path, self.final_name, self.file = path, final_name, None
        self.written: list[TensorProto] = []  # references into the new file (kept alive: matched by identity)

    def tensor(self, name: str, data_type: int, dims, raw: bytes) -> TensorProto:
        tensor = TensorProto()
        tensor.name, tensor.data_type = name, data_type
        tensor.dims.extend(int(d) for d in dims)
        if len(raw) <= self.INLINE_BYTES:
            tensor.raw_data = raw
            return tensor
        if self.file is None:
            self.file = open(self.path, "wb")
        offset = self.file.tell()
        self.file.write(raw)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.final_name), ("offset", offset), ("length", len(raw))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        self.written.append(tensor)
        return tensor

    def own(self, tensor: TensorProto, base: Path) -> TensorProto:
        """`tensor` as the rewritten graph stores it: its bytes moved to the new file when they live in the
        graph's current data file (about to be replaced); references into other graphs' files and tensors
        already written here stay as they are."""
        if not external_data_helper.uses_external_data(tensor):
            return tensor
        location = next(e.value for e in tensor.external_data if e.key == "location")
        if location != self.final_name or any(tensor is written for written in self.written):
            return tensor
        loaded = _copy(tensor)
        external_data_helper.load_external_data_for_tensor(loaded, str(base))
        return self.tensor(tensor.name, tensor.data_type, tensor.dims, loaded.raw_data)

    def commit(self, model, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        onnx.save_model(model, str(tmp))
        data = path.with_name(self.final_name)
        if self.file is not None:
            self.file.close()
            self.path.replace(data)
        else:
            data.unlink(missing_ok=True)
        tmp.replace(path)

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
            self.path.unlink(missing_ok=True)


def recover_codes(values_kn: np.ndarray, scales: np.ndarray, block_size: int, bits: int) -> np.ndarray:
    """The integer codes of dequantized values (K, N) (any float dtype, any layout): exact, because each value
    is code x scale rounded once to the export dtype (relative error <= 2^-11 in fp16, far below half a code
    step for |code| <= 128). Worked out a band of blocks at a time, so the float temporaries stay small next to
    a 7B layer's weight."""
    k, n = values_kn.shape
    codes = np.empty((k, n), np.int8)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    band = block_size * max(1, CODE_BAND_VALUES // (block_size * n))
    for start in range(0, k, band):
        values = values_kn[start:start + band].astype(np.float32)
        expanded = np.repeat(scales[start // block_size:(start + band) // block_size].astype(np.float32),
                             block_size, axis=0)[:values.shape[0]]
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(expanded == 0, np.float32(0), np.rint(values / expanded))
        if part.size and (part.min() < low or part.max() > high):
            raise ExportError("a quantized weight's values are not codes x scale (was the model changed during "
                              "the export?); re-run trio-export")
        codes[start:start + band] = part
    return codes


def _is_candidate(tensor: TensorProto) -> bool:
    return len(tensor.dims) == 2 and tensor.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and min(tensor.dims) > 1


def _external_reference(tensor: TensorProto, name: str) -> TensorProto:
    """A reference to an unquantized weight in the data file of the graph that holds it, named `name` (a tensor
    under 1 KiB is stored inline, and simply copied)."""
    reference = _copy(tensor)
    reference.name = name
    return reference


def _copy(tensor: TensorProto) -> TensorProto:
    copy = TensorProto()
    copy.CopyFrom(tensor)
    return copy


def _set_opset(model, version: int) -> None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < version:
            entry.version = version
    model.ir_version = max(model.ir_version, 10)


def _gemm_is_plain(node, weight: str) -> bool:
    """Gemm(x, W, transB=1) with no bias, scaling or transposed x: the form nn.Linear exports to."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (len(node.input) == 2 and node.input[1] == weight and attrs.get("transB", 0) == 1
            and attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0)


def _onnx_float(dtype: torch.dtype) -> int:
    return TensorProto.FLOAT16 if dtype == torch.float16 else TensorProto.FLOAT
