"""trio-serve's limits, errors and lifecycle on a real server subprocess: every bad request kind gets its
status and OpenAI error body while a good request is being generated; stop strings, conversations, the API
key, timeouts, client disconnects, remote images, SIGTERM draining.

The servers run `tiny-random` (built in code, random weights): its greedy answers never end on their own,
so a request runs exactly as long as its max_tokens asks, which makes "in flight" deterministic.
"""

from __future__ import annotations

import http.server
import io
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from serve_helpers import SAMPLES, STARTUP_S, data_url, metric, sse_events, user_message

import trio_edge

MODEL = "tiny-random"
KEY = "sekrit"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGE = data_url(SAMPLES / "color.png")
QUESTION = "what color is the triangle?"


def body(question: str = QUESTION, *images: str, **options) -> dict:
    return {"model": MODEL, "messages": [user_message(question, *(images or (IMAGE,)))], **options}


def post(server, json=None, *, content=None, headers=AUTH, timeout=120) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=json, content=content,
                      headers={"Content-Type": "application/json", **headers}, timeout=timeout)


def noise_png(width: int, height: int) -> bytes:
    pixels = np.random.RandomState(0).randint(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def solid_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def limited(start_server):
    """API key, one waiting place, 2 MiB bodies, 1 MiB images, 1 Mpixel, answers up to 1000 tokens."""
    return start_server(MODEL, "--keep-ratio", "0.111", "--max-new-tokens", "1000", "--api-key", KEY,
                        "--max-queue", "1", "--max-body-mb", "2", "--max-image-mb", "1", "--max-image-pixels",
                        "1000000")


@pytest.fixture(scope="module")
def short_timeout(start_server):
    """A 3 s request timeout, remote images allowed (up to 1 MiB)."""
    return start_server(MODEL, "--keep-ratio", "0.111", "--max-new-tokens", "4000", "--timeout", "3",
                        "--allow-remote-images", "--max-image-mb", "1")


def chunked(request: dict):
    """The JSON body in pieces: sent without Content-Length (chunked transfer encoding)."""
    data = json.dumps(request).encode()
    for start in range(0, len(data), 65536):
        yield data[start:start + 65536]


def bad_requests() -> dict:
    """kind -> (request keyword arguments for `post`, expected status)."""
    long_question = " ".join(["what color is the big triangle?"] * 40)  # > 128 text tokens
    return {
        "invalid_json": (dict(content=b'{"model": "tiny-random", "messages": ['), 400),
        "invalid_request": (dict(json={"model": MODEL}), 400),  # no messages
        "invalid_request/type": (dict(json=body(temperature="hot")), 400),
        "invalid_request/n": (dict(json=body(n=2)), 400),
        "invalid_request/role": (dict(json={"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}), 400),
        "no_image": (dict(json={"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}), 400),
        "too_many_images": (dict(json=body(QUESTION, IMAGE, IMAGE)), 400),
        "request_too_large": (dict(json=body(QUESTION, data_url(noise_png(1100, 700)))), 413),
        "request_too_large/chunked": (dict(content=chunked(body(QUESTION, data_url(noise_png(1100, 700))))), 413),
        "image_too_large": (dict(json=body(QUESTION, data_url(noise_png(650, 650)))), 413),
        "image_too_many_pixels": (dict(json=body(QUESTION, data_url(solid_png(1100, 1000)))), 400),
        "context_length_exceeded": (dict(json=body(long_question)), 400),
        "max_tokens_too_large": (dict(json=body(max_tokens=5000)), 400),
        "invalid_api_key": (dict(json=body(), headers={"Authorization": "Bearer wrong"}), 401),
        "invalid_api_key/missing": (dict(json=body(), headers={}), 401),
        "remote_images_disabled": (dict(json=body(QUESTION, "http://127.0.0.1:9/cat.png")), 400),
        "unsupported_image_type": (dict(json=body(QUESTION, "data:image/gif;base64,R0lGODlhAQABAAAAACw=")), 400),
        "invalid_image": (dict(json=body(QUESTION, data_url(b"this is not a png"))), 400),
        "model_not_found": (dict(json={**body(), "model": "gpt-4o"}), 404),
    }


def test_every_bad_request_gets_its_status_while_a_good_one_runs(limited):
    bad = bad_requests()  # built first: while the good request runs, only HTTP happens here
    in_flight = {}
    first_token = threading.Event()

    def good_stream():  # 600 tokens: seconds of generation
        with httpx.stream("POST", limited.url + "/v1/chat/completions", headers=AUTH, timeout=600,
                          json=body(max_tokens=600, stream=True, stream_options={"include_usage": True})) as response:
            events = []
            for event in sse_events(response):
                events.append(event)
                first_token.set()
            in_flight["events"], in_flight["done_at"] = events, time.monotonic()

    runner = threading.Thread(target=good_stream)
    runner.start()
    assert first_token.wait(120)
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(post, limited, body(max_tokens=3))  # takes the one waiting place
        wait_for(lambda: metric(httpx.get(limited.url + "/metrics").text, "trio_serve_queue_depth") == 1)
        answers = {kind: post(limited, **request) for kind, (request, _) in bad.items()}
        answers["queue_full"] = post(limited, body(max_tokens=3))
        answered_at = time.monotonic()
        runner.join()
        assert queued.result().status_code == 200

    assert answered_at < in_flight["done_at"], "the bad requests waited for the good one"
    for kind, response in answers.items():
        expected = bad[kind][1] if kind in bad else 429
        assert response.status_code == expected, (kind, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], kind
        assert error["code"] == kind.split("/")[0], (kind, error)
    assert answers["queue_full"].headers["Retry-After"].isdigit()
    assert answers["invalid_request"].json()["error"]["param"] == "messages"
    assert answers["invalid_request/type"].json()["error"]["param"] == "temperature"
    assert answers["max_tokens_too_large"].json()["error"]["param"] == "max_tokens"
    counts = httpx.get(limited.url + "/metrics").text
    assert metric(counts, "trio_serve_errors_total", kind="invalid_api_key") == 2
    assert metric(counts, "trio_serve_errors_total", kind="queue_full") == 1
    assert metric(counts, "trio_serve_errors_total", kind="request_too_large") == 2

    # the good request finished completely, and its answer is the one it gets alone (greedy: a longer answer
    # starts with the shorter one)
    events = in_flight["events"]
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 600
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2])
    alone = post(limited, body(max_tokens=50)).json()["choices"][0]["message"]["content"]
    assert len(alone) > 20 and streamed.startswith(alone)


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=5)
    except httpx.ConnectError:
        return True
    return False


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_openai_client_sees_typed_errors(limited):
    client = openai.OpenAI(base_url=limited.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
    assert refused.value.code == "no_image"
    wrong = openai.OpenAI(base_url=limited.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert [m.id for m in client.models.list().data] == [MODEL]
    for path in ("/health", "/metrics"):  # open to probes and scrapers
        assert httpx.get(limited.url + path).status_code == 200


def test_stop_strings_end_the_answer_like_openai(limited):
    full = post(limited, body(max_tokens=12)).json()["choices"][0]["message"]["content"]
    words = full.split()
    stop = next(word for word in words[1:] if word != words[0])  # a word that first appears after the start
    expected = full[:full.index(stop)]
    answer = post(limited, body(max_tokens=12, stop=[stop, "never-generated"])).json()
    assert answer["choices"][0]["message"]["content"] == expected
    assert answer["choices"][0]["finish_reason"] == "stop"
    with httpx.stream("POST", limited.url + "/v1/chat/completions", json=body(max_tokens=12, stop=stop, stream=True),
                      headers=AUTH, timeout=120) as response:
        events = list(sse_events(response))
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]) == expected


def test_a_conversation_is_rendered_with_the_models_template(limited):
    messages = [{"role": "system", "content": "answer in one word."},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}},
                                             {"type": "text", "text": "what is this?"}]},
                {"role": "assistant", "content": "a triangle"},
                {"role": "user", "content": QUESTION}]
    served = post(limited, {"model": MODEL, "messages": messages, "max_tokens": 8}).json()
    # tiny-random has no chat template: LLaVA's vicuna conversation, given verbatim to the pipeline
    prompt = f"answer in one word. USER: <image>\nwhat is this? ASSISTANT: a triangle</s>USER: {QUESTION} ASSISTANT:"
    with trio_edge.load(MODEL, keep_ratio=0.111, max_new_tokens=8) as pipeline:
        expected = pipeline.generate(SAMPLES / "color.png", prompt)
    assert served["choices"][0]["message"]["content"] == expected.text
    assert served["usage"]["prompt_tokens"] == expected.prompt_tokens


