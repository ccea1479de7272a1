"""run_on_ray(): what `trio-serve SOURCE --engine ray` does. Joins a Ray cluster (or starts a private local one),
deploys the trio-serve app with its replicas behind Ray's HTTP proxy on --host:--port, and serves until
SIGTERM / Ctrl-C; then the replicas drain (requests in flight are answered) and a cluster it started stops.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from .. import defaults
from ..cluster import check_address, check_cpus, connect, import_ray
from ..errors import BackendUnavailableError, TrioEdgeError

PROXY_SLACK_S = 5.0  # Ray's proxy gives up this long after the app's own timeout (which answers 504 first)


def run_on_ray(source, *, host: str = defaults.SERVE_HOST, port: int = defaults.SERVE_PORT, replicas: int | None = 1,
               autoscale: tuple[int, int] | None = None, address: str | None = None, cpus_per_replica: float = 1.0,
               model_name=None, api_key=None, max_queue=defaults.SERVE_MAX_QUEUE, timeout=defaults.SERVE_TIMEOUT,
               allow_remote_images=False, max_body_mb=defaults.SERVE_MAX_BODY_MB,
               max_image_mb=defaults.SERVE_MAX_IMAGE_MB, max_image_pixels=defaults.SERVE_MAX_IMAGE_PIXELS,
               max_video_mb=defaults.SERVE_MAX_VIDEO_MB, max_video_seconds=defaults.SERVE_MAX_VIDEO_SECONDS,
               ready=None, **open_options) -> None:
    """Serve `source` from Ray Serve replicas until SIGTERM or Ctrl-C; Ray's HTTP proxy listens on host:port.
    `address`: None starts a private cluster on this machine; "auto", "ray://HOST:PORT" or "HOST:PORT" joins one.
    `ready(url)` is called once the replicas answer. The other options are trio_edge.serve.run's."""
    import_ray()  # the missing extra is the first thing said
    from ..runtime.open import check_open
    from .ray_app import DEPLOYMENT, Scaling, application, settings_from
    from .ray_proxy import HOOK, HOOK_VARIABLE
    from .server import _bind, _url

    scaling = Scaling(replicas=replicas, autoscale=autoscale, cpus_per_replica=cpus_per_replica)
    check_address(address)
    settings = settings_from(source, model_name=model_name, api_key=api_key, max_queue=max_queue, timeout=timeout,
                             allow_remote_images=allow_remote_images, max_body_mb=max_body_mb,
                             max_image_mb=max_image_mb, max_image_pixels=max_image_pixels,
                             max_video_mb=max_video_mb, max_video_seconds=max_video_seconds)
    check_open(source, **open_options)
    probe = _bind(host, port)  # a taken port is one clear error here, not a proxy that never starts
    url = _url(probe)
    probe.close()
    os.environ.setdefault(HOOK_VARIABLE, HOOK)  # a cluster started here gets OpenAI-shaped proxy errors
    owned = connect(address)
    stop = _stop_on_signals()  # after ray.init, whose own SIGTERM handler would abort the process
    from ray import serve

    try:
        check_cpus(scaling.first_replicas, scaling.cpus_per_replica, "replicas")
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": settings.timeout + PROXY_SLACK_S})
        app = application(source, scaling=scaling, settings=settings, **open_options)
        started = time.perf_counter()
        try:
            serve.run(app, name=DEPLOYMENT, route_prefix="/", blocking=False)
        except TrioEdgeError:
            raise
        except Exception as error:  # noqa: BLE001 - Ray's deployment failure, as one line
            raise BackendUnavailableError(f"Ray Serve could not start the trio-serve replicas: "
                                          f"{str(error).strip().splitlines()[-1]}") from None
        count = f"{scaling.autoscale[0]}..{scaling.autoscale[1]}" if scaling.autoscale else scaling.replicas
        _say(f"trio-serve: listening on {url} (model {settings.model_name}, {count} replicas on Ray, ready in "
             f"{time.perf_counter() - started:.1f} s; replica logs: /tmp/ray/session_latest/logs/serve)")
        if ready is not None:
            ready(url)
        stop.wait()
        _say("trio-serve: draining the replicas (requests in flight are answered)")
    finally:
        _shut_down(serve, owned)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    return stop


def _shut_down(serve, owned: bool) -> None:
    ray = import_ray()
    if not ray.is_initialized():
        return
    from .ray_app import DEPLOYMENT

    try:
        # the replicas finish their requests (in flight and queued) while the proxy still carries the answers
        # back; only then does a cluster started here go (the cluster's other applications stay either way)
        if DEPLOYMENT in serve.status().applications:
            serve.delete(DEPLOYMENT)
        if owned:
            serve.shutdown()
    finally:
        ray.shutdown()
