"""OpenAI-shaped errors from Ray Serve's HTTP proxy.

A replica answers in OpenAI's error shape itself; the proxy in front of it does not: a replica process that
dies mid-request leaves the proxy with no response at all (uvicorn then sends a bare "Internal Server
Error"), and its own timeouts and back-pressure answer in plain text. This ASGI middleware, installed in the
proxy through Ray's hook (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=trio_edge.serve.ray_proxy:middlewares`,
which `trio-serve --engine ray` sets for the cluster it starts), turns both into an OpenAI error body, so a
client sees `{"error": {...}}` with a status it knows (503 + Retry-After: the official clients retry it).
"""

from __future__ import annotations

import json
import logging

from .api_errors import ApiError
from .settings import REPLICA_HEADER

log = logging.getLogger("ray.serve")
HOOK = "trio_edge.serve.ray_proxy:middlewares"
HOOK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
# the proxy's own plain-text statuses -> (status sent, code, message)
PROXY_ERRORS = {
    408: (504, "timeout", "no answer within the proxy's request timeout; retry later or ask for fewer tokens"),
    429: (429, "queue_full", "the replicas' queues are full; retry shortly"),
    500: (503, "replica_unavailable", "the replica answering this request stopped (Ray replaces it); retry"),
    503: (503, "replica_unavailable", "no replica can take the request now (starting, or being replaced); retry"),
}


def middlewares() -> list:
    """Ray's proxy callback: the middlewares its HTTP proxy wraps the applications with."""
    from starlette.middleware import Middleware

    return [Middleware(OpenAIErrors)]


class OpenAIErrors:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "replaced": False}

        async def forward(message):
            if state["replaced"]:
                return  # the proxy's plain-text body of a response already sent in OpenAI's shape
            if message["type"] == "http.response.start":
                state["started"] = True
                if message["status"] in PROXY_ERRORS and not _from_replica(message):
                    state["replaced"] = True
                    await _send_error(send, message["status"])
                    return
            await send(message)

        try:
            await self.app(scope, receive, forward)
        except Exception:  # noqa: BLE001 - the client still gets an answer; the proxy's log has the cause
            log.exception("trio-serve: the proxy failed on %s", scope.get("path"))
        if not state["started"]:
            await _send_error(send, 500)


def _from_replica(message) -> bool:
    return any(name.lower() == REPLICA_HEADER.encode() for name, _ in message.get("headers", []))


async def _send_error(send, proxy_status: int) -> None:
    status, code, text = PROXY_ERRORS[proxy_status]
    body = json.dumps(ApiError(status, code, text).body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (429, 503):
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
