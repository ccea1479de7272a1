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
