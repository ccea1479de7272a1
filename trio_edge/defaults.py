"""One table of defaults, shared by every command and the Python API (they must never disagree).

No schedule given means no pruning, everywhere: trio-export writes the unpruned graphs, trio-run and
trio-bench run the unpruned pipeline. Pass --keep-ratio 0.111 (or --cuts / --schedule-file) for TRIO.
"""

from __future__ import annotations

# ---- export shape maxima (the runtime refuses requests beyond them) ---------------------------------------
MAX_TEXT_TOKENS = 128  # longest prompt text around the image, in tokens
MAX_NEW_TOKENS = 64  # longest answer, in tokens

# ---- selection ----------------------------------------------------------------------------------------------
NMS_THRESHOLD = 0.8  # TRIO's feature-similarity threshold (cosine >= it suppresses)
NMS_ITERATIONS = 32  # Cluster-NMS steps unrolled in exported select graphs (host fallback beyond)
NMS_BLOCK = 256  # image tokens per block of the fixed-shape NMS (selection.py: why this size)
POSITIONS = "renumber"  # positions after a cut: renumbered 0..S'-1 as LLaVA's released code does
SELECT_PRECISION = "fp32"  # select stages in fp32: the kept set equals the fp32 reference exactly
METHOD = "trio"  # the selection rule of every cut

# ---- export -------------------------------------------------------------------------------------------------
DTYPE = "fp32"
TARGET = "tensorrt"  # --target: standard ONNX that TensorRT 10.3 (JetPack 6) and ONNX Runtime both run
OPSET = 18
BLOCK_SIZE = 32  # quantized weights: input channels per scale (--block-size)
QUANT_METHOD = "rtn"  # round-to-nearest (--quant-method); gptq needs --calibration-data
CALIBRATION_SAMPLES = 32  # requests a calibration-aware method records activations from

# ---- runtime ------------------------------------------------------------------------------------------------
EXPORT_BACKEND = "onnxruntime"  # an export directory runs its graphs here unless told otherwise
MODEL_BACKEND = "torch"  # a model (not an export) runs the PyTorch reference pipeline
DEVICE = "cpu"

# ---- trio-serve ---------------------------------------------------------------------------------------------
SERVE_HOST = "127.0.0.1"  # local clients only unless told otherwise
SERVE_PORT = 8000
SERVE_MAX_QUEUE = 16  # requests that may wait while one runs; more get 429 with Retry-After
SERVE_TIMEOUT = 120.0  # seconds from arrival to the last token (queue wait included)
SERVE_MAX_BODY_MB = 32.0  # a request body (images travel base64-encoded inside it)
SERVE_MAX_IMAGE_MB = 20.0  # one encoded image (OpenAI's own per-image limit)
SERVE_MAX_IMAGE_PIXELS = 50_000_000  # decoded pixels (the image is letterboxed to the export's small grid anyway)
SERVE_MAX_VIDEO_MB = 20.0  # one encoded video (it travels base64-encoded inside the request body: raise both)
SERVE_MAX_VIDEO_SECONDS = 600.0  # the longest clip a request may send (its frames are sampled uniformly anyway)
