"""CUDA-graph capture in the torch backend: replays give the eager pipeline's tokens and kept sets.

The capture tests need a CUDA GPU (they run in GPU sessions via benchmarks/gpu_session.sh)."""

from __future__ import annotations

import pytest
import torch
from helpers import PROMPTS, assert_same_generations

from trio_edge.errors import BackendUnavailableError
from trio_edge.runtime.open import open_model
from trio_edge.trio.schedule import Schedule

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_graphs_on_cpu_is_a_clear_error(tiny):
    with pytest.raises(BackendUnavailableError, match="CUDA graphs need a CUDA device"):
        open_model(tiny, Schedule(), device="cpu", cuda_graphs=True)


def test_cuda_graphs_default_off_on_cpu(tiny):
    assert open_model(tiny, Schedule(), device="cpu").backend.cuda_graphs is False


@needs_cuda
@pytest.mark.parametrize("schedule", ["", "1:40", "0:30,1:16,2:8"])
def test_replayed_pipeline_equals_eager(tiny, images, schedule):
    tiny.model.to("cuda")
    try:
        eager = open_model(tiny, Schedule.parse(schedule), device="cuda", cuda_graphs=False)
        graphed = open_model(tiny, Schedule.parse(schedule), device="cuda", cuda_graphs=True)
        # prompts of different lengths: one prefill capture each; decode replays
        requests = [(images[i % len(images)], PROMPTS[i]) for i in range(4)]
        assert_same_generations(eager, graphed, requests, max_new_tokens=10, tol=1e-4)
        assert graphed.backend.captured.eager == set()  # every capture-safe graph was captured
        captured = graphed.backend.captured.calls
        assert {"vision", "embed", *(segment.name for segment in graphed.plan.segments)} <= set(captured)
        assert any(key[0] == (1, 1, tiny.adapter.decoder.hidden_size) for calls in captured.values() for key in calls)
        for segment in graphed.plan.segments:  # the pipeline keeps the graph's own KV buffer: no copies
            call = next(iter(captured[segment.name].values()))
            assert graphed.kv[segment.name].data_ptr() == call.static[3].data_ptr()
    finally:
        tiny.model.to("cpu")


@needs_cuda
def test_capture_cache_releases_oldest_shape(tiny, images):
    tiny.model.to("cuda")
    try:
        pipeline = open_model(tiny, Schedule.parse("1:40"), device="cuda", cuda_graphs=True)
        pipeline.backend.captured.limit = 2
        reference = open_model(tiny, Schedule.parse("1:40"), device="cuda", cuda_graphs=False)
        for prompt in PROMPTS:  # six prompt lengths through a cache of two prefill shapes per graph
            assert pipeline.generate(images[0], prompt, max_new_tokens=4).token_ids == \
                reference.generate(images[0], prompt, max_new_tokens=4).token_ids
        assert all(len(calls) <= 2 for calls in pipeline.backend.captured.calls.values())
    finally:
        tiny.model.to("cpu")
