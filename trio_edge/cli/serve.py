"""trio-serve EXPORT_DIR_OR_MODEL: an OpenAI-compatible HTTP server answering questions about one image.

POST /v1/chat/completions (OpenAI's schema: messages with text and one image_url data URL; stream=true for
server-sent events), GET /v1/models, GET /health (200 once the graphs are loaded, 503 before), GET /metrics
(Prometheus). One pipeline answers one request at a time; others wait in a FIFO queue (429 with Retry-After
when it is full). Binds 127.0.0.1 unless --host says otherwise. SIGTERM or Ctrl-C: stop accepting
connections, answer the requests in flight, exit. Sampling defaults to greedy, as trio-run.

--engine ray (the [ray] extra: pip install 'trio-edge[ray]'): the same app in --replicas N processes (or
--autoscale MIN:MAX) behind Ray Serve's HTTP proxy, each with its own pipeline and --cpus-per-replica CPUs;
on a private local Ray cluster, or on the one at --address. Each response names its replica in the header
x-trio-replica. The same deployment runs with Ray's own tools: serve run trio_edge.serve.ray_app:build_app
source=EXPORT_DIR replicas=2.
"""

from __future__ import annotations

import argparse
import os

from .. import defaults
from .common import (
    CliParser,
    add_device_options,
    add_model_only_options,
    at_least,
    cli_entry,
    model_only_options,
    positive_number,
)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="trio-serve", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="export directory, or alias / Hugging Face id / model directory")
    add_device_options(parser)
    http = parser.add_argument_group("HTTP")
    http.add_argument("--host", default=defaults.SERVE_HOST, help=f"address to bind (default {defaults.SERVE_HOST}: "
                                                                  "this machine only; 0.0.0.0 for every interface)")
    http.add_argument("--port", type=at_least(0), default=defaults.SERVE_PORT, help=f"default {defaults.SERVE_PORT}; 0 = any "
                                                                            "free port")
    http.add_argument("--api-key", default=os.environ.get("TRIO_SERVE_API_KEY"),
                      help="require 'Authorization: Bearer KEY' on /v1 (default: $TRIO_SERVE_API_KEY, else none)")
    http.add_argument("--model-name", help="the model id clients send and /v1/models lists (default: the last "
                                           "component of EXPORT_DIR_OR_MODEL)")
    http.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                      help="uvicorn's log level (default info: one access-log line per request; warning and above "
                           "print no access log)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-queue", type=at_least(0), default=defaults.SERVE_MAX_QUEUE,
                        help=f"requests that may wait while one runs (default {defaults.SERVE_MAX_QUEUE}); more get 429")
    limits.add_argument("--timeout", type=positive_number, default=defaults.SERVE_TIMEOUT,
                        help=f"seconds from arrival to the last token, queue wait included (default "
                             f"{defaults.SERVE_TIMEOUT:g}); then 504, or an error event when streaming")
    limits.add_argument("--max-body-mb", type=positive_number, default=defaults.SERVE_MAX_BODY_MB,
                        help=f"largest request body (default {defaults.SERVE_MAX_BODY_MB:g}); 413 above")
    limits.add_argument("--max-image-mb", type=positive_number, default=defaults.SERVE_MAX_IMAGE_MB,
                        help=f"largest encoded image (default {defaults.SERVE_MAX_IMAGE_MB:g}); 413 above")
    limits.add_argument("--max-image-pixels", type=at_least(1), default=defaults.SERVE_MAX_IMAGE_PIXELS,
                        help=f"most decoded pixels (default {defaults.SERVE_MAX_IMAGE_PIXELS}); 400 above")
    limits.add_argument("--max-video-mb", type=positive_number, default=defaults.SERVE_MAX_VIDEO_MB,
                        help=f"largest encoded video (default {defaults.SERVE_MAX_VIDEO_MB:g} MiB; it travels inside "
                             "the body: raise --max-body-mb too); 413 above")
    limits.add_argument("--max-video-seconds", type=positive_number, default=defaults.SERVE_MAX_VIDEO_SECONDS,
                        help=f"longest video clip (default {defaults.SERVE_MAX_VIDEO_SECONDS:g} s); 400 above")
    limits.add_argument("--allow-remote-images", action="store_true",
                        help="also fetch http(s) image and video URLs (off by default: the server would fetch any "
                             "URL a client names)")
    add_scale_out_options(parser)
    model_only = add_model_only_options(parser, "EXPORT_DIR_OR_MODEL")
    model_only.add_argument("--max-new-tokens", type=at_least(1), help=f"longest answer (default "
                            f"{defaults.MAX_NEW_TOKENS}; an export fixed its own: clients pass max_tokens)")
    return parser


def add_scale_out_options(parser) -> None:
    group = parser.add_argument_group("scale out on Ray (--engine ray; the [ray] extra)")
    group.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local (default): one pipeline in this process; ray: replicas on Ray Serve")
    count = group.add_mutually_exclusive_group()
    count.add_argument("--replicas", type=at_least(1), help="replicas, each with its own pipeline (default 1)")
    count.add_argument("--autoscale", metavar="MIN:MAX", help="let Ray add replicas while requests wait, from MIN "
                                                              "up to MAX")
    group.add_argument("--address", help="the Ray cluster to join: auto (the one `ray start` runs here), "
                                         "ray://HOST:PORT or HOST:PORT (default: a private local cluster)")
    group.add_argument("--cpus-per-replica", type=positive_number, help="CPUs Ray reserves for each replica; "
                       "its ONNX Runtime threads (default 1)")


RAY_ONLY = ("replicas", "autoscale", "address", "cpus_per_replica")


@cli_entry
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    given = [name for name in RAY_ONLY if getattr(args, name) is not None]
    if args.engine != "ray" and given:
        parser.error(f"--{given[0].replace('_', '-')} applies to --engine ray only")
    options = dict(host=args.host, port=args.port, api_key=args.api_key, model_name=args.model_name,
                   max_queue=args.max_queue, timeout=args.timeout, max_body_mb=args.max_body_mb,
                   max_image_mb=args.max_image_mb, max_image_pixels=args.max_image_pixels,
                   max_video_mb=args.max_video_mb, max_video_seconds=args.max_video_seconds,
                   allow_remote_images=args.allow_remote_images, backend=args.backend, device=args.device,
                   low_memory=args.low_memory)
    model_options = dict(cuda_graphs=args.cuda_graphs, max_new_tokens=args.max_new_tokens,
                         **model_only_options(args))
    if args.engine == "ray":
        from ..cluster import import_ray

        import_ray()  # the missing extra is said first, in one line
        from ..serve.ray_app import parse_autoscale
        from ..serve.ray_server import run_on_ray

        run_on_ray(args.model, replicas=None if args.autoscale else args.replicas or 1,
                   autoscale=parse_autoscale(args.autoscale) if args.autoscale else None, address=args.address,
                   cpus_per_replica=args.cpus_per_replica or 1.0, **options,
                   **{k: v for k, v in model_options.items() if v is not None})
        return
    from ..serve import run

    run(args.model, log_level=args.log_level, **options, **model_options)


if __name__ == "__main__":
    raise SystemExit(main())
