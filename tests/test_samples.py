"""The sample images and clip ship in the package and are reachable from any directory; the public API lists them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

import trio_edge
from trio_edge import samples


def test_every_sample_is_an_image_with_its_question_and_the_clip_decodes():
    from trio_edge.models.video import linspace_indices, load_video

    assert samples.names() == ["color", "count", "moving", "shape"]
    for record in samples.records():
        assert Image.open(record["image"]).size[0] > 0 and record["question"] and record["answer"]
    assert samples.path("color.png") == samples.path("color")
    clip = load_video(samples.path("moving"), 16, linspace_indices)
    assert (clip.total_frames, clip.fps, clip.frames[0].size) == (16, 4.0, (224, 224))
    assert samples.path("moving.mp4") == samples.path("moving")


def test_an_unknown_sample_says_which_exist():
    with pytest.raises(trio_edge.InputError, match="no sample named 'cat'; the samples are color, count, moving, shape"):
        samples.path("cat")
    assert samples.path("color.png") == samples.path("color") and samples.path("moving.mp4").suffix == ".mp4"
    for wrong_suffix in ("color.mp4", "moving.png"):  # a suffix given is the file's, not a hint
        with pytest.raises(trio_edge.InputError, match=f"no sample named '{wrong_suffix}'"):
            samples.path(wrong_suffix)


def test_the_module_prints_paths_from_any_directory(tmp_path):
    done = subprocess.run([sys.executable, "-m", "trio_edge.samples", "color", "shape"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == [str(samples.path("color")), str(samples.path("shape"))]
    bad = subprocess.run([sys.executable, "-m", "trio_edge.samples", "cat"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no sample named 'cat'")


def test_public_api_is_listed():
    for name in ("export", "load", "Pipeline", "GenerationResult", "select_tokens", "Schedule", "InputError",
                 "ArtifactError", "ExportInfo", "samples"):
        assert name in trio_edge.__all__ and getattr(trio_edge, name) is not None
