"""Bad inputs through the real runtime: `trio_edge.load(export_dir)` on a tiny ONNX export,
and the CLI (`trio-run`), which must answer exit code 2 and exactly one stderr line, never a traceback.

Every row of docs/bad_inputs.md is one case here.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import random_image
from PIL import Image

from trio_edge.errors import InputError
from trio_edge.models.preprocess import MAX_IMAGE_PIXELS, load_image

PROMPT = "what color is the circle?"
MAX_NEW = 8  # the shared export's --max-new-tokens
MAX_TEXT = 48  # the shared export's --max-text-tokens


@pytest.fixture(scope="module")
def export_dir(hardening_export):
    return hardening_export


@pytest.fixture(scope="module")
def pipeline(export_dir):
    from trio_edge import load

    return load(export_dir, threads=1)


@pytest.fixture(scope="module")
def ok_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("ok") / "ok.png"
    random_image(120, 80, seed=1).save(path)
    return path


def run_cli(capsys, *args):
    from trio_edge.cli.run import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, match):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert re.search(match, lines[0]), lines[0]


# ---- crafted files -------------------------------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with a few bytes of image data: decoding it for
    real would allocate width*height*4 bytes; the guard must refuse it from the header alone."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def encoded(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def solid_frames(size=(64, 48)):
    return [Image.new("RGB", size, color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]


# ---- refused inputs: (what, image builder, prompt, options, message pattern) ------------------------------------
def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


BAD_IMAGES = {
    "corrupt PNG": (lambda t, ok: _write(t, "c.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3),
                    r"cannot decode image .*c\.png"),
    "not an image (text)": (lambda t, ok: _write(t, "notes.jpg", b"just some text\n" * 20),
                            r"not a recognised image format"),
    "truncated PNG": (lambda t, ok: _write(t, "t.png", ok.read_bytes()[: ok.stat().st_size // 2]), r"truncated"),
    "truncated JPEG": (lambda t, ok: _write(t, "t.jpg", encoded(Image.open(ok), "JPEG")[:1500]), r"truncated"),
    "zero-byte file": (lambda t, ok: _write(t, "z.png", b""), r"empty \(0 bytes\)"),
    "20000x20000 (header)": (lambda t, ok: _write(t, "huge.png", png_header_only(20000, 20000)),
                             r"huge\.png .*over the .*pixel limit \(decompression-bomb guard"),
    "13000x13000 (header)": (lambda t, ok: _write(t, "big.png", png_header_only(13000, 13000)),
                             r"decompression-bomb guard"),
    "a directory": (lambda t, ok: t, r"is a directory"),
    "missing file": (lambda t, ok: t / "nope.png", r"not found"),
    "a device (/dev/null)": (lambda t, ok: Path("/dev/null"), r"not a regular file"),
}

BAD_PROMPTS = {
    "empty prompt": ("", r"prompt is empty"),
    "whitespace prompt": (" \n\t ", r"prompt is empty"),
    "two image slots": ("<image> compare <image>", r"2 image slots"),
    "prompt over the maximum": (" ".join(["red"] * (MAX_TEXT + 20)), r"--max-text-tokens"),
    "lone surrogate (non-UTF-8 argv)": ("what\udcffcolor", r"not valid UTF-8 .*byte 0xff"),
    "lone surrogate U+D800": ("what \ud800 color", r"not valid UTF-8 .*U\+D800"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_refused_by_pipeline_and_cli(case, pipeline, export_dir, ok_png, tmp_path, capsys):
    build, match = BAD_IMAGES[case]
    image = build(tmp_path, ok_png)
    with pytest.raises(InputError, match=match):
        pipeline.generate(image, PROMPT, max_new_tokens=2)
    code, out, err = run_cli(capsys, export_dir, "--image", image, "--prompt", PROMPT, "--max-new-tokens", 2)
    assert_one_error_line(code, err, match)
    assert out == ""


@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
def test_bad_prompt_is_refused_by_pipeline_and_cli(case, pipeline, export_dir, ok_png, capsys):
    prompt, match = BAD_PROMPTS[case]
    with pytest.raises(InputError, match=match):
        pipeline.generate(ok_png, prompt, max_new_tokens=2)
    code, _, err = run_cli(capsys, export_dir, "--image", ok_png, "--prompt", prompt, "--max-new-tokens", 2)
    assert_one_error_line(code, err, match)


@pytest.mark.parametrize("max_new", [MAX_NEW + 1, 1000, -1])
def test_max_new_tokens_beyond_the_export(max_new, pipeline, export_dir, ok_png, capsys):
    with pytest.raises(InputError, match="--max-new-tokens"):
        pipeline.generate(ok_png, PROMPT, max_new_tokens=max_new)
    code, _, err = run_cli(capsys, export_dir, "--image", ok_png, "--prompt", PROMPT, "--max-new-tokens", max_new)
    assert_one_error_line(code, err, r"outside 0\.\.8.*--max-new-tokens")


def test_non_utf8_and_non_text_arguments_through_the_api(pipeline, ok_png):
    with pytest.raises(InputError, match=r"not valid UTF-8 \(byte 0xff at offset 4\)"):
        pipeline.generate(ok_png, b"what\xffcolor", max_new_tokens=1)
    with pytest.raises(InputError, match="must be text"):
        pipeline.generate(ok_png, None, max_new_tokens=1)
    with pytest.raises(InputError, match="must be a file path, bytes or a PIL image"):
        pipeline.generate(12345, PROMPT, max_new_tokens=1)
    with pytest.raises(InputError, match="no pixels"):
        pipeline.generate(Image.new("RGB", (0, 0)), PROMPT, max_new_tokens=1)
    # UTF-8 bytes are text: same answer as the str
    assert (pipeline.generate(ok_png, PROMPT.encode(), max_new_tokens=3).token_ids
            == pipeline.generate(ok_png, PROMPT, max_new_tokens=3).token_ids)


def test_huge_image_is_refused_from_the_header_without_decoding(tmp_path, monkeypatch):
    """The guard must act on the header: any attempt to decode pixels fails this test."""
    from PIL import ImageFile

    def no_decoding(self, *args, **kwargs):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # even with PIL's own guard switched off
    for width, height in [(20000, 20000), (13000, 13000), (MAX_IMAGE_PIXELS + 1, 1)]:
        data = png_header_only(width, height)
        with pytest.raises(InputError, match=f"{width}x{height}.*decompression-bomb guard"):
            load_image(data)
        with pytest.raises(InputError, match="decompression-bomb guard"):
            load_image(_write(tmp_path, f"h{width}.png", data))


def test_large_allowed_image_runs_with_bounded_memory(pipeline, tmp_path):
    """6000x4000 (24 Mpixel) images load and letterbox within a few copies of the pixels: measured as the
    peak-RSS growth of a fresh process, for RGB, RGBA and 16-bit PNG and a JPEG."""
    width, height = 6000, 4000
    y, x = np.mgrid[0:height, 0:width]
    rgb = Image.fromarray(np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype("uint8"))
    files = {"rgb.png": (rgb, {"compress_level": 1}), "rgb.jpg": (rgb, {"quality": 85}),
             "rgba.png": (rgb.convert("RGBA"), {"compress_level": 1}),
             "gray16.png": (Image.fromarray((x * 65535 // width).astype(np.uint16)), {"compress_level": 1})}
    for name, (image, options) in files.items():
        image.save(tmp_path / name, **options)
    del rgb, x, y
    script = (
        "import json, resource, sys\n"
        "from trio_edge.models.preprocess import load_image, letterbox\n"
        "def rss():\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmRSS'))\n"
        "result = {}\n"
        "for path in sys.argv[1:]:\n"
        "    before = max(rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
        "    image = load_image(path)\n"
        "    boxed = letterbox(image, 112, 112, (0, 0, 0))\n"
        "    size = image.size\n"
        "    del image, boxed\n"
        "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "    result[path] = [size, peak - before]\n"
        "print(json.dumps(result))\n"
    )
    for name in files:  # one fresh process per file: peak RSS is a high-water mark
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        (size, growth), = json.loads(done.stdout.strip().splitlines()[-1]).values()
        assert tuple(size) == (width, height)
        # PIL keeps RGB as 4 bytes a pixel: one copy is 92 MiB; allow two copies of it
        assert growth < 2 * 4 * width * height, f"{name}: peak RSS grew {growth / 2**20:.0f} MiB"
    result = pipeline.generate(tmp_path / "rgb.jpg", PROMPT, max_new_tokens=2)
    assert [len(k) for k in result.kept] == [40]


# ---- handled inputs ---------------------------------------------------------------------------------------------
def odd_image_files(tmp_path) -> dict[str, tuple[Path, Image.Image]]:
    """Each kind of image file and the RGB image it must be read as."""
    base = random_image(96, 64, seed=3)
    white = Image.new("RGB", base.size, (255, 255, 255))
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette_t = palette.copy()
    palette_t.info["transparency"] = 0
    gray16 = np.linspace(0, 65535, 96 * 64).reshape(64, 96).astype(np.uint16)
    frames = solid_frames()
    files = {
        "grayscale (L) PNG": ("l.png", base.convert("L"), {}, base.convert("L").convert("RGB")),
        "RGBA PNG": ("rgba.png", rgba, {}, Image.composite(rgba.convert("RGB"), white, rgba.getchannel("A"))),
        "CMYK JPEG": ("cmyk.jpg", base.convert("CMYK"), {"quality": 95}, None),
        "16-bit (I;16) PNG": ("g16.png", Image.fromarray(gray16), {},
                              Image.fromarray(np.rint(gray16 / 257.0).astype(np.uint8)).convert("RGB")),
        "palette (P) PNG": ("p.png", palette, {}, palette.convert("RGB")),
        "palette + transparency PNG": ("pt.png", palette_t, {"transparency": 0}, None),
        "animated GIF": ("a.gif", frames[0], {"save_all": True, "append_images": frames[1:], "duration": 50},
                         frames[0]),
        "animated WebP": ("a.webp", frames[0], {"save_all": True, "append_images": frames[1:], "lossless": True,
                                                "duration": 50}, frames[0]),
        "animated PNG": ("a.png", frames[0], {"save_all": True, "append_images": frames[1:]}, frames[0]),
    }
    out = {}
    for kind, (name, image, options, expected) in files.items():
        path = tmp_path / name
        image.save(path, **options)
        out[kind] = (path, expected)
    return out


ODD_KINDS = ["grayscale (L) PNG", "RGBA PNG", "CMYK JPEG", "16-bit (I;16) PNG", "palette (P) PNG",
             "palette + transparency PNG", "animated GIF", "animated WebP", "animated PNG"]


@pytest.mark.parametrize("kind", ODD_KINDS)
def test_image_modes_and_animations_are_handled(kind, pipeline, export_dir, tmp_path, capsys):
    files = odd_image_files(tmp_path)
    assert sorted(files) == sorted(ODD_KINDS)
    path, expected = files[kind]
    image = load_image(path)
    assert image.mode == "RGB" and image.size == Image.open(path).size
    if kind == "CMYK JPEG":
        assert Image.open(path).mode == "CMYK"
    if kind == "palette + transparency PNG":  # colour 0 became white, the rest kept
        source = Image.open(path)
        transparent = np.asarray(source) == 0
        assert transparent.any() and (np.asarray(image)[transparent] == 255).all()
        assert (np.asarray(image)[~transparent] == np.asarray(source.convert("RGB"))[~transparent]).all()
    if expected is not None:
        assert np.abs(np.asarray(image, np.int16) - np.asarray(expected, np.int16)).max() <= 1, kind
        # the pipeline answers exactly as for the expected RGB image (first frame for animations)
        assert (pipeline.generate(path, PROMPT, max_new_tokens=3).token_ids
                == pipeline.generate(expected, PROMPT, max_new_tokens=3).token_ids)
    result = pipeline.generate(path, PROMPT, max_new_tokens=2)
    assert [len(k) for k in result.kept] == [40] and 1 <= len(result.token_ids) <= 2
    code, out, err = run_cli(capsys, export_dir, "--image", path, "--prompt", PROMPT, "--max-new-tokens", 2)
    assert code == 0, err
    assert "error" not in err and "Traceback" not in err


def test_prompt_with_the_image_slot_is_used_verbatim(pipeline, ok_png):
    template = "USER: <image>\n{} ASSISTANT:"
    verbatim = pipeline.generate(ok_png, template.format(PROMPT), max_new_tokens=4)
    templated = pipeline.generate(ok_png, PROMPT, max_new_tokens=4)
    assert verbatim.prompt_tokens == templated.prompt_tokens
    assert verbatim.token_ids == templated.token_ids
    # the slot anywhere, even without the template, is one image
    moved = pipeline.generate(ok_png, f"{PROMPT} <image>", max_new_tokens=2)
    assert [len(k) for k in moved.kept] == [40]


def test_prompt_at_exactly_the_maximum_runs(pipeline, ok_png):
    ids = pipeline.io.prompt_ids("red", pipeline.plan.num_image_tokens)
    overhead = ids.shape[1] - pipeline.plan.num_image_tokens - 1  # template + bos around one word
    prompt = " ".join(["red"] * (MAX_TEXT - overhead))
    assert pipeline.generate(ok_png, prompt, max_new_tokens=1).prompt_tokens == MAX_TEXT + pipeline.plan.num_image_tokens
    with pytest.raises(InputError, match="49 text tokens.*at most 48"):
        pipeline.generate(ok_png, prompt + " red", max_new_tokens=1)


def test_unicode_prompts_run(pipeline, ok_png):
    for prompt in ["what colour is the circle? 🔴", "什么颜色", "cafe\u0301 ñ", "\x00 red \x7f"]:
        result = pipeline.generate(ok_png, prompt, max_new_tokens=2)
        assert 1 <= len(result.token_ids) <= 2


def test_non_utf8_argv_in_a_real_process(export_dir, ok_png):
    """Bytes that are not UTF-8 on a real command line reach Python as lone surrogates ('\\udcff')."""
    code = "import sys; from trio_edge.cli.run import main; sys.exit(main())"
    done = subprocess.run([sys.executable.encode(), b"-c", code.encode(), bytes(export_dir), b"--image", bytes(ok_png),
                           b"--prompt", b"what \xff color", b"--max-new-tokens", b"2"],
                          capture_output=True, timeout=300, env={**os.environ, "LC_ALL": "C.UTF-8"})
    err = done.stderr.decode("utf-8", "replace")
    assert_one_error_line(done.returncode, err, r"not valid UTF-8 text \(undecodable byte 0xff at character 5\)")
