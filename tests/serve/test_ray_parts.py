"""The Ray Serve parts without a cluster: build_app's arguments (as `serve run key=value` and a config file give
them), the scaling options, replica-labelled metrics, and the proxy middleware that keeps errors in OpenAI's
shape."""

from __future__ import annotations

import asyncio
import json

import pytest

from trio_edge.errors import InputError
from trio_edge.serve.metrics import ServeMetrics

ray_app = pytest.importorskip("trio_edge.serve.ray_app")  # the [ray] extra


def deployment_of(application):
    return application._bound_deployment


def test_build_app_takes_strings_and_typed_values(one_cut_dir):
    from_cli = deployment_of(ray_app.build_app({"source": str(one_cut_dir), "replicas": "2", "max_queue": "3",
                                                "model_name": "tiny", "allow_remote_images": "true"}))
    assert from_cli.num_replicas == 2 and from_cli.max_ongoing_requests == 4
    source, settings, threads, options = from_cli.init_args
    assert (source, settings.model_name, settings.max_queue, settings.allow_remote_images, threads, options) == \
        (str(one_cut_dir), "tiny", 3, True, 1, {})
    scaled = deployment_of(ray_app.build_app({"source": str(one_cut_dir), "autoscale": "1:4", "cpus_per_replica": 2}))
    config = scaled._deployment_config.autoscaling_config
    assert (config.min_replicas, config.max_replicas) == (1, 4)
    assert scaled.ray_actor_options["num_cpus"] == 2 and scaled.init_args[2] == 2


@pytest.mark.parametrize("args, needle", [
    ({"replicas": "2"}, "needs source="),
    ({"source": "x", "replica": "2"}, "unknown trio-serve arguments ['replica']"),
    ({"source": "x", "replicas": "0"}, "--replicas must be a whole number of at least 1"),
    ({"source": "x", "autoscale": "3:1"}, "MIN is over MAX"),
    ({"source": "x", "autoscale": "3"}, "is not MIN:MAX"),
    ({"source": "x", "cpus_per_replica": "-1"}, "--cpus-per-replica must be a positive number"),
])
def test_build_app_refuses_bad_arguments(args, needle):
    with pytest.raises(InputError, match=None) as error:
        ray_app.build_app(args)
    assert needle in str(error.value)


def test_metrics_carry_the_replica_label():
    metrics = ServeMetrics(replica="abc")
    metrics.completions.labels(finish_reason="stop").inc()
    text = metrics.exposition().decode()
    assert 'trio_serve_completions_total{finish_reason="stop",replica="abc"} 1.0' in text
    assert 'trio_serve_queue_depth{replica="abc"} 0.0' in text
    assert "replica=" not in ServeMetrics().exposition().decode()


def proxied(app) -> list[dict]:
    from trio_edge.serve.ray_proxy import OpenAIErrors

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.disconnect"}

    asyncio.run(OpenAIErrors(app)({"type": "http", "path": "/v1/chat/completions"}, receive, send))
    return sent


def test_the_proxy_answers_a_dead_replica_in_openai_shape():
    async def died(scope, receive, send):  # the replica process went away: no response at all
        raise RuntimeError("actor died")

    start, body = proxied(died)
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == "replica_unavailable"

    async def plain_timeout(scope, receive, send):  # Ray's own 408, in plain text
        await send({"type": "http.response.start", "status": 408, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Request timed out"})

    start, body = proxied(plain_timeout)
    assert start["status"] == 504 and json.loads(body["body"])["error"]["code"] == "timeout"


def test_the_proxy_passes_the_replicas_own_answers():
    async def replica(scope, receive, send):  # a replica's 503 (model loading) is already OpenAI-shaped
        await send({"type": "http.response.start", "status": 503, "headers": [(b"x-trio-replica", b"r1")]})
        await send({"type": "http.response.body", "body": b'{"error": {"code": "model_loading"}}'})

    start, body = proxied(replica)
    assert start["status"] == 503 and body["body"] == b'{"error": {"code": "model_loading"}}'
