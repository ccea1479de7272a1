"""The shipped trio-tiny-qwen3 (a Qwen3-VL with DeepStack trained on the synthetic VQA task,
scripts/train_trio_tiny_qwen3.py) through the product: it loads by alias at the size its image processor is pinned
to (256x256: 64 image tokens) with DeepStack feeding decoder layers 0-2, the pipeline in the form export traces
answers the shipped sample questions right, token for token as transformers' generate when unpruned, and still
right with TRIO keeping 1/3 of the image tokens (its first cut after layer 1, before the last DeepStack plane is
added); its exported ONNX graphs answer the same (one unpruned export, about 20 s here)."""

from __future__ import annotations

import pytest
from helpers import assert_export_answers_as_transformers, assert_pipeline_answers

from trio_edge.models.registry import SHIPPED, load

GRID = (256, 256)


@pytest.fixture(scope="module")
def loaded():
    return load("trio-tiny-qwen3")


def test_the_shipped_model_is_a_qwen3_at_its_pinned_size(loaded):
    adapter = loaded.adapter
    assert loaded.source == str(SHIPPED["trio-tiny-qwen3"])
    assert type(loaded.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert (adapter.family, adapter.default_grid(), adapter.image_token_count(GRID), adapter.deepstack_layers) == \
        ("qwen3-vl", GRID, 64, 3)


@pytest.mark.parametrize("keep_ratio", [None, 0.333], ids=["unpruned", "trio-1/3"])
def test_the_pipeline_answers_the_samples(loaded, keep_ratio):
    schedule = loaded.adapter.schedule(GRID, keep_ratio=keep_ratio) if keep_ratio else None
    if schedule is not None:  # a cut inside the DeepStack layers: the kept tokens' later planes are gathered
        assert schedule.cuts[0].layer < loaded.adapter.deepstack_layers
    assert_pipeline_answers(loaded, schedule)


def test_the_exported_graphs_answer_as_transformers(loaded, tmp_path):
    assert_export_answers_as_transformers(loaded, tmp_path / "export")
