"""Prometheus metrics of one server (a registry per app, so several apps in one process never mix counts).

A replica of a Ray Serve deployment labels every sample with its replica id: its /metrics is one replica's,
and a scraper that reaches several replicas through Ray's proxy can tell their counts apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RATIO_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
ENDPOINTS = ("/v1/chat/completions", "/v1/models")


class ServeMetrics:
    def __init__(self, replica: str | None = None):
        self.replica = replica
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("trio_serve_requests", "HTTP requests received, by endpoint", ["endpoint"],
                                registry=registry)
        self.errors = Counter("trio_serve_errors", "requests refused or failed, by kind (the error body's code)",
                              ["kind"], registry=registry)
        self.completions = Counter("trio_serve_completions", "answers completed, by finish reason",
                                   ["finish_reason"], registry=registry)
        self.queue_depth = Gauge("trio_serve_queue_depth", "requests waiting for the pipeline", registry=registry)
        self.running = Gauge("trio_serve_running", "requests the pipeline is generating for (0 or 1)",
                             registry=registry)
        self.ttft = Histogram("trio_serve_time_to_first_token_seconds", "arrival to first generated token "
                              "(queue wait included)", buckets=LATENCY_BUCKETS, registry=registry)
        self.token_latency = Histogram("trio_serve_time_per_output_token_seconds", "time between consecutive "
                                       "generated tokens", buckets=TOKEN_BUCKETS, registry=registry)
        self.duration = Histogram("trio_serve_request_duration_seconds", "arrival to last token of completed "
                                  "answers", buckets=LATENCY_BUCKETS, registry=registry)
        self.kept_ratio = Histogram("trio_serve_kept_token_ratio", "layer-averaged share of image tokens the "
                                    "decoder layers kept, per answer", buckets=RATIO_BUCKETS, registry=registry)
        self.prompt_tokens = Counter("trio_serve_prompt_tokens", "prompt tokens (text + image) prefilled",
                                     registry=registry)
        self.completion_tokens = Counter("trio_serve_completion_tokens", "tokens generated, also for answers "
                                         "stopped early", registry=registry)

    def count_request(self, path: str) -> None:
        endpoint = next((e for e in ENDPOINTS if path == e or path.startswith(e + "/")), "other")
        self.requests.labels(endpoint=endpoint).inc()

    def exposition(self) -> bytes:
        if self.replica is None:
            return generate_latest(self.registry)
        return generate_latest(Labelled(self.registry, {"replica": self.replica}))


class Labelled:
    """A registry's metrics with constant labels added to every sample (prometheus_client has no const labels)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]):
        self.registry, self.labels = registry, labels

    def collect(self):
        for family in self.registry.collect():
            family.samples = [s._replace(labels={**self.labels, **s.labels}) for s in family.samples]
            yield family
