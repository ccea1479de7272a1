"""Analytic roofline PROJECTION (not a measurement) of full vs TRIO at 11.1% for a real architecture.

From the alias's real config alone (no weights): prefill FLOPs per stage and decode bytes per token from
`trio_edge.models.cost`, turned into floors with each device's datasheet peaks: TTFT floor = fp16 FLOPs /
fp16 tensor peak + fp32 FLOPs / fp32 peak (select stages: all in fp32 by default, only the NMS part with
--select-precision model; see README design notes); decode
floor = bytes per token / memory bandwidth. Floors ignore launch overhead and kernel efficiency: a real
pipeline is slower, and how much slower is what benchmarks/llava_next_7b.py measures on a GPU.

python benchmarks/roofline_projection.py --out benchmarks/results/roofline_projection_llava_next_7b.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Datasheet peaks (dense, no sparsity). Jetson AGX Orin 64GB: 204.8 GB/s LPDDR5; 170 sparse INT8 TOPS ->
# ~42.5 dense fp16 tensor TFLOPS; 2048 CUDA cores at 1.3 GHz -> ~5.3 fp32 TFLOPS. H100 SXM: 3.35 TB/s HBM3,
# 989 dense fp16 tensor TFLOPS, 67 fp32 TFLOPS.
DEVICES = {
    "jetson_agx_orin_64gb": {"bandwidth_gbs": 204.8, "fp16_tflops": 42.5, "fp32_tflops": 5.3},
    "h100_sxm": {"bandwidth_gbs": 3350.0, "fp16_tflops": 989.0, "fp32_tflops": 67.0},
}


def plans(alias: str, keep_ratio: float, text_tokens: int, new_tokens: int):
    from trio_edge.models.llava import adapter_for
    from trio_edge.models.random_weights import architecture
    from trio_edge.runtime.plan import make_plan
    from trio_edge.trio.schedule import Schedule

    config, _, processor = architecture(alias)
    adapter = adapter_for(config, processor)
    grid = adapter.default_grid()
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    out = {}
    for name, schedule in (("full", Schedule()), ("trio", adapter.schedule(grid, keep_ratio=keep_ratio))):
        out[name] = make_plan(num_layers=adapter.num_layers, num_image_tokens=adapter.image_token_count(grid),
                              schedule=schedule, max_text_tokens=max(text_tokens, 1), max_new_tokens=new_tokens,
                              hidden_size=text.hidden_size, num_kv_heads=text.num_key_value_heads,
                              head_dim=head_dim, vocab_size=text.vocab_size, grid=grid, nms_iterations=32)
    return config, adapter.tile_count(grid), out


def project(flops: dict, fp32_flops: float, bytes_per_token: float, device: dict, new_tokens: int) -> dict:
    """Floors on one device: `fp32_flops` of the prefill run on CUDA cores, the rest on fp16 tensor cores."""
    fp32_ms = fp32_flops / (device["fp32_tflops"] * 1e12) * 1e3
    ttft = (flops["prefill_total"] - fp32_flops) / (device["fp16_tflops"] * 1e12) * 1e3 + fp32_ms
    decode = bytes_per_token / (device["bandwidth_gbs"] * 1e9) * 1e3
    return {"ttft_floor_ms": ttft, "fp32_share_of_ttft_floor": fp32_ms / ttft, "decode_floor_ms": decode,
            "end_to_end_floor_ms": ttft + (new_tokens - 1) * decode}


def fp32_select_flops(config, plan, text_tokens: int, precision: str) -> float:
    """Select FLOPs that run in fp32: all of them with fp32 selection, only the NMS part with `model`."""
    from trio_edge.models.cost import DecoderShape, select_flops_parts

    shape = DecoderShape.from_config(config.text_config)
    parts = [select_flops_parts(shape, text_tokens + s.tokens_in, s.tokens_in, plan.nms_iterations) for s in plan.selects]
    return sum(p["nms"] + (p["proxy"] if precision == "fp32" else 0.0) for p in parts)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alias", default="llava-next-7b")
    parser.add_argument("--keep-ratio", type=float, default=0.111)
    parser.add_argument("--text-tokens", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from trio_edge.models.cost import decode_bytes_per_token, stage_flops

    config, tiles, by_name = plans(args.alias, args.keep_ratio, args.text_tokens, args.new_tokens)
    by_name = {"full": by_name["full"], "trio": by_name["trio"], "trio_model_precision": by_name["trio"]}
    result = {"label": "PROJECTION from datasheet peaks and analytic FLOPs/bytes; not a measurement",
              "command": "python benchmarks/roofline_projection.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "alias": args.alias, "devices": DEVICES, "runs": {}}
    for name, plan in by_name.items():
        prompt = plan.num_image_tokens + args.text_tokens
        flops = stage_flops(config, plan, prompt, tiles)
        per_token = decode_bytes_per_token(config, plan, 2, prompt)  # fp16 weights and KV
        fp32 = fp32_select_flops(config, plan, args.text_tokens, "model" if name.endswith("model_precision") else "fp32")
        result["runs"][name] = {
            "schedule": ",".join(f"{c.layer}:{c.keep}" for c in plan.schedule.cuts) or "none",
            "prefill_tflop": flops["prefill_total"] / 1e12,
            "select_tflop": sum(flops[s.name] for s in plan.selects) / 1e12, "fp32_tflop": fp32 / 1e12,
            "decode_gb_per_token": per_token / 1e9,
            "devices": {dev: project(flops, fp32, per_token, peaks, args.new_tokens) for dev, peaks in DEVICES.items()}}
    full = result["runs"]["full"]["devices"]
    result["ratios"] = {name: {dev: {"ttft_floor": full[dev]["ttft_floor_ms"] / run["devices"][dev]["ttft_floor_ms"],
                                     "end_to_end_floor": full[dev]["end_to_end_floor_ms"]
                                     / run["devices"][dev]["end_to_end_floor_ms"]} for dev in DEVICES}
                        for name, run in result["runs"].items() if name != "full"}
    for name, run in result["runs"].items():
        for dev, floors in run["devices"].items():
            print(f"{name:<21} {dev:<21} TTFT floor {floors['ttft_floor_ms']:7.1f} ms "
                  f"(fp32 {100 * floors['fp32_share_of_ttft_floor']:4.1f}%)  decode floor {floors['decode_floor_ms']:6.2f} "
                  f"ms/token  64-token floor {floors['end_to_end_floor_ms']:7.1f} ms")
    print(json.dumps(result["ratios"]))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
