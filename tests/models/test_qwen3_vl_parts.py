"""Qwen3-VL's parts, each against transformers' own model: the tiny checkpoint built offline, the vision tower at a
fixed image size (learned position table resampled once; image features and DeepStack features), the
interleaved M-RoPE rotary, get_rope_index's rows in closed form, QK-norm in the Llama-family segments, the graph
signatures DeepStack adds (and does not add to other families), the shipped configs and the refusals."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from helpers import random_image

from trio_edge.artifact.graphs import DEEPSTACK, DEEPSTACK_FEATURES, DEEPSTACK_OUT, graph_specs
from trio_edge.artifact.plan import plan_for
from trio_edge.errors import InputError, UnsupportedModelError
from trio_edge.models.qwen3_vision import Qwen3VisionFeatures
from trio_edge.trio.schedule import Schedule

GRID = (256, 256)  # 16 x 16 patches, 64 image tokens


def test_tiny_qwen3_loads_offline_with_its_geometry(qwen3):
    model, adapter = qwen3.model, qwen3.adapter
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert (adapter.family, adapter.position_rows, adapter.deepstack_layers, adapter.default_grid()) == \
        ("qwen3-vl", 3, 3, GRID)
    assert adapter.image_token_count(GRID) == 64 and adapter.pixel_shape(GRID) == (256, 3 * 2 * 16 * 16)
    assert hasattr(model.model.language_model.layers[0].self_attn, "q_norm")  # QK-norm
    content = [{"type": "image"}, {"type": "text", "text": "hi"}]
    text = adapter.format_conversation([{"role": "user", "content": content}])
    assert text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("size", [(256, 256), (320, 192), (96, 160)], ids=["256x256", "320x192", "96x160"])
def test_fixed_size_vision_equals_transformers_with_deepstack(qwen3, size):
    model, adapter = qwen3.model, qwen3.adapter
    pixels = adapter.pixel_values(random_image(300, 200, seed=3), size)
    thw = adapter._thw(size)
    with torch.no_grad():
        reference = model.model.visual(pixels, grid_thw=torch.tensor([thw]))
        features, deepstack = Qwen3VisionFeatures(model.model.visual, thw)(pixels)
    m, d = thw[1] * thw[2] // 4, model.config.text_config.hidden_size
    assert features.shape == (m, d) and deepstack.shape == (m, 3 * d)
    torch.testing.assert_close(features, reference.pooler_output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(deepstack, torch.cat(reference.deepstack_features, dim=-1), rtol=1e-5, atol=1e-5)


def test_rotary_and_positions_equal_transformers(qwen3):
    model, adapter = qwen3.model, qwen3.adapter
    inputs = adapter.hf_inputs(random_image(200, 200, seed=1), "what is it?", GRID)
    rows, deltas = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                              inputs["image_grid_thw"])
    ours = adapter.prompt_positions(inputs["input_ids"], GRID)
    assert torch.equal(ours, rows)
    assert adapter.first_decode_position(ours) == int(deltas) + inputs["input_ids"].shape[1]
    decode = torch.tensor([[[17]]]).expand(3, 1, 1)
    for positions in (rows, decode):
        expected = model.model.language_model.rotary_emb(torch.zeros(1), positions)
        got = adapter.decoder.rotary(torch.zeros(1), positions)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_a_segment_equals_transformers_layers_with_qk_norm_and_deepstack(qwen3):
    """Layers 0..3 as one segment (export form) with DeepStack planes == transformers' layers + _deepstack_process."""
    from reference import causal_mask

    model, decoder = qwen3.model, qwen3.adapter.decoder
    text = model.model.language_model
    generator = torch.Generator().manual_seed(0)
    s, d = 20, decoder.hidden_size
    h = torch.randn(s, d, generator=generator)
    image = torch.zeros(s, dtype=torch.bool)
    image[4:12] = True
    planes = [torch.randn(8, d, generator=generator) for _ in range(3)]
    positions = torch.arange(s).expand(3, 1, -1)
    expected = h[None]
    cos_sin = text.rotary_emb(expected, positions)
    for index, layer in enumerate(text.layers):
        expected = layer(expected, attention_mask=causal_mask(s), position_ids=positions[0],
                         position_embeddings=cos_sin)
        if index < 3:
            expected = text._deepstack_process(expected, image[None], planes[index])
    laid_out = torch.zeros(1, s, 3 * d)
    laid_out[0, image] = torch.cat(planes, dim=-1)
    kv = torch.zeros(4, 2, decoder.num_kv_heads, 32, decoder.head_dim)
    segment = decoder.segment(0, 4, with_head=False, deepstack_layers=3)
    with torch.no_grad():
        got, _ = segment(h[None], positions, torch.tensor(0), laid_out, kv)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def signatures(adapter, cuts: str, method: str = "trio", target_layer_caches: bool = False):
    plan = plan_for(adapter, adapter.schedule(GRID, cuts=cuts, method=method) if cuts else Schedule(), grid=GRID,
                    max_text_tokens=32, max_new_tokens=4, method=method)
    specs = graph_specs(plan, tile_count=1, pixel_shape=adapter.pixel_shape(GRID), dtype="float32",
                        layer_caches=target_layer_caches)
    return plan, {name: ([t.name for t in spec.inputs], [t.name for t in spec.outputs]) for name, spec in specs.items()}


