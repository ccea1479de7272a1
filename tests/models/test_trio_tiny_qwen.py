"""The shipped trio-tiny-qwen (a Qwen2.5-VL trained on the synthetic VQA task, scripts/train_trio_tiny_qwen.py)
through the product: it loads by alias at the size its image processor is pinned to (224x224: 64 image tokens),
the pipeline in the form export traces answers the shipped sample questions right, token for token as
transformers' generate when unpruned, and still right with TRIO keeping 1/3 of the image tokens; its exported
ONNX graphs answer the same (one unpruned export, about 20 s here)."""

from __future__ import annotations

import pytest
from helpers import assert_export_answers_as_transformers, assert_pipeline_answers

from trio_edge.models.registry import SHIPPED, load


@pytest.fixture(scope="module")
def loaded():
    return load("trio-tiny-qwen")


def test_the_shipped_model_is_a_qwen_at_its_pinned_size(loaded):
    adapter = loaded.adapter
    assert loaded.source == str(SHIPPED["trio-tiny-qwen"])
    assert (adapter.family, adapter.default_grid(), adapter.image_token_count((224, 224))) == ("qwen2.5-vl", (224, 224), 64)


@pytest.mark.parametrize("keep_ratio", [None, 0.333], ids=["unpruned", "trio-1/3"])
def test_the_pipeline_answers_the_samples(loaded, keep_ratio):
    schedule = loaded.adapter.schedule((224, 224), keep_ratio=keep_ratio) if keep_ratio else None
    assert_pipeline_answers(loaded, schedule)


def test_the_exported_graphs_answer_as_transformers(loaded, tmp_path):
    assert_export_answers_as_transformers(loaded, tmp_path / "export")
