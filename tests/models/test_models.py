"""Tiny checkpoints, the model registry, the LLaVA-NeXT adapter's token counts, prompts and image inputs."""

import copy
import io

import numpy as np
import pytest
import torch
from helpers import PROMPTS, make_pipeline, random_image
from PIL import Image

from trio_edge.errors import InputError, ModelNotFoundError
from trio_edge.models import registry
from trio_edge.models.llava import LlavaNextAdapter
from trio_edge.models.preprocess import letterbox, load_image


# ---- tiny builder ------------------------------------------------------------------------------------------
def test_tiny_reloads_with_auto_classes_offline(tiny_model_dir, tiny, monkeypatch):
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = AutoConfig.from_pretrained(tiny_model_dir, local_files_only=True)
    assert config.model_type == "llava_next"
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, local_files_only=True)
    assert isinstance(model, LlavaNextForConditionalGeneration)
    processor = AutoProcessor.from_pretrained(tiny_model_dir, local_files_only=True)
    assert isinstance(processor, LlavaNextProcessor)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_index
    ids = tokenizer("USER: <image>\nwhat color is the circle? ASSISTANT:")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
    assert ids.count(config.image_token_index) == 1
    # Same weights as the registry's load.
    theirs = dict(tiny.model.named_parameters())
    for name, value in model.named_parameters():
        assert torch.equal(value, theirs[name]), name


def test_tiny_is_small(tiny):
    count = sum(p.numel() for p in tiny.model.parameters())
    assert 0 < count <= 2_000_000
    text = tiny.model.config.text_config
    assert text.num_hidden_layers == 4 and text.num_key_value_heads < text.num_attention_heads  # GQA


