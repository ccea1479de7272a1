"""trio-serve --engine ray: 2 Ray Serve replicas behind Ray's proxy answer the official openai client exactly as
the single-process server does; 8 concurrent clients reach both replicas (the x-trio-replica header, the
replica label of /metrics); a replica process killed mid-load is replaced, and every request meanwhile gets
its answer or an OpenAI-style error, none hangs; SIGTERM drains and exits 0.

Slow: the module runs one `trio-serve --engine ray` subprocess, which starts its own local Ray cluster (token
auth off) and stops it when the test stops the server."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from serve_helpers import SAMPLES, data_url, metric, user_message

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # inherited by the server and its cluster
PAIRS = [("color.png", "what color is the triangle?"), ("shape.png", "what shape is the blue object?"),
         ("count.png", "how many circles are there?")]
REQUEST_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def export_dir(export_tiny):
    return export_tiny("one_cut")[1]


@pytest.fixture(scope="module")
def single(start_server, export_dir):
    return start_server(export_dir, "--model-name", "tiny")


@pytest.fixture(scope="module")
def on_ray(start_server, export_dir):
    server = start_server(export_dir, "--model-name", "tiny", "--engine", "ray", "--replicas", "2")
    yield server
    assert server.stop() == 0, server.log()  # SIGTERM: the replicas drain, the cluster stops
    assert not replica_pids(server), "the server left replica processes behind"


def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)


def messages(i: int) -> list:
    image, question = PAIRS[i % len(PAIRS)]
    return [user_message(question, data_url(SAMPLES / image))]


def completion(server, i: int, **options):
    raw = client(server).chat.completions.with_raw_response.create(model="tiny", messages=messages(i), **options)
    return raw.parse(), raw.headers.get("x-trio-replica")


def replica_pids(server) -> list[int]:
    """The Ray Serve replica processes of this server's cluster (descendants of its process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::ServeReplica:trio-serve"):
                continue
            pid = int(entry.name)
            while pid > 1 and pid != server.process.pid:
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if pid == server.process.pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_answers_equal_the_single_process_server(single, on_ray):
    requests = [{}, {}, {}, {"temperature": 1.5, "seed": 7, "max_tokens": 6}, {"max_tokens": 3}]
    for i, options in enumerate(requests):
        expected, _ = completion(single, i, **options)
        answer, replica = completion(on_ray, i, **options)
        assert replica, "the answering replica is named in x-trio-replica"
        assert answer.choices[0].message.content == expected.choices[0].message.content, (i, options)
        assert answer.choices[0].finish_reason == expected.choices[0].finish_reason
        assert answer.usage.model_dump() == expected.usage.model_dump()
    chunks = client(on_ray).chat.completions.create(model="tiny", messages=messages(0), stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == completion(single, 0)[0].choices[0].message.content
    assert [m.id for m in client(on_ray).models.list().data] == ["tiny"]


def test_eight_clients_reach_both_replicas(single, on_ray):
    expected = [completion(single, i)[0].choices[0].message.content for i in range(len(PAIRS))]

    def one_client(index: int) -> list[tuple[str, str]]:
        return [(completion(on_ray, i)[0].choices[0].message.content, completion(on_ray, i)[1])
                for i in range(index, 48, 8)]

    with ThreadPoolExecutor(8) as pool:
        results = [x for part in pool.map(one_client, range(8)) for x in part]
    replicas = {replica for _, replica in results}
    assert len(replicas) == 2, replicas
    order = [i for index in range(8) for i in range(index, 48, 8)]
    assert [text for text, _ in results] == [expected[i % len(PAIRS)] for i in order]
    # /metrics of whichever replica answers, labelled with its id; asked 8 at a time, since Ray's router may send
    # every request of one idle client to the same replica
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: httpx.get(on_ray.url + "/metrics", timeout=10), range(40)))
    seen = {}
    for response in responses:
        replica = response.headers["x-trio-replica"]
        seen[replica] = metric(response.text, "trio_serve_completions_total", finish_reason="length",
                               replica=replica) + metric(response.text, "trio_serve_completions_total",
                                                         finish_reason="stop", replica=replica)
    assert set(seen) == replicas and all(count > 0 for count in seen.values()), seen


def test_a_killed_replica_is_replaced_and_no_request_hangs(on_ray):
    before = set(replica_pids(on_ray))
    assert len(before) == 2
    expected = completion(on_ray, 0)[0].choices[0].message.content

    def one_client(index: int) -> list:
        outcomes = []
        for _ in range(12):
            started = time.monotonic()
            try:
                outcomes.append(completion(on_ray, 0)[0].choices[0].message.content)
            except openai.APIStatusError as error:  # an OpenAI-style error body, any status
                assert error.body and "code" in error.body, error.response.text
                outcomes.append(("error", error.status_code, error.body["code"]))
            assert time.monotonic() - started < REQUEST_TIMEOUT_S
        return outcomes

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one_client, i) for i in range(8)]
        time.sleep(1.0)
        os.kill(sorted(before)[0], signal.SIGKILL)
        outcomes = [x for f in futures for x in f.result(timeout=300)]
    assert len(outcomes) == 96
    assert all(o == expected or (isinstance(o, tuple) and o[1] in (500, 502, 503, 504)) for o in outcomes), outcomes
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(set(replica_pids(on_ray)) - before) < 1:
        time.sleep(0.5)
    after = set(replica_pids(on_ray))
    assert len(after) == 2 and len(after - before) == 1, (before, after)
    while time.monotonic() < deadline:  # the new replica answers too
        answer, replica = completion(on_ray, 0)
        if len({completion(on_ray, 0)[1] for _ in range(6)} | {replica}) == 2:
            break
    assert answer.choices[0].message.content == expected
