"""Roofline floors from a pipeline's analytic FLOPs and bytes (models/cost.py) and a device's peaks.

Peaks are either a datasheet's (projections, clearly labelled) or measured on the device in the same run
(benchmarks). fp32 FLOPs (select stages, see cost.fp32_prefill_flops) run on CUDA cores, the rest on fp16
tensor cores; decode reads the weights and the filled KV once per token.
"""

from __future__ import annotations

# Dense (no sparsity) datasheet peaks. Jetson AGX Orin 64GB: 204.8 GB/s LPDDR5; 170 sparse INT8 TOPS ->
# ~42.5 dense fp16 tensor TFLOPS; 2048 CUDA cores at 1.3 GHz -> ~5.3 fp32 TFLOPS. H100 SXM: 3.35 TB/s,
# 989 dense fp16 tensor TFLOPS, 67 fp32 TFLOPS.
DATASHEETS = {
    "jetson_agx_orin_64gb": {"bandwidth_gbs": 204.8, "fp16_tflops": 42.5, "fp32_tflops": 5.3},
    "h100_sxm": {"bandwidth_gbs": 3350.0, "fp16_tflops": 989.0, "fp32_tflops": 67.0},
}


def floors(prefill_flops: float, fp32_flops: float, bytes_per_token: float, peaks: dict, new_tokens: int) -> dict:
    """TTFT floor (compute), decode floor (bandwidth) and end-to-end floor for `new_tokens`, in ms."""
    fp32_ms = fp32_flops / (peaks["fp32_tflops"] * 1e12) * 1e3
    ttft = (prefill_flops - fp32_flops) / (peaks["fp16_tflops"] * 1e12) * 1e3 + fp32_ms
    decode = bytes_per_token / (peaks["bandwidth_gbs"] * 1e9) * 1e3
    return {"ttft_floor_ms": ttft, "fp32_share_of_ttft_floor": fp32_ms / ttft if ttft else 0.0,
            "decode_floor_ms": decode, "end_to_end_floor_ms": ttft + max(new_tokens - 1, 0) * decode}


# ---- Jetson Orin fit (weights + KV in shared memory; decode bound by memory bandwidth) --------------------
# Datasheet memory and bandwidth of each Jetson Orin module (LPDDR5, shared by CPU and GPU).
ORIN_MODULES = {
    "Orin Nano 8GB": {"memory_gb": 8, "bandwidth_gbs": 68.0},
    "Orin NX 16GB": {"memory_gb": 16, "bandwidth_gbs": 102.4},
    "AGX Orin 32GB": {"memory_gb": 32, "bandwidth_gbs": 204.8},
    "AGX Orin 64GB": {"memory_gb": 64, "bandwidth_gbs": 204.8},
}
# Kept free for the OS, the CUDA context and activations (an assumption, not a measurement).
ORIN_RESERVE_GB = 2.0
# Published reference: TensorRT Edge-LLM, Qwen3-VL-8B INT4 (AWQ) on AGX Orin, decode tokens/s.
EDGE_LLM_AGX_ORIN_TOKENS_S = 32.0


def orin_fit(weight_bytes: int, decode_weight_bytes: int, kv_bytes: int, kv_used_bytes: int) -> list[dict]:
    """One row per Orin module: does `weight_bytes` (every graph) + `kv_bytes` (the static KV buffers) fit in
    memory less ORIN_RESERVE_GB, and the decode tokens/s bandwidth bound when each step reads
    `decode_weight_bytes` (the segment graphs' weights) + `kv_used_bytes`."""
    rows = []
    for name, module in ORIN_MODULES.items():
        need = (weight_bytes + kv_bytes) / 1e9
        per_token = decode_weight_bytes + kv_used_bytes
        rows.append({"module": name, "memory_gb": module["memory_gb"], "needs_gb": need,
                     "fits": need <= module["memory_gb"] - ORIN_RESERVE_GB,
                     "decode_tokens_s_bound": module["bandwidth_gbs"] * 1e9 / per_token})
    return rows


def orin_fit_for_export(manifest, prompt_tokens: int | None = None, new_tokens: int = 64) -> list[dict]:
    """orin_fit from an export's manifest: its graph bytes, its plan's KV buffers at the export dtype, and the
    KV a typical request (image tokens + 64 text tokens, `new_tokens` generated) fills."""
    from ..artifact.dtypes import TORCH_DTYPES
    from ..artifact.graphs import GraphKind, TYPICAL_TEXT_TOKENS
    from .bench import kv_used_bytes

    plan = manifest.plan
    element = TORCH_DTYPES[manifest.model.dtype].itemsize
    prompt = prompt_tokens or plan.num_image_tokens + min(TYPICAL_TEXT_TOKENS, plan.max_text_tokens)
    segments = sum(g.bytes for g in manifest.graphs.values() if g.kind == GraphKind.SEGMENT)
    return orin_fit(manifest.weights["graph_bytes"], segments, plan.kv_bytes(element),
                    kv_used_bytes(plan, prompt, min(new_tokens, plan.max_new_tokens), element))


def format_orin_fit(rows: list[dict], weight_format: str) -> str:
    lines = [f"Jetson Orin fit ({weight_format}; {ORIN_RESERVE_GB:.0f} GB kept for OS/CUDA/activations; decode "
             f"bound = bandwidth / bytes per token; Edge-LLM Qwen3-VL-8B INT4 on AGX Orin: "
             f"{EDGE_LLM_AGX_ORIN_TOKENS_S:.0f} tok/s)"]
    for row in rows:
        lines.append(f"  {row['module']:<15} needs {row['needs_gb']:6.2f} GB  {'fits' if row['fits'] else 'NO':<4}  "
                     f"decode <= {row['decode_tokens_s_bound']:6.1f} tok/s")
    return "\n".join(lines)