def test_tiny_build_is_deterministic(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from trio_edge.models.tiny import make_tiny_llava_next

    again = load_file(make_tiny_llava_next(tmp_path / "again", seed=0) / "model.safetensors")
    first = load_file(tiny_model_dir / "model.safetensors")
    assert again.keys() == first.keys()
    assert all(torch.equal(again[k], first[k]) for k in first)


# ---- registry errors ---------------------------------------------------------------------------------------
def test_unknown_alias():
    with pytest.raises(ModelNotFoundError) as info:
        registry.load("llava-next-13b")
    message = str(info.value)
    assert "'llava-next-13b'" in message
    for alias in registry.ALIASES:
        assert alias in message


@pytest.fixture
def offline_empty_cache(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache, as on a fresh offline machine."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def test_uncached_hub_id_offline(offline_empty_cache):
    with pytest.raises(ModelNotFoundError) as info:
        registry.load("nobody-here/not-a-model")
    error = info.value
    lines = str(error).splitlines()
    assert "nobody-here/not-a-model" in lines[0]
    assert len(lines[0]) < 400 and len(lines) <= 3
    assert "Traceback" not in str(error)
    assert "hf download nobody-here/not-a-model" in str(error)  # how to fix
    assert error.__cause__ is None and error.__suppress_context__  # no chained traceback wall


def test_unreachable_hub_fails_in_seconds(monkeypatch, tmp_path):
    """Not marked offline, nothing cached, and no hub answering: one clear error at once, not minutes of the
    hub client's retries (port 9 on localhost refuses the connection)."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in registry.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        registry.load("nobody-here/not-a-model")
    assert time.perf_counter() - started < 20
    first = str(info.value).splitlines()[0]
    assert "not in the local cache, and the hub at 127.0.0.1:9 is unreachable from this machine" in first
    assert "hf download nobody-here/not-a-model" in str(info.value)


def test_uncached_alias_offline_names_the_hub_id(offline_empty_cache):
    with pytest.raises(ModelNotFoundError) as info:
        registry.load("llava-next-7b")
    assert "llava-hf/llava-v1.6-vicuna-7b-hf" in str(info.value).splitlines()[0]


def test_directory_without_checkpoint(tmp_path):
    with pytest.raises(ModelNotFoundError, match=str(tmp_path)):
        registry.load(str(tmp_path))


def test_local_directory_loads(tiny_model_dir, tiny):
    assert tiny.source == str(tiny_model_dir)
    assert isinstance(tiny.adapter, LlavaNextAdapter)


# ---- image-token counts at every grid ----------------------------------------------------------------------
def test_image_token_count_matches_hf_processor_at_every_grid(tiny, images):
    adapter = tiny.adapter
    pinpoints = adapter.pinpoints()
    assert len(pinpoints) == 4 and len(set(pinpoints)) == 4
    for grid in pinpoints:
        adapter.validate_grid(grid)
        expected = adapter.image_token_count(grid)
        for image in reversed(images[:4]):  # images[0] last: its features are compared below
            inputs = adapter.hf_inputs(image, PROMPTS[0], grid)
            assert int((inputs["input_ids"] == adapter.image_token_id).sum()) == expected, grid
            assert inputs["image_sizes"][0].tolist() == [grid[1], grid[0]]
            # The packed image features transformers computes have the same count.
            with torch.no_grad():
                features = tiny.model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                               image_sizes=inputs["image_sizes"]).pooler_output
            assert sum(f.shape[0] for f in features) == expected
        # ... and so does the adapter's fixed-grid vision module, with the same numbers.
        with torch.no_grad():
            ours = adapter.vision_module(grid)(adapter.pixel_values(images[0], grid))
        assert ours.shape == (expected, tiny.model.config.text_config.hidden_size)
        torch.testing.assert_close(ours, torch.cat(list(features)), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="56x56"):
        adapter.validate_grid((84, 84))


def test_letterbox_keeps_aspect_and_size():
    image = random_image(200, 50, seed=3)
    boxed = letterbox(image, 112, 112, (1, 2, 3))
    assert boxed.size == (112, 112) and boxed.mode == "RGB"
    array = np.asarray(boxed)
    assert tuple(array[0, 0]) == (1, 2, 3) and tuple(array[-1, -1]) == (1, 2, 3)  # bars
    assert tuple(array[56, 56]) != (1, 2, 3)


@pytest.mark.parametrize("grid", [(112, 56), (56, 112), (56, 56)])
def test_pipeline_at_other_grids_matches_hf_generate(tiny, images, grid):
    adapter = tiny.adapter
    pipe = make_pipeline(tiny, "", grid=grid)
    inputs = adapter.hf_inputs(images[3], PROMPTS[3], grid)
    with torch.no_grad():
        expected = tiny.model.generate(**inputs, do_sample=False, max_new_tokens=6)[0, inputs["input_ids"].shape[1]:]
    assert pipe.generate(images[3], PROMPTS[3], max_new_tokens=6).token_ids == expected.tolist()


# ---- prompts (DESIGN.md section 5) -------------------------------------------------------------------------
def test_prompt_with_placeholder_is_verbatim(tiny):
    adapter = tiny.adapter
    verbatim = "SYSTEM: be short. USER: <image>\nwhat color? ASSISTANT:"
    assert adapter.format_prompt(verbatim) == verbatim
    assert adapter.format_prompt("<image>") == "<image>"


def test_default_template_otherwise(tiny):
    adapter = tiny.adapter
    assert not getattr(tiny.processor, "chat_template", None)  # the tiny processor has none
    assert adapter.format_prompt("what color is the circle?") == "USER: <image>\nwhat color is the circle? ASSISTANT:"
    ids = adapter.prompt_ids("what color is the circle?", 88)
    same = adapter.prompt_ids("USER: <image>\nwhat color is the circle? ASSISTANT:", 88)
    assert torch.equal(ids, same)
    assert int((ids == adapter.image_token_id).sum()) == 88


def test_chat_template_is_applied_when_present(tiny):
    processor = copy.copy(tiny.processor)
    processor.chat_template = (
        "{% for message in messages %}<<{{ message['role'] }}>> {% for c in message['content'] %}"
        "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %} <<assistant>>{% endif %}"
    )
    adapter = LlavaNextAdapter(tiny.model.config, processor, tiny.model)
    assert adapter.format_prompt("hi there") == "<<user>> <image>\nhi there <<assistant>>"
    assert adapter.format_prompt("USER: <image>\nhi ASSISTANT:") == "USER: <image>\nhi ASSISTANT:"


@pytest.mark.parametrize("prompt", ["<image> and <image>", "USER: <image><image>\nx ASSISTANT:"])
def test_two_image_slots_is_an_input_error(tiny, image, prompt):
    with pytest.raises(InputError, match="2 image slots"):
        tiny.adapter.format_prompt(prompt)
    with pytest.raises(InputError):
        make_pipeline(tiny, "").generate(image, prompt, max_new_tokens=1)


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt_is_an_input_error(tiny, image, prompt):
    with pytest.raises(InputError, match="empty"):
        tiny.adapter.format_prompt(prompt)
    with pytest.raises(InputError, match="empty"):
        make_pipeline(tiny, "").generate(image, prompt, max_new_tokens=1)


def test_too_long_prompt_is_an_input_error(tiny, image):
    pipe = make_pipeline(tiny, "", max_text_tokens=8)
    with pytest.raises(InputError, match="text tokens"):
        pipe.generate(image, "what color is the circle in the upper left of this picture?", max_new_tokens=1)


# ---- image inputs ------------------------------------------------------------------------------------------
def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_undecodable_bytes(tiny, tmp_path):
    with pytest.raises(InputError, match="cannot decode"):
        load_image(b"this is not an image at all")
    path = tmp_path / "fake.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(InputError, match="cannot decode") as info:
        make_pipeline(tiny, "").generate(str(path), "what?", max_new_tokens=1)
    assert "fake.jpg" in str(info.value)


def test_truncated_png(tmp_path):
    data = png_bytes(random_image(64, 64, seed=1))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        load_image(path)


def test_zero_byte_file(tiny, tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty") as info:
        load_image(path)
    assert "0 bytes" in str(info.value)
    with pytest.raises(InputError, match="empty"):
        load_image(b"")


def test_missing_file(tiny, tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(InputError, match="not found") as info:
        load_image(str(path))
    assert "nope.png" in str(info.value)
    with pytest.raises(InputError, match="not found"):
        make_pipeline(tiny, "").generate(path, "what?", max_new_tokens=1)
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path)  # a directory is not an image file


def odd_images():
    base = random_image(90, 60, seed=5)
    gray16 = (np.linspace(0, 65535, 60 * 90).reshape(60, 90)).astype(np.uint16)
    palette_alpha = base.convert("P")
    palette_alpha.info["transparency"] = 0
    return {
        "L": base.convert("L"),
        "1": base.convert("1"),
        "LA": base.convert("LA"),
        "RGBA": base.convert("RGBA"),
        "P": base.convert("P"),
        "P+transparency": palette_alpha,
        "CMYK": base.convert("CMYK"),
        "I;16": Image.fromarray(gray16),
        "I;16 png": png_bytes(Image.fromarray(gray16)),
        "I": Image.fromarray(gray16.astype(np.int32)),
        "F": Image.fromarray(gray16.astype(np.float32) / 65535.0),
        "RGBA png": png_bytes(base.convert("RGBA")),
        "L png file": None,  # written below
    }


@pytest.mark.parametrize("kind", sorted(odd_images()))
def test_odd_image_modes_are_converted_and_run(tiny, kind, tmp_path):
    source = odd_images()[kind]
    if source is None:
        source = tmp_path / "gray.png"
        random_image(90, 60, seed=5).convert("L").save(source)
    image = load_image(source)
    assert image.mode == "RGB" and image.size == (90, 60)
    pipe = make_pipeline(tiny, "0:30,2:12")
    result = pipe.generate(source, PROMPTS[0], max_new_tokens=2)
    assert len(result.token_ids) >= 1 and [len(k) for k in result.kept] == [30, 12]


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgb = np.asarray(load_image(rgba))
    assert tuple(rgb[0, 0]) == (10, 20, 30)
    assert tuple(rgb[3, 3]) == (255, 255, 255)


def test_16_bit_is_stretched_to_8_bit():
    gray16 = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    rgb = np.asarray(load_image(Image.fromarray(gray16)))
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[0, 1, 0] == round(255 * 1000 / 4000)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    rgb = np.asarray(load_image(buffer.getvalue()))
    assert rgb[8, 8, 0] > 200 and rgb[8, 8, 2] < 50
