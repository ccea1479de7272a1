"""trio-serve on Ray Serve: the same FastAPI app (app.py) in N replicas behind Ray's HTTP proxy.

Each replica opens the export from its path (an ONNX Runtime session cannot be sent to another process), with
ONNX Runtime's intra-op threads set to its CPU share, and runs one generation at a time;
`max_ongoing_requests` lets at most `max_queue` more wait in it (the app's own bounded queue), the rest wait
in Ray's router for the replica that frees first. Every response names its replica in the header
`x-trio-replica`, every /metrics sample in the label `replica`. Replicas drain on shutdown: Ray stops routing
to them and waits for the requests they hold (up to the request timeout).

Three ways to run it:

    trio-serve EXPORT --engine ray --replicas 2                      # a private local cluster (cli/serve.py)
    serve run trio_edge.serve.ray_app:build_app source=EXPORT replicas=2     # Ray's CLI, on a running cluster
    serve.run(trio_edge.serve.ray_app.application("EXPORT", replicas=2))     # Python

`build_app` takes Ray's `args` mapping (strings from `serve run key=value`, typed values from a config file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray import serve

from .. import defaults
from ..cluster import threads_for
from ..errors import InputError, require_whole_numbers
from .settings import MIB, ServeSettings

DEPLOYMENT = "trio-serve"
SETTING_ARGS = ("model_name", "api_key", "max_queue", "timeout", "allow_remote_images", "max_body_mb",
                "max_image_mb", "max_image_pixels", "max_video_mb", "max_video_seconds")
OPEN_ARGS = ("backend", "device", "low_memory")


@dataclass(frozen=True)
class Scaling:
    """A fixed replica count, or an autoscaling range MIN..MAX (replicas are added while requests wait)."""

    replicas: int | None = 1
    autoscale: tuple[int, int] | None = None
    cpus_per_replica: float = 1.0

    def __post_init__(self):
        if self.autoscale is None:
            require_whole_numbers({"--replicas": self.replicas})
        else:
            low, high = self.autoscale
            require_whole_numbers({"--autoscale MIN": low, "--autoscale MAX": high})
            if low > high:
                raise InputError(f"--autoscale {low}:{high}: MIN is over MAX; pass MIN:MAX with MIN <= MAX")
        cpus = self.cpus_per_replica
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0 < cpus < float("inf"):
            raise InputError(f"--cpus-per-replica must be a positive number, got {cpus!r}")

    @property
    def first_replicas(self) -> int:
        return self.replicas if self.autoscale is None else self.autoscale[0]

    def deployment_options(self) -> dict:
        options = {"ray_actor_options": {"num_cpus": self.cpus_per_replica}}
        if self.autoscale is None:
            return {**options, "num_replicas": self.replicas}
        low, high = self.autoscale
        return {**options, "num_replicas": "auto", "autoscaling_config": {
            "min_replicas": low, "initial_replicas": low, "max_replicas": high, "target_ongoing_requests": 2}}


def parse_autoscale(text: str) -> tuple[int, int]:
    """'MIN:MAX' -> (MIN, MAX)."""
    low, sep, high = str(text).partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise InputError(f"--autoscale {text!r} is not MIN:MAX (two whole numbers, e.g. 1:4)")
    return int(low), int(high)


@serve.ingress()
class TrioReplica:
    """One replica: a pipeline opened from the export's path, and the trio-serve app over it."""

    def __init__(self, source: str, settings: ServeSettings, threads: int, open_options: dict):
        from ..runtime.open import open_pipeline

        self.replica = serve.get_replica_context().replica_id.unique_id
        self.settings = settings
        self.pipeline = open_pipeline(source, threads=threads, **open_options)

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self.pipeline, self.settings, replica=self.replica)

    def __del__(self):  # Ray calls it when the replica stops (after draining)
        if getattr(self, "pipeline", None) is not None:
            self.pipeline.close()


def application(source, *, scaling: Scaling = Scaling(), settings: ServeSettings | None = None,
                **open_options):
    """The Ray Serve application (bind()-ed deployment) of `source`: pass it to `serve.run`."""
    source = str(Path(source).resolve()) if Path(str(source)).exists() else str(source)  # replicas' cwd differs
    settings = settings or ServeSettings(model_name=Path(source).name or source)
    options = scaling.deployment_options()
    # the replica's own queue (settings.max_queue) bounds what it holds; the request timeout bounds the drain
    deployment = serve.deployment(TrioReplica, name=DEPLOYMENT).options(
        max_ongoing_requests=settings.max_queue + 1, graceful_shutdown_timeout_s=settings.timeout + 1,
        graceful_shutdown_wait_loop_s=0.5, **options)
    return deployment.bind(source, settings, threads_for(scaling.cpus_per_replica), open_options)


def build_app(args: dict):
    """Ray's application builder (`serve run trio_edge.serve.ray_app:build_app source=DIR replicas=2`, or
    `import_path` + `args` in a Serve config file). Keys: source (required); replicas or autoscale (MIN:MAX);
    cpus_per_replica; model_name, api_key, max_queue, timeout, allow_remote_images, max_body_mb, max_image_mb,
    max_image_pixels, max_video_mb, max_video_seconds; backend, device, low_memory."""
    args = dict(args)
    unknown = sorted(set(args) - {"source", "replicas", "autoscale", "cpus_per_replica", *SETTING_ARGS, *OPEN_ARGS})
    if unknown:
        raise InputError(f"unknown trio-serve arguments {unknown}; see trio_edge.serve.ray_app.build_app")
    if "source" not in args:
        raise InputError("build_app needs source=EXPORT_DIR (the export every replica opens)")
    source = str(args.pop("source"))
    autoscale = args.pop("autoscale", None)
    scaling = Scaling(replicas=None if autoscale else _whole(args.pop("replicas", 1), "replicas"),
                      autoscale=parse_autoscale(autoscale) if autoscale else None,
                      cpus_per_replica=float(args.pop("cpus_per_replica", 1.0)))
    settings = settings_from(source, **{k: args.pop(k) for k in SETTING_ARGS if k in args})
    return application(source, scaling=scaling, settings=settings,
                       **{k: _typed(k, v) for k, v in args.items()})


def settings_from(source, *, model_name=None, api_key=None, max_queue=defaults.SERVE_MAX_QUEUE,
                  timeout=defaults.SERVE_TIMEOUT, allow_remote_images=False, max_body_mb=defaults.SERVE_MAX_BODY_MB,
                  max_image_mb=defaults.SERVE_MAX_IMAGE_MB, max_image_pixels=defaults.SERVE_MAX_IMAGE_PIXELS,
                  max_video_mb=defaults.SERVE_MAX_VIDEO_MB,
                  max_video_seconds=defaults.SERVE_MAX_VIDEO_SECONDS) -> ServeSettings:
    """ServeSettings from trio-serve's option values (strings from `serve run` are converted)."""
    return ServeSettings(model_name=model_name or Path(str(source)).name or str(source), api_key=api_key,
                         max_queue=_whole(max_queue, "max_queue"), timeout=float(timeout),
                         allow_remote_images=_flag(allow_remote_images),
                         max_body_bytes=int(float(max_body_mb) * MIB), max_image_bytes=int(float(max_image_mb) * MIB),
                         max_image_pixels=_whole(max_image_pixels, "max_image_pixels"),
                         max_video_bytes=int(float(max_video_mb) * MIB), max_video_seconds=float(max_video_seconds))


def _whole(value, name: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return value


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _typed(name: str, value):
    return _flag(value) if name == "low_memory" else value
