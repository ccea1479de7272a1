"""trio-batch EXPORT_DIR_OR_MODEL INPUT -o OUTPUT.jsonl: answer many questions about many images, offline.

INPUT is a JSONL file, one record per line: {"id": ..., "image": PATH_OR_URL, "prompt": ...} with optional
max_new_tokens, temperature, top_p, seed (image paths are relative to the file's folder); or a folder of images
with --prompt (ids: the file names). Each record gets one line in OUTPUT as soon as it is answered: {"id", "text",
"kept", "prompt_tokens", "completion_tokens", "timings"}, or {"id", "error"} when that record cannot be answered
(the run goes on). A killed run loses only the records in flight: run it again with --resume to answer the rest.

--engine local (default): one pipeline in this process. --engine ray (the [ray] extra: pip install
'trio-edge[ray]'): --actors N Ray actors, each with its own pipeline, on a private local Ray cluster or the one
at --address.
"""

from __future__ import annotations

import argparse
import sys

from .common import (
    PROMPT_HELP,
    CliParser,
    add_device_options,
    add_quiet_option,
    at_least,
    cli_entry,
    positive_number,
)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="trio-batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="export directory, or alias / Hugging Face id / model directory")
    parser.add_argument("input", help="JSONL file of records, or a folder of images (with --prompt)")
    parser.add_argument("-o", "--output", required=True, help="the answers, one JSON line per record")
    parser.add_argument("--prompt", help="for a folder of images, and for records without a prompt: " + PROMPT_HELP)
    written = parser.add_mutually_exclusive_group()
    written.add_argument("--resume", action="store_true", help="keep the answers already in OUTPUT and answer only "
                                                               "the records whose id is not there yet")
    written.add_argument("--force", action="store_true", help="overwrite an existing OUTPUT")
    generation = parser.add_argument_group("generation (defaults of the records that set none)")
    generation.add_argument("--max-new-tokens", type=at_least(1), help="default: the export's maximum")
    generation.add_argument("--temperature", type=float, help="0 = greedy (default)")
    generation.add_argument("--top-p", type=float)
    generation.add_argument("--seed", type=int)
    add_device_options(parser)
    engine = parser.add_argument_group("engine")
    engine.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local (default): one pipeline in this process; ray: a pool of Ray Data actors")
    engine.add_argument("--actors", type=at_least(1), help="--engine ray: actors, each with its own pipeline "
                                                           "(default 1)")
    engine.add_argument("--address", help="--engine ray: the cluster to join: auto, ray://HOST:PORT or HOST:PORT "
                                          "(default: a private local cluster)")
    engine.add_argument("--cpus-per-actor", type=positive_number, help="--engine ray: CPUs per actor; its ONNX "
                                                                       "Runtime threads (default 1)")
    add_quiet_option(parser)
    return parser


@cli_entry
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    ray_only = [name for name in ("actors", "address", "cpus_per_actor") if getattr(args, name) is not None]
    if args.engine != "ray" and ray_only:
        parser.error(f"--{ray_only[0].replace('_', '-')} applies to --engine ray only")
    if args.engine == "ray":
        from ..cluster import import_ray

        import_ray()  # the missing extra first, before the input is read
    from ..batching import batch

    summary = batch(args.model, args.input, args.output, prompt=args.prompt, engine=args.engine,
                    actors=args.actors or 1, address=args.address, cpus_per_actor=args.cpus_per_actor or 1.0,
                    resume=args.resume, force=args.force, progress=not args.quiet,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                    backend=args.backend, device=args.device, low_memory=args.low_memory)
    print(summary.line(), file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
