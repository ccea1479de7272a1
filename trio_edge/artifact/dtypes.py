"""The one dtype table of the export/runtime contract: option names, tensor dtype names, torch and ONNX
Runtime types, and the tolerance every exported graph is validated to."""

from __future__ import annotations

import torch

from ..errors import InputError

# --dtype option -> the tensor dtype name recorded in the manifest and graph signatures
EXPORT_DTYPES = {"fp32": "float32", "fp16": "float16"}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}
# ONNX Runtime's IO-binding element types: ONNX TensorProto data type numbers (a string would go through numpy,
# where "float" means float64)
ORT_TYPES = {"float32": 1, "float16": 10, "bfloat16": 16, "int64": 7, "int32": 6, "bool": 9}
# (atol, rtol) of an exported graph against its PyTorch module, by the graph's float dtype
VALIDATION_TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (2e-2, 2e-2), "bfloat16": (5e-2, 5e-2)}


def export_dtype(option: str) -> str:
    """A --dtype value (fp32, fp16) as the tensor dtype name; InputError for anything else."""
    if option not in EXPORT_DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got {option!r}")
    return EXPORT_DTYPES[option]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 -> 'float16'."""
    return str(dtype).removeprefix("torch.")
