"""trio-serve: an OpenAI-compatible HTTP server over one trio-edge pipeline.

    from trio_edge.serve import run, start
    run("exports/trio-tiny", port=8000)                  # what `trio-serve exports/trio-tiny` does (blocks)
    with start("exports/trio-tiny") as server:           # a background thread on a free port
        print(server.url)                                # http://127.0.0.1:PORT; clients use PORT/v1

`create_app(pipeline, ServeSettings(...))` gives the ASGI app itself. FastAPI, uvicorn and prometheus-client
come with the `[serve]` extra; they are imported only when a server is made.
"""

from __future__ import annotations

from .server import RunningServer, run, start
from .settings import ServeSettings

__all__ = ["run", "start", "RunningServer", "ServeSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # imports FastAPI
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'trio_edge.serve' has no attribute {name!r}")
