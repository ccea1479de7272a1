"""The first Qwen2.5-VL parts, each against transformers' own model: the tiny checkpoint built offline, the vision
tower at a fixed image size (window attention unrolled into constants; exported to ONNX, equal in ONNX Runtime,
clean under TensorRT 10.3 rules), M-RoPE rows in closed form, and the Llama-family decoder segments running Qwen's
layers with those rows, prefill and decode. The adapter that joins them to the pipeline builds on these."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trio_edge import samples
from trio_edge.errors import InputError
from trio_edge.models.llama_decoder import LlamaFamilyDecoder
from trio_edge.models.mrope import first_decode_position, image_prompt_positions
from trio_edge.models.qwen_vision import QwenVisionFeatures, check_image_size, grid_thw
from trio_edge.models.tiny_qwen import make_tiny_qwen2_5_vl, make_tiny_qwen_image_processor

SIZES = [(224, 224), (336, 224), (112, 112), (448, 336)]  # (width, height): 1, 2, 1 and 12 attention windows


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    path = make_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen"), vision_layers=3)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    return model, tokenizer, image_processor


def pixels(image_processor, width: int, height: int, sample: str = "shape"):
    image = Image.open(samples.path(sample)).convert("RGB").resize((width, height))
    image_processor = make_tiny_qwen_image_processor(pixels=width * height) if image_processor is None else image_processor
    return image_processor(images=[image], return_tensors="pt")


def test_tiny_qwen_loads_offline_with_auto_classes(qwen):
    model, tokenizer, image_processor = qwen
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(image_processor).__name__ == "Qwen2VLImageProcessorPil"  # no torchvision needed
    assert model.config.vision_config.fullatt_block_indexes == [2] and model.config.vision_config.window_size == 112
    text = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                         add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text and text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_fixed_size_vision_equals_transformers(qwen, size):
    model, _, _ = qwen
    width, height = size
    inputs = pixels(None, width, height)
    thw = grid_thw(model.config.vision_config, width, height)
    assert tuple(inputs["image_grid_thw"][0].tolist()) == thw  # min = max pixels and whole windows: no resize
    with torch.no_grad():
        reference = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        ours = QwenVisionFeatures(model.model.visual, thw)(inputs["pixel_values"])
    assert ours.shape == reference.shape == (thw[1] * thw[2] // 4, model.config.text_config.hidden_size)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_vision_graph_exports_and_is_ready_for_tensorrt(qwen, tmp_path):
    import onnxruntime as ort

    from trio_edge.exporters.trt_check import check_path, parse_trt_version

    model, _, _ = qwen
    width, height = 448, 336
    inputs = pixels(None, width, height)["pixel_values"]
    module = QwenVisionFeatures(model.model.visual, grid_thw(model.config.vision_config, width, height)).eval()
    path = tmp_path / "vision.onnx"
    torch.onnx.export(module, (inputs,), path, dynamo=True, input_names=["pixel_values"],
                      output_names=["image_features"], verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_out,) = session.run(None, {"pixel_values": inputs.numpy()})
    with torch.no_grad():
        expected = module(inputs).numpy()
    np.testing.assert_allclose(graph_out, expected, rtol=0, atol=1e-5)
    reports = check_path(str(path), parse_trt_version("10.3"))
    assert [finding for report in reports for finding in report.errors + report.warnings] == []


def test_an_image_size_off_the_window_is_refused(qwen):
    for width, height in SIZES:
        check_image_size(qwen[0].config.vision_config, width, height)
    with pytest.raises(InputError, match=r"image size 230x224 is not a multiple of 112 px"):
        check_image_size(qwen[0].config.vision_config, 230, 224)


def prompt_ids(qwen, width: int, height: int, question: str):
    model, tokenizer, _ = qwen
    thw = grid_thw(model.config.vision_config, width, height)
    merged = (thw[0], thw[1] // 2, thw[2] // 2)
    text = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                                         add_generation_prompt=True, tokenize=False)
    count = merged[0] * merged[1] * merged[2]
    return tokenizer(text.replace("<|image_pad|>", "<|image_pad|>" * count), return_tensors="pt")["input_ids"], merged


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_mrope_rows_equal_get_rope_index(qwen, size):
    model = qwen[0]
    ids, merged = prompt_ids(qwen, *size, "what shape is the blue object?")
    image = ids[0] == model.config.image_token_id
    before = int(image.to(torch.int64).argmax())
    after = ids.shape[1] - before - int(image.sum())
    thw = torch.tensor([grid_thw(model.config.vision_config, *size)])
    expected, deltas = model.model.get_rope_index(ids, image.to(torch.int32)[None], thw)
    rows = image_prompt_positions(before, merged, after)
    assert torch.equal(rows, expected)
    assert first_decode_position(rows) == ids.shape[1] + int(deltas)


def test_llama_family_segments_run_qwen_layers_with_mrope_rows(qwen):
    """Prefill (the export form and the torch runtime's in-place form) and one decode step at max + 1 equal
    transformers' generate logits."""
    model = qwen[0]
    width, height = 336, 224
    inputs = pixels(None, width, height, "color")
    ids, merged = prompt_ids(qwen, width, height, "what color is the triangle?")
    image = ids[0] == model.config.image_token_id
    with torch.no_grad():
        out = model.generate(input_ids=ids, pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                             mm_token_type_ids=image.to(torch.int32)[None], max_new_tokens=2, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
        text_model = model.model.language_model
        decoder = LlamaFamilyDecoder(text_model.embed_tokens, text_model.layers, text_model.rotary_emb, text_model.norm,
                                     model.lm_head)
        hidden = text_model.embed_tokens(ids)[0]
        hidden[image] = QwenVisionFeatures(model.model.visual, grid_thw(model.config.vision_config, width, height))(
            inputs["pixel_values"])
        before = int(image.to(torch.int64).argmax())
        rows = image_prompt_positions(before, merged, ids.shape[1] - before - int(image.sum()))
        s = ids.shape[1]
        for in_place in (False, True):
            segment = decoder.segment(0, decoder.num_layers, True, in_place=in_place)
            kv = torch.zeros(decoder.num_layers, 2, decoder.num_kv_heads, s + 4, decoder.head_dim)
            logits, kv = segment(hidden[None], rows, torch.tensor(0), kv)
            torch.testing.assert_close(logits[0], out.logits[0][0], rtol=1e-5, atol=1e-5)
        token = out.sequences[0, s:s + 1]
        position = torch.full((3, 1, 1), first_decode_position(rows))
        logits, _ = segment(text_model.embed_tokens(token)[None], position, torch.tensor(s), kv)
        torch.testing.assert_close(logits[0], out.logits[1][0], rtol=1e-5, atol=1e-5)