def test_timeout_stops_the_generation_and_the_server_goes_on(short_timeout):
    before = httpx.get(short_timeout.url + "/metrics").text
    start = time.monotonic()
    response = post(short_timeout, body(max_tokens=4000))
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert time.monotonic() - start < 30
    client = openai.OpenAI(base_url=short_timeout.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError, match="timeout"):
        for _ in client.chat.completions.create(model=MODEL, messages=body()["messages"], max_tokens=4000,
                                                stream=True):
            pass
    wait_for(lambda: metric(httpx.get(short_timeout.url + "/metrics").text, "trio_serve_running") == 0)
    after = httpx.get(short_timeout.url + "/metrics").text
    assert metric(after, "trio_serve_errors_total", kind="timeout") - metric(
        before, "trio_serve_errors_total", kind="timeout") == 2
    generated = metric(after, "trio_serve_completion_tokens_total") - metric(before, "trio_serve_completion_tokens_total")
    assert 0 < generated < 2 * 4000, "the timed-out generations were stopped early"
    assert post(short_timeout, body(max_tokens=2)).status_code == 200


def test_a_client_that_leaves_stops_its_generation(short_timeout):
    def stopped_tokens(leave) -> float:
        before = httpx.get(short_timeout.url + "/metrics").text
        leave()
        wait_for(lambda: metric(httpx.get(short_timeout.url + "/metrics").text, "trio_serve_errors_total",
                                kind="client_disconnected") > metric(before, "trio_serve_errors_total",
                                                                     kind="client_disconnected"), timeout=10)
        wait_for(lambda: metric(httpx.get(short_timeout.url + "/metrics").text, "trio_serve_running") == 0)
        after = httpx.get(short_timeout.url + "/metrics").text
        return metric(after, "trio_serve_completion_tokens_total") - metric(before, "trio_serve_completion_tokens_total")

    def leave_stream():  # read two pieces of the answer, then hang up
        with httpx.stream("POST", short_timeout.url + "/v1/chat/completions",
                          json=body(max_tokens=4000, stream=True), timeout=30) as response:
            for count, _ in enumerate(response.iter_lines()):
                if count >= 4:
                    break

    def leave_waiting():  # give up on a non-streamed answer after 0.5 s
        with pytest.raises(httpx.ReadTimeout):
            post(short_timeout, body(max_tokens=4000), timeout=httpx.Timeout(30, read=0.5))

    assert stopped_tokens(leave_stream) < 4000
    assert stopped_tokens(leave_waiting) < 4000
    assert post(short_timeout, body(max_tokens=2)).status_code == 200


