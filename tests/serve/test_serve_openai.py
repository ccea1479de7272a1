"""The official `openai` client against trio-serve on a trio-tiny export (TRIO at 11.1%): exactly trio-run's
answers, streamed and not; /v1/models; 64 requests from 8 concurrent clients, each equal to its serial answer.

Slow: the module exports trio-tiny once (about a minute here)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI
from serve_helpers import SAMPLES, data_url, metric, user_message

import trio_edge
from trio_edge.cli import run as run_cli

pytestmark = pytest.mark.slow
MODEL = "trio-tiny"
PAIRS = [  # (sample image, question): the shipped samples plus two more questions about them
    ("color.png", "what color is the triangle?"),
    ("shape.png", "what shape is the blue object?"),
    ("count.png", "how many circles are there?"),
    ("color.png", "what shape is the purple object?"),
    ("shape.png", "how many objects are there?"),
]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve-export") / MODEL
    trio_edge.export(MODEL, directory, keep_ratio=0.111, validate=False, progress=False)  # validation: tests/exporters
    return directory


@pytest.fixture(scope="module")
def server(start_server, export_dir):
    return start_server(export_dir)


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def trio_run(export_dir, image: str, question: str, capsys) -> dict:
    assert run_cli.main([str(export_dir), "--image", str(SAMPLES / image), "--prompt", question, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def ask(client: OpenAI, image: str, question: str, *, stream: bool = False, **options) -> str:
    messages = [user_message(question, data_url(SAMPLES / image))]
    if not stream:
        return client.chat.completions.create(model=MODEL, messages=messages, **options).choices[0].message.content
    chunks = client.chat.completions.create(model=MODEL, messages=messages, stream=True, **options)
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_models_lists_the_export(client, export_dir):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    card = models[0].model_dump()
    assert card["image_tokens"] == 259 and "11.1%" in card["schedule"]
    assert client.models.retrieve(MODEL).id == MODEL


def test_openai_client_gets_trio_runs_text(client, export_dir, capsys):
    for image, question in PAIRS:
        expected = trio_run(export_dir, image, question, capsys)
        completion = client.chat.completions.create(
            model=MODEL, messages=[user_message(question, data_url(SAMPLES / image))])
        assert completion.choices[0].message.content == expected["text"], (image, question)
        assert completion.choices[0].finish_reason == "stop"
        usage = completion.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (expected["prompt_tokens"], len(expected["token_ids"]))
        assert usage.model_extra["image_tokens"] == {"before_pruning": 259, "after_pruning": len(expected["kept"][-1]),
                                                     "kept_per_cut": [len(k) for k in expected["kept"]]}

        chunks = list(client.chat.completions.create(
            model=MODEL, messages=[user_message(question, data_url(SAMPLES / image))], stream=True,
            stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected["text"]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage.completion_tokens == len(expected["token_ids"])


def test_64_requests_from_8_clients_equal_their_serial_answers(server, client):
    # sampled with a different seed each, so answers differ and a mixed-up reply would show
    requests = [(*PAIRS[i % len(PAIRS)], {"temperature": 1.5, "seed": i, "max_tokens": 6}) for i in range(64)]
    serial = [ask(client, image, question, **options) for image, question, options in requests]
    assert len(set(serial)) > 5, "the sampled answers should differ"
    before = httpx.get(server.url + "/metrics").text

    def one_client(index: int) -> list[str]:  # 8 requests in a row; odd clients stream
        own = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        return [ask(own, image, question, stream=index % 2 == 1, **options)
                for image, question, options in requests[index::8]]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one_client, range(8)))
    concurrent = [answers[i % 8][i // 8] for i in range(64)]
    assert concurrent == serial

    after = httpx.get(server.url + "/metrics").text
    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)
    assert grew("trio_serve_requests_total", endpoint="/v1/chat/completions") == 64
    assert grew("trio_serve_completions_total", finish_reason="stop") + grew(
        "trio_serve_completions_total", finish_reason="length") == 64
    assert grew("trio_serve_time_to_first_token_seconds_count") == 64
    assert grew("trio_serve_kept_token_ratio_count") == 64
    assert "trio_serve_errors_total{" not in after
    assert metric(after, "trio_serve_queue_depth") == 0
