"""trio-serve as users run it: real server subprocesses, driven over HTTP (httpx) and with the official
`openai` client."""

from __future__ import annotations

import pytest
from serve_helpers import ServerProcess


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """start_server(source, *args) -> a ready ServerProcess, stopped when the module's tests are done."""
    started = []
    log_dir = tmp_path_factory.mktemp("serve-logs")

    def start(source, *args: str, wait: bool = True) -> ServerProcess:
        server = ServerProcess(source, *args, log_dir=log_dir)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()
