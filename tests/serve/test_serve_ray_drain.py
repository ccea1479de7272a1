"""trio-serve --engine ray drains on SIGTERM: a request in flight is answered in full, then the server exits 0 and
its Ray cluster is gone.

Slow: one `trio-serve --engine ray` subprocess (its own local Ray cluster, token auth off) on `tiny-random`,
whose greedy answers never end on their own, so a request runs exactly as long as its max_tokens asks."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from serve_helpers import SAMPLES, data_url, user_message

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # inherited by the server and its cluster
TOKENS = 400


def test_sigterm_answers_the_request_in_flight(start_server):
    server = start_server("tiny-random", "--keep-ratio", "0.111", "--max-new-tokens", str(TOKENS), "--model-name",
                          "tr", "--engine", "ray", "--replicas", "1")
    body = {"model": "tr", "max_tokens": TOKENS, "messages": [user_message("what?", data_url(SAMPLES / "color.png"))]}
    post = lambda: httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)  # noqa: E731
    started = time.monotonic()
    assert post().status_code == 200  # warm: the first answer's time tells how long one takes
    one_request_s = time.monotonic() - started
    answers = []

    def ask():
        try:
            answers.append(post())
        except httpx.HTTPError as error:
            answers.append(error)

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(min(0.5, one_request_s / 4))
    server.process.send_signal(signal.SIGTERM)
    thread.join(180)
    assert isinstance(answers[0], httpx.Response) and answers[0].status_code == 200, (answers, one_request_s)
    assert answers[0].json()["usage"]["completion_tokens"] == TOKENS
    assert server.process.wait(120) == 0, server.log()
    assert "draining the replicas" in server.log()
