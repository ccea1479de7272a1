"""Weight formats of an export: the options, their validation, what the manifest records per graph, and
which backends can run each.

Unquantized exports store every weight in the export dtype. Quantized ones (int8, int4) store the language
model's linear layers (and, when asked, lm_head and the vision tower + projector) as signed integers with one
float scale per block of `block_size` input channels: a symmetric, blocked `DequantizeLinear` (opset 21, no
zero point) feeding each `MatMul`. TensorRT (10.0+) parses that form and ONNX Runtime fuses it into
`MatMulNBits` (CPU and CUDA), so one artifact serves both runtimes. Activations stay in the export dtype.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ArtifactError, InputError

WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
QUANTIZED_BITS = {"int8": 8, "int4": 4}
QUANT_METHODS = ("rtn", "gptq")  # round-to-nearest; GPTQ (ONNX Runtime's, calibration-aware)
CALIBRATED_METHODS = ("gptq",)
QDQ_OPSET = 21  # blocked DequantizeLinear and INT4 tensors need ai.onnx opset 21
DQ_FORM = "dq-blocked-k"  # DequantizeLinear(int [K, N], scale [K / block, N], axis 0) -> MatMul
# Backends that run a quantized export: ONNX Runtime fuses the form into MatMulNBits; TensorRT reads it
# (INT4 weight-only from 10.0). The torch backend rebuilds modules from the original checkpoint, whose
# weights are not the quantized ones.
QUANTIZED_BACKENDS = ("onnxruntime", "tensorrt")
# ONNX Runtime optimizers to switch off for quantized graphs: MatMulAddFusion (a basic-level rewrite) turns a
# MatMul whose output feeds an Add (attention o_proj and MLP down_proj, before the residual add) into a Gemm
# before the DequantizeLinear -> MatMulNBits fusion runs, so those weights would be dequantized on every call.
ORT_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


def ort_disabled_optimizers(kind: str, *, quantized: bool, dtype: str) -> tuple[str, ...]:
    """ONNX Runtime optimizers to switch off for one graph of an export.

    Quantized graphs: ORT_DISABLED_OPTIMIZERS. Select graphs of a non-fp32 export also skip ConstantFolding:
    their proxy layer and lm_head are the segments' fp16 / int weights read through Casts (and DQ) to fp32,
    which constant folding turns into a resident fp32 copy per select graph (1.3 GB each at 7B; 0.25 GiB
    each at hidden 1024, measured). Unfolded, each select call casts them on the fly, once per request."""
    disabled = ORT_DISABLED_OPTIMIZERS if quantized else ()
    if kind == "select" and dtype != "float32":
        disabled = (*disabled, "ConstantFolding")
    return disabled


@dataclass(frozen=True)
class Quantization:
    """How an export's weights were quantized (None in the manifest for unquantized exports)."""

    format: str  # int8 | int4
    block_size: int
    method: str  # rtn | gptq
    lm_head: bool  # lm_head quantized too
    vision: bool  # vision tower + projector quantized too
    calibration: dict | None = None  # data source and sample count of a calibration-aware method
    form: str = DQ_FORM
    # vision layers left in the export dtype because their input features do not split into whole blocks
    # (Qwen2.5-VL's MLP down projections: 3420 features); decoder layers never are (check_block_size)
    unquantized_vision: int = 0

    @property
    def bits(self) -> int:
        return QUANTIZED_BITS[self.format]

    def describe(self) -> str:
        parts = [f"{self.method}, block {self.block_size}"]
        if self.lm_head:
            parts.append("lm_head")
        if self.vision:
            parts.append(f"vision, {self.unquantized_vision} of its layers unquantized" if self.unquantized_vision
                         else "vision")
        return f"{self.format} ({', '.join(parts)})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict | None) -> "Quantization | None":
        if body is None:
            return None
        try:
            return cls(**{k: body[k] for k in ("format", "block_size", "method", "lm_head", "vision")},
                       calibration=body.get("calibration"), form=body.get("form", DQ_FORM),
                       unquantized_vision=int(body.get("unquantized_vision", 0)))
        except KeyError as missing:
            raise ArtifactError(f"manifest quantization entry lacks {missing}; re-export with trio-export") from None


def checked_quantization(weights: str | None, export_dtype: str, *, block_size: int, method: str,
                         lm_head: bool = False, vision: bool = False,
                         calibration_data: str | None = None) -> Quantization | None:
    """The --weights / --block-size / --quant-method options as a Quantization (None: unquantized), or an
    InputError naming the bad option. `export_dtype` is the --dtype option (fp32, fp16)."""
    if weights is None or weights == export_dtype:
        if method != "rtn" or calibration_data is not None or lm_head or vision:
            raise InputError("--quant-method, --calibration-data, --quantize-lm-head and --quantize-vision need "
                             "--weights int8 or int4")
        return None
    if weights not in WEIGHT_FORMATS:
        raise InputError(f"--weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    if weights not in QUANTIZED_BITS:
        raise InputError(f"--weights {weights} with --dtype {export_dtype}: unquantized weights are stored in the "
                         f"export dtype; pass --dtype {weights} instead")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16 or block_size & (block_size - 1):
        raise InputError(f"--block-size must be a power of two of at least 16 (ONNX Runtime's MatMulNBits), "
                         f"got {block_size!r}")
    if method not in QUANT_METHODS:
        raise InputError(f"--quant-method must be one of {', '.join(QUANT_METHODS)}, got {method!r}")
    if method in CALIBRATED_METHODS and weights != "int4":
        raise InputError(f"--quant-method {method} quantizes to int4 only (ONNX Runtime's implementation); "
                         "use --quant-method rtn for int8")
    if method in CALIBRATED_METHODS and not calibration_data:
        raise InputError(f"--quant-method {method} is calibration-aware and needs calibration images: pass "
                         "--calibration-data synthetic (the synthetic VQA generator) or a records folder")
    if method not in CALIBRATED_METHODS and calibration_data is not None:
        raise InputError(f"--calibration-data is only used by --quant-method {', '.join(CALIBRATED_METHODS)}")
    calibration = {"data": calibration_data} if calibration_data else None
    return Quantization(weights, block_size, method, lm_head, vision, calibration)


def check_block_size(in_features: dict[str, int], block_size: int) -> None:
    """Every quantized layer's input features must split into whole blocks (TensorRT infers the block size
    from the shapes); InputError naming the first layer that does not."""
    for name, features in in_features.items():
        if features % block_size:
            raise InputError(f"--block-size {block_size} does not divide the {features} input features of {name}; "
                             f"pick a block size that divides every quantized layer's input features")


def check_backend(quantization: Quantization | None, backend: str, directory) -> None:
    """A quantized export opened on a backend that cannot run it: one clear line."""
    if quantization is not None and backend not in QUANTIZED_BACKENDS:
        raise ArtifactError(f"{directory} holds {quantization.format} weights, which the {backend} backend cannot "
                            f"run (it rebuilds the model from the original checkpoint); use --backend "
                            f"{' or '.join(QUANTIZED_BACKENDS)}")
