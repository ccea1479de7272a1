"""trio-export MODEL -o DIR: split a VLM (LLaVA-NeXT, LLaVA-1.5, Qwen2.5-VL, Qwen3-VL) into ONNX graphs with token
selection inside.

MODEL is an alias (llava-next-7b, llava-next-mistral-7b, llava-1.5-7b, qwen2.5-vl-3b, qwen2.5-vl-7b, qwen3-vl-2b,
qwen3-vl-4b, qwen3-vl-8b; trio-tiny, trio-tiny-qwen, trio-tiny-qwen3 shipped; tiny-random, tiny-random-qwen,
tiny-random-qwen3 built in code), a Hugging Face id, or a local save_pretrained directory. Writes vision, embed,
one segment graph per layer group (prefill and decode alike, static KV buffer) and one select graph per cut,
validates every graph against its PyTorch module in ONNX Runtime, and writes manifest.json with sha256 of every file.
Without --cuts / --keep-ratio / --schedule-file nothing is pruned (the unpruned graphs). With --images N a
request takes N images (the vision graph runs once per image) and the cuts' budgets count all of their image
tokens; with --video-frames F (Qwen families) a request takes one video, F frames sampled uniformly.
"""

from __future__ import annotations

import argparse

from .. import defaults
from .common import (
    CliParser,
    add_quiet_option,
    add_schedule_options,
    add_visual_options,
    cli_entry,
    schedule_options,
)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="trio-export", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="alias, Hugging Face id or local directory")
    parser.add_argument("-o", "--output", required=True, help="export directory (written atomically)")
    add_schedule_options(parser)
    parser.add_argument("--grid", help="fixed image size WIDTHxHEIGHT: LLaVA-NeXT one of its grid pinpoints (default "
                                       "the largest square one); Qwen2.5-VL sides in multiples of 112 px (default "
                                       "672x672), Qwen3-VL in multiples of 32 px (default 768x768): 576 image tokens")
    add_visual_options(parser.add_argument_group("what a request shows the model"))
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default=defaults.DTYPE)
    parser.add_argument("--target", default=defaults.TARGET,
                        help=f"runtime the graphs are for (default {defaults.TARGET}): tensorrt = standard ONNX only, "
                             "valid for TensorRT 10.3 (JetPack 6) and also run by ONNX Runtime; onnxruntime = "
                             "attention as ONNX Runtime's com.microsoft.GroupQueryAttention (fastest there; "
                             "TensorRT and trio-build refuse it)")
    parser.add_argument("--max-text-tokens", type=int, default=defaults.MAX_TEXT_TOKENS,
                        help=f"longest prompt text, in tokens (default {defaults.MAX_TEXT_TOKENS})")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.MAX_NEW_TOKENS,
                        help=f"longest answer, in tokens (default {defaults.MAX_NEW_TOKENS})")
    parser.add_argument("--opset", type=int, default=defaults.OPSET, help=f"ONNX opset, 18..23 (default "
                        f"{defaults.OPSET}; quantized exports use at least 21)")
    parser.add_argument("--nms-iterations", type=int, default=defaults.NMS_ITERATIONS,
                        help=f"Cluster-NMS iterations unrolled per block of {defaults.NMS_BLOCK} tokens in select "
                             f"graphs (default {defaults.NMS_ITERATIONS}; the runtime falls back to the exact greedy "
                             "rule on the host if a request needs more)")
    weights = parser.add_argument_group("weight-only quantization")
    weights.add_argument("--weights", help="fp32, fp16, int8 or int4 (default: the --dtype). int8/int4 store the "
                         "language model's linear layers as integers with one scale per block of input channels "
                         "(symmetric blocked DequantizeLinear, opset 21: TensorRT 10 and ONNX Runtime's MatMulNBits); "
                         "activations stay in --dtype")
    weights.add_argument("--block-size", type=int, default=defaults.BLOCK_SIZE,
                         help=f"input channels per scale (default {defaults.BLOCK_SIZE}); must divide every quantized "
                              "layer's input features")
    weights.add_argument("--quant-method", default=defaults.QUANT_METHOD,
                         help="rtn (round to nearest, default) or gptq (int4; calibration-aware, ONNX Runtime's "
                              "GPTQ on activations of --calibration-data)")
    weights.add_argument("--calibration-data", help="for --quant-method gptq: 'synthetic' (the synthetic VQA "
                         "generator) or a records folder (records.jsonl: image, question)")
    weights.add_argument("--calibration-samples", type=int, default=defaults.CALIBRATION_SAMPLES,
                         help=f"requests to record calibration activations from (default {defaults.CALIBRATION_SAMPLES})")
    weights.add_argument("--quantize-lm-head", action="store_true", help="quantize lm_head too")
    weights.add_argument("--quantize-vision", action="store_true", help="quantize the vision tower and projector too")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-validate", action="store_true", help="skip checking graphs against PyTorch")
    add_quiet_option(parser)
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from ..exporters.export import export

    info = export(args.model, args.output, method=args.method, grid=args.grid, dtype=args.dtype,
                  target=args.target,
                  max_text_tokens=args.max_text_tokens, max_new_tokens=args.max_new_tokens, opset=args.opset,
                  nms_iterations=args.nms_iterations, force=args.force, validate=not args.no_validate,
                  progress=not args.quiet, weights=args.weights, block_size=args.block_size,
                  quant_method=args.quant_method, quantize_lm_head=args.quantize_lm_head,
                  quantize_vision=args.quantize_vision, calibration_data=args.calibration_data,
                  calibration_samples=args.calibration_samples, images=args.images or 1,
                  video_frames=args.video_frames or 0, budget_per_image=bool(args.budget_per_image),
                  **schedule_options(args))
    print(info.table())
    print(f"wrote {info.directory}")