def test_deepstack_planes_go_only_where_they_are_added_or_pruned(qwen3):
    plan, names = signatures(qwen3.adapter, "1:32,3:16")
    assert plan.deepstack_layers == 3
    assert DEEPSTACK_FEATURES in names["vision"][1] and DEEPSTACK_FEATURES in names["embed"][0]
    assert DEEPSTACK in names["embed"][1]
    assert DEEPSTACK in names["segment_00_01"][0] and DEEPSTACK in names["segment_01_03"][0]
    assert DEEPSTACK not in names["segment_03_04"][0]
    assert DEEPSTACK in names["select_0_layer01"][0] and DEEPSTACK_OUT in names["select_0_layer01"][1]
    assert DEEPSTACK not in names["select_1_layer03"][0] and DEEPSTACK_OUT not in names["select_1_layer03"][1]
    # FastV at 3 owns layer 2 (it adds that plane) but prunes after the last DeepStack layer
    _, names = signatures(qwen3.adapter, "3:16", method="fastv")
    assert DEEPSTACK in names["select_0_layer03"][0] and DEEPSTACK_OUT not in names["select_0_layer03"][1]


def test_other_families_have_no_deepstack_graphs(tiny):
    plan = plan_for(tiny.adapter, Schedule.parse("1:40"), grid=tiny.adapter.default_grid(), max_text_tokens=32,
                    max_new_tokens=4)
    specs = graph_specs(plan, tile_count=tiny.adapter.tile_count(plan.grid),
                        pixel_shape=tiny.adapter.pixel_shape(plan.grid), dtype="float32")
    assert plan.deepstack_layers == 0 and "deepstack_layers" in plan.to_dict()
    assert not [t for spec in specs.values() for t in (*spec.inputs, *spec.outputs) if "deepstack" in t.name]


def test_an_image_size_off_the_merged_patch_is_refused(qwen3):
    with pytest.raises(InputError, match="image size 250x256 is not a multiple of 32 px"):
        qwen3.adapter.grid_for("250x256")
    assert qwen3.adapter.grid_for("320x192") == (320, 192)


@pytest.mark.parametrize("arch, model_type, says", [
    ("Qwen2_5_VLForConditionalGeneration", "qwen3_vl", "the qwen2.5-vl adapter cannot run a qwen3_vl checkpoint"),
    ("Qwen3VLForConditionalGeneration", "qwen2_5_vl", "the qwen3-vl adapter cannot run a qwen2_5_vl checkpoint"),
    ("Qwen2VLForConditionalGeneration", "qwen2_vl", "Qwen2-VL (an older version) is not supported"),
])
def test_a_checkpoint_of_another_qwen_version_is_refused_before_loading(arch, model_type, says):
    from trio_edge.models.families import adapter_class_for

    with pytest.raises(UnsupportedModelError, match=re.escape(says)):
        adapter_class_for(SimpleNamespace(architectures=[arch], model_type=model_type))


@pytest.mark.parametrize("alias, layers, deepstack, tied", [("qwen3-vl-2b", 28, [5, 11, 17], True),
                                                          ("qwen3-vl-4b", 36, [5, 11, 17], True),
                                                          ("qwen3-vl-8b", 36, [8, 16, 24], False)])
def test_shipped_configs_are_the_real_architectures(alias, layers, deepstack, tied):
    from trio_edge.models.random_weights import architecture
    from trio_edge.models.registry import ALIASES

    config, model_class, processor = architecture(alias)
    assert ALIASES[alias] == f"Qwen/Qwen3-VL-{alias.split('-')[-1].upper()}-Instruct"
    assert model_class.__name__ == "Qwen3VLForConditionalGeneration"
    text, vision = config.text_config, config.vision_config
    assert text.num_hidden_layers == layers and vision.deepstack_visual_indexes == deepstack
    assert config.tie_word_embeddings == tied
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and text.rope_parameters["mrope_interleaved"]
    assert (vision.patch_size, vision.num_position_embeddings, text.head_dim) == (16, 2304, 128)
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == config.image_token_id == 151655
    scaled, _, _ = architecture(alias, scale=0.05, layers=4, vision_layers=3)
    assert scaled.vision_config.deepstack_visual_indexes == [0, 1, 2] and scaled.text_config.num_hidden_layers == 4
