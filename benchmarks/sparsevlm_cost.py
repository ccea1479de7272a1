"""Analytic prefill FLOPs and KV-cache bytes of SparseVLM vs unpruned (and TRIO at the same layer-averaged
budget) for 7B-shaped LLaVA models, from their real configs (no weights).

SparseVLM at the authors' budgets 64/128/192 (score.py v1.0 tables, cuts 3/7/16 scored by layers 2/6/15,
merged tokens counted), decoder + lm_head FLOPs from trio_edge.models.cost (multiply-add = 2 FLOPs, causal
attention), plus the rule's own FLOPs; KV bytes of the prompt in fp16. Also the authors' own per-layer count
(4nd^2 + 2n^2d + 3ndm, what their code logs as TFLOPs) for comparison with the paper's 54% FLOPs reduction.
The released code applies the same absolute table to LLaVA-NeXT's 2,880 tokens: the reduction there is larger.

python benchmarks/sparsevlm_cost.py --out benchmarks/results/sparsevlm_cost_7b.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def authors_flops(hidden: int, ffn: int, tokens_per_layer) -> float:
    """modelling_sparse_llama.py's count: 4 n d^2 + 2 n^2 d + 3 n d m per layer, n = tokens entering it."""
    return sum(4 * n * hidden ** 2 + 2 * n * n * hidden + 3 * n * hidden * ffn for n in tokens_per_layer)


def model_rows(alias: str, text_tokens: int) -> dict:
    from trio_edge.models.cost import DecoderShape, kv_bytes_by_layer_tokens, prefill_flops_by_layer_tokens
    from trio_edge.models.families import adapter_for
    from trio_edge.models.random_weights import architecture
    from trio_edge.trio import sparsevlm as sv
    from trio_edge.trio.schedule import Schedule

    config, _, processor = architecture(alias)
    adapter = adapter_for(config, processor)
    grid = adapter.default_grid()
    m, layers = adapter.image_token_count(grid), adapter.num_layers
    shape = DecoderShape.from_config(config.text_config)
    text = config.text_config

    def row(per_layer, extra=0.0, schedule=""):
        flops = prefill_flops_by_layer_tokens(shape, text_tokens, per_layer) + extra
        return {"schedule": schedule, "layer_averaged_image_tokens": sum(per_layer) / layers,
                "prefill_tflop": flops / 1e12, "rule_tflop": extra / 1e12,
                "kv_mb_fp16": kv_bytes_by_layer_tokens(shape, text_tokens, per_layer, 2) / 1e6,
                "authors_formula_tflop": authors_flops(text.hidden_size, text.intermediate_size,
                                                       [text_tokens + n for n in per_layer]) / 1e12}

    rows = {"full": row([m] * layers, schedule="none")}
    for budget in (64, 128, 192):
        schedule = sv.sparsevlm_schedule(num_layers=layers, num_image_tokens=m, budget=budget)
        per_layer = sv.image_tokens_per_layer(schedule.cuts, layers, m)
        extra = sv.selection_flops(schedule.cuts, m, text_tokens, text.hidden_size)
        cuts = ",".join(f"{c.layer}:{c.keep}" for c in schedule.cuts)
        afters = sv.image_tokens_after(schedule.cuts, m)
        merged = "/".join(str(after - c.keep) for c, after in zip(schedule.cuts, afters))
        rows[f"sparsevlm_{budget}"] = row(per_layer, extra, f"{cuts} (+ {merged} merged)")
        # TRIO at the same layer-averaged image tokens (its own cut layers), selection FLOPs left out
        ratio = rows[f"sparsevlm_{budget}"]["layer_averaged_image_tokens"] / m
        trio = adapter.schedule(grid, keep_ratio=ratio)
        rows[f"trio_at_sparsevlm_{budget}"] = row(Schedule.tokens_per_layer(trio, layers, m),
                                                  schedule=",".join(f"{c.layer}:{c.keep}" for c in trio.cuts))
    full = rows["full"]
    for name, values in rows.items():
        values["flops_vs_full"] = values["prefill_tflop"] / full["prefill_tflop"]
        values["flops_reduction"] = 1 - values["flops_vs_full"]
        values["authors_formula_reduction"] = 1 - values["authors_formula_tflop"] / full["authors_formula_tflop"]
        values["kv_vs_full"] = values["kv_mb_fp16"] / full["kv_mb_fp16"]
    return {"image_tokens": m, "layers": layers, "text_tokens": text_tokens, "rows": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aliases", default="llava-1.5-7b,llava-next-7b")
    parser.add_argument("--text-tokens", type=int, default=60)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    result = {"label": "analytic FLOPs / KV bytes (not a measurement)",
              "command": "python benchmarks/sparsevlm_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "paper": "SparseVLM reports 54% fewer FLOPs on LLaVA (arXiv 2410.04417)", "models": {}}
    for alias in args.aliases.split(","):
        result["models"][alias] = model_rows(alias, args.text_tokens)
        print(f"{alias}: {result['models'][alias]['image_tokens']} image tokens, {args.text_tokens} text tokens")
        print(f"  {'run':<24} {'avg img':>8} {'TFLOP':>7} {'FLOPs cut':>9} {'authors':>8} {'KV MB':>7} {'KV':>6}  cuts")
        for name, r in result["models"][alias]["rows"].items():
            print(f"  {name:<24} {r['layer_averaged_image_tokens']:8.1f} {r['prefill_tflop']:7.2f} "
                  f"{100 * r['flops_reduction']:8.1f}% {100 * r['authors_formula_reduction']:7.1f}% "
                  f"{r['kv_mb_fp16']:7.1f} {r['kv_vs_full']:6.3f}  {r['schedule']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({alias: {k: round(v["flops_reduction"], 4) for k, v in body["rows"].items()}
                      for alias, body in result["models"].items()}))
    return result


if __name__ == "__main__":
    main()
