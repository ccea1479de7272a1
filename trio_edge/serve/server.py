"""run() serves until SIGTERM/SIGINT (what `trio-serve` does); start() serves from a background thread and
returns a handle (embedding, notebooks, examples).

The socket is bound here, before uvicorn starts, so a taken port is one clear error, port 0 picks a free
port, and clients can connect (and /health answers "loading") while the graphs load.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from pathlib import Path

from .. import defaults
from ..errors import BackendUnavailableError, InputError
from .settings import MIB, ServeSettings

log = logging.getLogger("uvicorn.error")


def run(source, *, host: str = defaults.SERVE_HOST, port: int = defaults.SERVE_PORT, log_level: str = "info",
        **options) -> None:
    """Serve `source` (an export directory or a model) over HTTP until SIGTERM or Ctrl-C; requests in flight
    are answered before it returns. Raises the loading error (e.g. ArtifactError) if the pipeline cannot be
    opened. `options`: see `start`."""
    server, sock, state = _prepare(source, host=host, port=port, log_level=log_level, **options)
    log.info("trio-serve: listening on %s (model %s, loading)", _url(sock), state.settings.model_name)
    server.run(sockets=[sock])
    if state.load_error is not None:
        raise state.load_error


def start(source, *, host: str = defaults.SERVE_HOST, port: int = 0, log_level: str = "warning",
          ready_timeout: float = 600.0, **options) -> "RunningServer":
    """Serve `source` from a background thread; returns once the pipeline is loaded (raising its error if it
    cannot be opened). Port 0 (the default) picks a free port: see `.url`. Stop with `.stop()` or `with`.

    `options`: api_key, max_queue, timeout (s), allow_remote_images, model_name (default: the source's last
    path component), max_body_mb, max_image_mb, max_image_pixels, max_video_mb, max_video_seconds; and what
    `trio_edge.load` takes (backend,
    device, cuda_graphs, max_new_tokens and the schedule options for a model)."""
    server, sock, state = _prepare(source, host=host, port=port, log_level=log_level, **options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="trio-serve", daemon=True)
    thread.start()
    running = RunningServer(server, thread, state, _url(sock))
    deadline = time.monotonic() + ready_timeout
    while state.worker is None and state.load_error is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if state.worker is None:
        running.stop()
        raise state.load_error or InputError(f"trio-serve did not get ready within {ready_timeout:g} s")
    return running


class RunningServer:
    def __init__(self, server, thread: threading.Thread, state, url: str):
        self._server, self._thread, self.state, self.url = server, thread, state, url

    def stop(self) -> None:
        """Stop accepting connections, answer the requests in flight, release the pipeline."""
        self._server.should_exit = True
        self._thread.join()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _prepare(source, *, host, port, log_level, api_key=None, max_queue=defaults.SERVE_MAX_QUEUE,
             timeout=defaults.SERVE_TIMEOUT, allow_remote_images=False, model_name=None,
             max_body_mb=defaults.SERVE_MAX_BODY_MB, max_image_mb=defaults.SERVE_MAX_IMAGE_MB,
             max_image_pixels=defaults.SERVE_MAX_IMAGE_PIXELS, max_video_mb=defaults.SERVE_MAX_VIDEO_MB,
             max_video_seconds=defaults.SERVE_MAX_VIDEO_SECONDS, **open_options):
    """(uvicorn server, bound socket, app state); the pipeline opens once the server runs."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as error:
        raise BackendUnavailableError(f"trio-serve needs FastAPI, uvicorn and prometheus-client ({error}); install "
                                      "them with: pip install 'trio-edge[serve]'") from None
    from ..runtime.open import check_open, open_pipeline

    check_open(source, **open_options)  # bad options fail before the port is bound and the server starts
    settings = ServeSettings(model_name=model_name or _default_name(source), api_key=api_key, max_queue=max_queue,
                             timeout=timeout, allow_remote_images=allow_remote_images,
                             max_body_bytes=int(max_body_mb * MIB), max_image_bytes=int(max_image_mb * MIB),
                             max_image_pixels=max_image_pixels, max_video_bytes=int(max_video_mb * MIB),
                             max_video_seconds=max_video_seconds)
    sock = _bind(host, port)
    holder = []  # the uvicorn server, for the loader to stop it if the pipeline cannot be opened

    def stop_on_load_error(error):  # run() / start() raise it once the server has stopped
        holder[0].should_exit = True

    app = create_app(functools.partial(open_pipeline, source, **open_options), settings,
                     on_load_error=stop_on_load_error)
    # the request timeout bounds every request, so draining after SIGTERM ends within it
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=int(settings.timeout) + 1)
    holder.append(uvicorn.Server(config))
    return holder[0], sock, app.state.serve


def _default_name(source) -> str:
    return Path(str(source)).name or str(source)


def _bind(host: str, port: int) -> socket.socket:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"--port must be 0..65535, got {port!r}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        sock = socket.create_server((host, port), family=family)
        # accepted connections inherit it: a response's headers and body leave at once instead of the body
        # waiting for the client's delayed ACK of the headers (Nagle), about 40 ms per request on Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror or error}; choose another --port "
                         "or --host") from None


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
