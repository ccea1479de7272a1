"""The shipped trio-tiny-qwen3 (a Qwen3-VL with DeepStack trained on the synthetic VQA task,
scripts/train_trio_tiny_qwen3.py) through the product: it loads by alias at the size its image processor is pinned
to (256x256: 64 image tokens) with DeepStack feeding decoder layers 0-2, the pipeline in the form export traces
answers the shipped sample questions right, token for token as transformers' generate when unpruned, and still
right with TRIO keeping 1/3 of the image tokens (its first cut after layer 1, before the last DeepStack plane is
added); its exported ONNX graphs answer the same (one unpruned export)."""

from __future__ import annotations

import pytest
from helpers import hf_generate, make_pipeline
from PIL import Image

from trio_edge import samples
from trio_edge.models.registry import SHIPPED, load

GRID = (256, 256)


@pytest.fixture(scope="module")
def loaded():
    return load("trio-tiny-qwen3")


@pytest.fixture(scope="module")
def records():
    return [(Image.open(record["image"]).convert("RGB"), record["question"], record["answer"])
            for record in samples.records()]


def test_the_shipped_model_is_a_qwen3_at_its_pinned_size(loaded):
    adapter = loaded.adapter
    assert loaded.source == str(SHIPPED["trio-tiny-qwen3"])
    assert type(loaded.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert (adapter.family, adapter.default_grid(), adapter.image_token_count(GRID), adapter.deepstack_layers) == \
        ("qwen3-vl", GRID, 64, 3)


@pytest.mark.parametrize("keep_ratio", [None, 0.333], ids=["unpruned", "trio-1/3"])
def test_the_pipeline_answers_the_samples(loaded, records, keep_ratio):
    schedule = loaded.adapter.schedule(GRID, keep_ratio=keep_ratio) if keep_ratio else None
    if schedule is not None:  # a cut inside the DeepStack layers: the kept tokens' planes are gathered
        assert schedule.cuts[0].layer < loaded.adapter.deepstack_layers
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
            assert result.text.strip() == answer
            assert result.token_ids == hf_generate(loaded, image, question, max_new_tokens=3)[0]
