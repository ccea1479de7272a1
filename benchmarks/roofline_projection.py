"""Analytic roofline PROJECTION (not a measurement) of full vs TRIO at 11.1% for a real architecture.

From the alias's real config alone (no weights): prefill FLOPs per stage and decode bytes per token from
`trio_edge.models.cost`, turned into floors (`trio_edge.runtime.roofline`) with each device's datasheet
peaks: TTFT floor = fp16 FLOPs /
fp16 tensor peak + fp32 FLOPs / fp32 peak (select stages: all in fp32 by default, only the NMS part with
--select-precision model; see docs/design.md); decode
floor = bytes per token / memory bandwidth. Floors ignore launch overhead and kernel efficiency: a real
pipeline is slower, and how much slower is what benchmarks/llava_next_7b.py measures on a GPU.

Also the select stages' projected share of TRIO's TTFT floor (their FLOPs at their precision's peak over the
whole floor) at the real size, and, for comparison with the measured CPU benchmark, their share of the prefill
FLOPs at the scaled-down wide CPU shape (hidden 1024, 4 layers, 2 vision layers; fp32 everywhere on a CPU, so
the FLOP share is the floor's share).

python benchmarks/roofline_projection.py --out benchmarks/results/roofline_projection_llava_next_7b.json
"""

from __future__ import annotations

import argparse
import json
import sys


def plans(alias: str, keep_ratio: float, text_tokens: int, new_tokens: int, **scaled):
    from trio_edge.artifact.plan import make_plan
    from trio_edge.models.families import adapter_for
    from trio_edge.models.random_weights import architecture
    from trio_edge.trio.schedule import Schedule

    config, _, processor = architecture(alias, **scaled)
    adapter = adapter_for(config, processor)
    grid = adapter.default_grid()
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    out = {}
    schedules = {"full": Schedule(), "trio": adapter.schedule(grid, keep_ratio=keep_ratio),
                 "trio_model_precision": adapter.schedule(grid, keep_ratio=keep_ratio, precision="model")}
    for name, schedule in schedules.items():
        out[name] = make_plan(num_layers=adapter.num_layers, num_image_tokens=adapter.image_token_count(grid),
                              schedule=schedule, max_text_tokens=max(text_tokens, 1), max_new_tokens=new_tokens,
                              hidden_size=text.hidden_size, num_kv_heads=text.num_key_value_heads,
                              head_dim=head_dim, vocab_size=text.vocab_size, grid=grid, nms_iterations=32)
    return config, adapter.tile_count(grid), out


def select_share(prefill_flops: float, select_flops: float, fp32_flops: float, peaks: dict) -> float:
    """The select stages' part of the TTFT floor: their fp32 FLOPs (all of them with fp32 selection, the NMS only
    with model precision) at the fp32 peak, the rest at the fp16 tensor peak."""
    fp32_ms = fp32_flops / peaks["fp32_tflops"]
    select_ms = fp32_ms + (select_flops - fp32_flops) / peaks["fp16_tflops"]
    return select_ms / ((prefill_flops - fp32_flops) / peaks["fp16_tflops"] + fp32_ms)


def cpu_wide_share(alias: str, keep_ratio: float, text_tokens: int, new_tokens: int) -> dict:
    """The select stages' share of TRIO's prefill FLOPs at the wide CPU benchmark's shape (docs/results.md)."""
    from trio_edge.models.cost import stage_flops

    shape = {"scale": 0.25, "layers": 4, "vision_layers": 2}
    config, tiles, by_name = plans(alias, keep_ratio, text_tokens, new_tokens, **shape)
    plan = by_name["trio"]
    flops = stage_flops(config, plan, plan.num_image_tokens + text_tokens, tiles)
    select = sum(flops[s.name] for s in plan.selects)
    return {**shape, "hidden": config.text_config.hidden_size,
            "schedule": ",".join(f"{c.layer}:{c.keep}" for c in plan.schedule.cuts),
            "prefill_tflop": flops["prefill_total"] / 1e12, "select_tflop": select / 1e12,
            "select_share_of_prefill_flops": select / flops["prefill_total"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alias", default="llava-next-7b")
    parser.add_argument("--keep-ratio", type=float, default=0.111)
    parser.add_argument("--text-tokens", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from trio_edge.models.cost import decode_bytes_per_token, fp32_prefill_flops, stage_flops
    from trio_edge.runtime import bench
    from trio_edge.runtime.roofline import DATASHEETS, floors

    config, tiles, by_name = plans(args.alias, args.keep_ratio, args.text_tokens, args.new_tokens)
    result = {"label": "PROJECTION from datasheet peaks and analytic FLOPs/bytes; not a measurement",
              "command": "python benchmarks/roofline_projection.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "alias": args.alias, "devices": DATASHEETS, "runs": {}}
    for name, plan in by_name.items():
        prompt = plan.num_image_tokens + args.text_tokens
        flops = stage_flops(config, plan, prompt, tiles)
        per_token = decode_bytes_per_token(config, plan, 2, prompt)  # fp16 weights and KV
        fp32 = fp32_prefill_flops(config, plan, args.text_tokens)
        select_flops = sum(flops[s.name] for s in plan.selects)
        result["runs"][name] = {
            "schedule": ",".join(f"{c.layer}:{c.keep}" for c in plan.schedule.cuts) or "none",
            "prefill_tflop": flops["prefill_total"] / 1e12,
            "select_tflop": select_flops / 1e12, "fp32_tflop": fp32 / 1e12,
            "decode_gb_per_token": per_token / 1e9,
            "select_share_of_prefill_flops": select_flops / flops["prefill_total"],
            "devices": {dev: {**floors(flops["prefill_total"], fp32, per_token, peaks, args.new_tokens),
                              "select_share_of_ttft_floor": select_share(flops["prefill_total"], select_flops, fp32,
                                                                         peaks)}
                        for dev, peaks in DATASHEETS.items()}}
    full = result["runs"]["full"]["devices"]
    result["ratios"] = {name: {dev: {"ttft_floor": full[dev]["ttft_floor_ms"] / run["devices"][dev]["ttft_floor_ms"],
                                     "end_to_end_floor": full[dev]["end_to_end_floor_ms"]
                                     / run["devices"][dev]["end_to_end_floor_ms"]} for dev in DATASHEETS}
                        for name, run in result["runs"].items() if name != "full"}
    result["cpu_wide_shape"] = cpu_wide_share(args.alias, args.keep_ratio, args.text_tokens, args.new_tokens)
    for name, run in result["runs"].items():
        for dev, f in run["devices"].items():
            print(f"{name:<21} {dev:<21} TTFT floor {f['ttft_floor_ms']:7.1f} ms "
                  f"(fp32 {100 * f['fp32_share_of_ttft_floor']:4.1f}%, select stages "
                  f"{100 * f['select_share_of_ttft_floor']:4.1f}%)  decode floor {f['decode_floor_ms']:6.2f} "
                  f"ms/token  64-token floor {f['end_to_end_floor_ms']:7.1f} ms")
    wide = result["cpu_wide_shape"]
    share = result["runs"]["trio"]["select_share_of_prefill_flops"]
    print(f"select stages' share of TRIO's prefill FLOPs: {100 * share:.1f}% "
          f"at the real size, {100 * wide['select_share_of_prefill_flops']:.1f}% at the CPU wide shape "
          f"(hidden {wide['hidden']}, {wide['layers']} layers, cuts {wide['schedule']})")
    print(json.dumps(result["ratios"]))
    bench.write_results(args.out, result)
    return result


if __name__ == "__main__":
    main()
