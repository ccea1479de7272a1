"""The shipped trio-tiny-qwen (a Qwen2.5-VL trained on the synthetic VQA task, scripts/train_trio_tiny_qwen.py)
through the product: it loads by alias at the size its image processor is pinned to (224x224: 64 image tokens),
the pipeline in the form export traces answers the shipped sample questions right, token for token as
transformers' generate when unpruned, and still right with TRIO keeping 1/3 of the image tokens; its exported
ONNX graphs answer the same (one unpruned export, about 20 s here)."""

from __future__ import annotations

import pytest
from helpers import hf_generate, make_pipeline
from PIL import Image

from trio_edge import samples
from trio_edge.models.registry import SHIPPED, load


@pytest.fixture(scope="module")
def loaded():
    return load("trio-tiny-qwen")


@pytest.fixture(scope="module")
def records():
    return [(Image.open(record["image"]).convert("RGB"), record["question"], record["answer"])
            for record in samples.records()]


def test_the_shipped_model_is_a_qwen_at_its_pinned_size(loaded):
    adapter = loaded.adapter
    assert loaded.source == str(SHIPPED["trio-tiny-qwen"])
    assert (adapter.family, adapter.default_grid(), adapter.image_token_count((224, 224))) == ("qwen2.5-vl", (224, 224), 64)


@pytest.mark.parametrize("keep_ratio", [None, 0.333], ids=["unpruned", "trio-1/3"])
def test_the_pipeline_answers_the_samples(loaded, records, keep_ratio):
    schedule = loaded.adapter.schedule((224, 224), keep_ratio=keep_ratio) if keep_ratio else None
    pipeline = make_pipeline(loaded, schedule, max_text_tokens=40, max_new_tokens=3, runtime_form=False)
    for image, question, answer in records:
        result = pipeline.generate(image, question)
        assert result.text.strip() == answer, (keep_ratio, question)
        if keep_ratio is None:  # unpruned: exactly transformers' own greedy generate
            assert result.token_ids == hf_generate(loaded, image, question, max_new_tokens=3)[0]
        else:
            assert 0 < len(result.kept[-1]) < 64


def test_the_exported_graphs_answer_as_transformers(loaded, records, tmp_path):
    from trio_edge import load as load_export
    from trio_edge.exporters.export import export

    export(loaded.source, tmp_path / "export", loaded=loaded, max_text_tokens=40, max_new_tokens=3, progress=False)
    with load_export(tmp_path / "export") as graphs:
        for image, question, answer in records:
            result = graphs.generate(image, question)
            assert result.text.strip() == answer and result.token_ids == hf_generate(loaded, image, question, max_new_tokens=3)[0]