@pytest.fixture()
def image_site(tmp_path):
    """A local HTTP server for remote image URLs: /color.png, and /big.png over the 1 MiB image limit."""
    (tmp_path / "color.png").write_bytes((SAMPLES / "color.png").read_bytes())
    (tmp_path / "big.png").write_bytes(noise_png(700, 700))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()


def test_remote_images_when_allowed(short_timeout, image_site):
    from_data_url = post(short_timeout, body(max_tokens=4)).json()["choices"][0]["message"]["content"]
    remote = post(short_timeout, body(QUESTION, image_site + "/color.png", max_tokens=4))
    assert remote.status_code == 200 and remote.json()["choices"][0]["message"]["content"] == from_data_url
    missing = post(short_timeout, body(QUESTION, image_site + "/missing.png"))
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, "image_fetch_failed")
    big = post(short_timeout, body(QUESTION, image_site + "/big.png"))
    assert (big.status_code, big.json()["error"]["code"]) == (413, "image_too_large")
    local_file = post(short_timeout, body(QUESTION, "file:///etc/passwd"))
    assert (local_file.status_code, local_file.json()["error"]["code"]) == (400, "invalid_image")


@pytest.mark.slow  # starts its own server (the others share two): about 20 s here
def test_sigterm_answers_the_requests_in_flight_then_exits(start_server):
    server = start_server(MODEL, "--keep-ratio", "0.111", "--max-new-tokens", "1000")
    first_token = threading.Event()

    def streamed():
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body(max_tokens=200, stream=True),
                          timeout=300) as response:
            events = []
            for event in sse_events(response):
                events.append(event)
                first_token.set()
            return events

    with ThreadPoolExecutor(3) as pool:
        stream = pool.submit(streamed)
        assert first_token.wait(120)
        waiting = [pool.submit(post, server, body(max_tokens=n), headers={}) for n in (100, 5)]
        wait_for(lambda: metric(httpx.get(server.url + "/metrics").text, "trio_serve_queue_depth") == 2)
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(server.url), timeout=30)  # no new connections while draining
        assert not waiting[0].done(), "requests were still in flight when the server stopped listening"
        events = stream.result(timeout=300)
        answers = [future.result(timeout=300) for future in waiting]
    assert events[-1] == "[DONE]"
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["usage"]["completion_tokens"] for a in answers] == [100, 5]
    assert server.process.wait(60) in (0, -signal.SIGTERM)


def test_startup_errors_are_one_line_and_exit_2(tmp_path, limited):
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "trio_edge.cli.serve", *args], capture_output=True, text=True,
                              timeout=STARTUP_S)

    missing = serve(str(tmp_path / "no-such-export"), "--port", "0")
    taken = serve(MODEL, "--port", str(limited.port))  # the port the limited server listens on
    for done, message in ((missing, "no-such-export"), (taken, f"cannot listen on 127.0.0.1:{limited.port}")):
        lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
        assert "Traceback" not in done.stderr
