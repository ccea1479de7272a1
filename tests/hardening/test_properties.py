"""Property-based tests (hypothesis): input handling never fails with anything but InputError, and the pruned
sequence of a cut is exactly [text before | kept image rows | text after]."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from trio_edge.errors import InputError
from trio_edge.models.preprocess import letterbox, load_image
from trio_edge.graph_ops import pruned_index_map, rows_after_pruning
from trio_edge.trio.select_module import apply_selection

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL = settings(max_examples=50, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pipeline(hardening_export):
    from trio_edge import load

    return load(hardening_export, threads=1)


# ---- images -----------------------------------------------------------------------------------------------------
def check_image_or_input_error(data: bytes):
    try:
        image = load_image(data)
    except InputError as error:
        assert str(error)
        return None
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    boxed = letterbox(image, 56, 56, (0, 0, 0))
    assert boxed.size == (56, 56)
    return image


@FAST
@given(st.binary(max_size=4096))
@example(b"")
@example(b"\x89PNG\r\n\x1a\n")
@example(b"GIF89a")
@example(b"\xff\xd8\xff")
@example(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
@example(b"BM" + b"\x00" * 60)
def test_random_bytes_are_an_image_or_input_error(data):
    check_image_or_input_error(data)


FORMATS = [("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {}), ("WEBP", {"quality": 80}), ("BMP", {}),
           ("TIFF", {}), ("PNG", {"optimize": True})]
MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK"]


@st.composite
def damaged_images(draw):
    """A small valid image in some mode and format, then truncated, bit-flipped and/or spliced."""
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    mode = draw(st.sampled_from(MODES))
    fmt, options = draw(st.sampled_from(FORMATS))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(
        "L" if mode == "I;16" else mode)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt, **options)
    except (OSError, ValueError, KeyError):
        assume(False)  # this format cannot store this mode
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "truncate", "flip", "splice"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= 1 << draw(st.integers(0, 7))
    elif damage == "splice":
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(min_size=1, max_size=64))
    return damage, bytes(data)


@FAST
@given(damaged_images())
def test_damaged_images_are_an_image_or_input_error(case):
    damage, data = case
    image = check_image_or_input_error(data)
    if damage == "none":
        assert image is not None, "an undamaged image was refused"


# ---- prompts ----------------------------------------------------------------------------------------------------
FRAGMENTS = ["what", "color", "is", "the", "circle", "?", " ", "  ", "\n", "\t", "<image>", "<IMAGE>", "<im", "age>",
             "red", "🔴", "什么", "e\u0301", "\x00", "\udcff", "\ud800", "</s>", "<s>", "<unk>", "USER:", "ASSISTANT:"]
prompts = st.one_of(st.text(max_size=40),
                    st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join),
                    st.lists(st.sampled_from(["red", " "]), min_size=80, max_size=120).map("".join))


@MODEL
@given(prompt=prompts)
@example(prompt="")
@example(prompt="what \udcff color")
@example(prompt="<image> <image>")
def test_random_prompts_run_or_raise_input_error(pipeline, prompt):
    image = Image.new("RGB", (60, 40), (200, 30, 30))
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in prompt)
    try:
        result = pipeline.generate(image, prompt, max_new_tokens=1)
    except InputError as error:
        message = str(error)
        if not prompt.strip():
            assert "empty" in message
        elif has_surrogate:
            assert "UTF-8" in message
        elif prompt.count("<image>") > 1:
            assert "image slots" in message
        else:
            assert "text tokens" in message or "image tokens" in message, message
        return
    assert not has_surrogate and prompt.strip() and prompt.count("<image>") <= 1
    assert len(result.token_ids) == 1 and [len(k) for k in result.kept] == [40]
    assert result.prompt_tokens - pipeline.plan.num_image_tokens <= pipeline.plan.max_text_tokens


# ---- pruned sequence ------------------------------------------------------------------------------------------
@st.composite
def selections(draw):
    """A sequence of text and 1-4 image spans (several images / video frame groups, text between them) and the
    kept image tokens, ascending (as every select graph returns them)."""
    spans = draw(st.lists(st.integers(1, 16), min_size=1, max_size=4))
    gaps = [draw(st.integers(0, 8))] + [draw(st.integers(1, 4)) for _ in spans[1:]] + [draw(st.integers(0, 8))]
    rows, row = [], gaps[0]
    for span, gap in zip(spans, gaps[1:]):
        rows.extend(range(row, row + span))
        row += span + gap
    num_image = len(rows)
    kept = sorted(draw(st.lists(st.integers(0, num_image - 1), min_size=1, max_size=num_image, unique=True)))
    return row, rows, kept


@FAST
@given(selections(), st.booleans(), st.integers(0, 1000))
def test_pruned_sequence_is_the_text_and_the_kept_image_rows_in_order(selection, renumber, offset):
    seq_len, image_rows, kept_list = selection
    kept, image_positions = torch.tensor(kept_list, dtype=torch.int64), torch.tensor(image_rows, dtype=torch.int64)
    hidden = torch.randn(1, seq_len, 3)
    position_ids = torch.arange(seq_len)[None] + offset

    rows = pruned_index_map(seq_len, image_positions, kept)
    dropped = set(image_rows) - {image_rows[k] for k in kept_list}
    want_rows = [r for r in range(seq_len) if r not in dropped]
    assert rows.tolist() == want_rows
    assert rows_after_pruning(image_positions, kept).tolist() == [want_rows.index(image_rows[k]) for k in kept_list]

    hidden_out, positions = apply_selection(hidden, position_ids, image_positions, kept, renumber)
    assert torch.equal(hidden_out, hidden[:, want_rows])
    assert hidden_out.shape[1] == seq_len - len(image_rows) + len(kept_list)
    if renumber:
        assert positions.tolist() == [list(range(hidden_out.shape[1]))]
    else:
        assert positions.tolist() == [[offset + r for r in want_rows]]
