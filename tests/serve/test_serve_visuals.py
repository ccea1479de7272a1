"""trio-serve with several images and with a video, through the official `openai` client, on real server processes:
the answers equal trio-run's for the same images / clip, and every request with the wrong visual input is refused
with its status while the server goes on serving.

Slow: two server processes (a LLaVA-NeXT taking two images, a Qwen3-VL taking a video of four frames)."""

from __future__ import annotations

import json

import httpx
import pytest
from openai import BadRequestError, OpenAI
from serve_helpers import SAMPLES, data_url
from video_files import indexed_frames, write_video

from trio_edge.cli import run as run_cli

pytestmark = pytest.mark.slow
QUESTION = "which picture has the triangle?"
PICTURES = [SAMPLES / "color.png", SAMPLES / "shape.png", SAMPLES / "count.png"]
# what the model pipeline takes (trio-serve and trio-run alike), then the server's own limits
TWO_IMAGES = ("--images", "2", "--cuts", "1:60", "--max-new-tokens", "6")
VIDEO = ("--video-frames", "4", "--cuts", "1:64,2:24", "--max-new-tokens", "6")
VIDEO_LIMITS = ("--max-video-seconds", "5", "--max-video-mb", "0.5")


@pytest.fixture(scope="module")
def images_server(start_server):
    return start_server("tiny-random", *TWO_IMAGES)


@pytest.fixture(scope="module")
def video_server(start_server):
    return start_server("tiny-random-qwen3", *VIDEO, *VIDEO_LIMITS)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    return write_video(path, indexed_frames(24, 96, 64), fps=8)


def client_of(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def message(question: str, *parts: dict) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]


def image_part(path) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(path)}}


def video_part(data, mime: str = "video/mp4") -> dict:
    return {"type": "video_url", "video_url": {"url": data_url(data, mime)}}


def trio_run(source: str, options: tuple, visual: list[str], capsys) -> dict:
    assert run_cli.main([source, *visual, "--prompt", QUESTION, "--json", *options]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_two_images_answer_as_trio_run(images_server, capsys):
    client = client_of(images_server)
    expected = trio_run("tiny-random", TWO_IMAGES, ["--image", str(PICTURES[0]), "--image", str(PICTURES[1])],
                        capsys)
    completion = client.chat.completions.create(model="tiny-random", max_tokens=6, messages=message(
        QUESTION, image_part(PICTURES[0]), image_part(PICTURES[1])))
    assert completion.choices[0].message.content == expected["text"]
    assert completion.usage.model_extra["image_tokens"]["before_pruning"] == 176
    assert completion.usage.model_extra["image_tokens"]["kept_per_cut"] == [60]


@pytest.mark.parametrize("parts, code", [((0,), "too_few_images"), ((0, 1, 2), "too_many_images"),
                                         ((), "no_image")])
def test_another_number_of_images_is_refused(images_server, parts, code):
    with pytest.raises(BadRequestError) as caught:
        client_of(images_server).chat.completions.create(model="tiny-random", messages=message(
            QUESTION, *(image_part(PICTURES[i]) for i in parts)))
    assert caught.value.code == code


def test_a_video_answers_as_trio_run(video_server, clip, capsys):
    expected = trio_run("tiny-random-qwen3", VIDEO, ["--video", str(clip)], capsys)
    completion = client_of(video_server).chat.completions.create(
        model="tiny-random-qwen3", max_tokens=6, messages=message(QUESTION, video_part(clip)))
    assert completion.choices[0].message.content == expected["text"]
    assert completion.usage.model_extra["image_tokens"]["kept_per_cut"] == [64, 24]


def test_bad_videos_are_refused_and_the_server_goes_on(video_server, clip, tmp_path):
    mp4 = clip.read_bytes()
    long_clip = write_video(None, indexed_frames(48, 96, 64), fps=8)  # 6 s, over --max-video-seconds 5
    big = write_video(None, indexed_frames(40, 320, 240), fps=8, codec="ffv1", container="matroska")  # over --max-video-mb 0.5
    cases = {
        "invalid_video": [video_part(mp4[: len(mp4) // 2])],
        "invalid_video/long": [video_part(long_clip)],
        "invalid_video/short": [video_part(write_video(None, indexed_frames(3, 96, 64), fps=8))],
        "unsupported_video_type": [video_part(mp4, "video/ogg")],
        "video_too_large": [video_part(big, "video/x-matroska")],
        "wrong_visual_input": [image_part(PICTURES[0])],
        "wrong_visual_input/both": [video_part(mp4), image_part(PICTURES[0])],
    }
    for kind, parts in cases.items():
        response = httpx.post(video_server.url + "/v1/chat/completions", timeout=120,
                              json={"model": "tiny-random-qwen3", "messages": message(QUESTION, *parts)})
        expected_status = 413 if kind == "video_too_large" else 400
        assert response.status_code == expected_status, (kind, response.text)
        error = response.json()["error"]
        assert error["code"] == kind.split("/")[0] and "\n" not in error["message"], (kind, error)
    answer = client_of(video_server).chat.completions.create(model="tiny-random-qwen3", max_tokens=2,
                                                             messages=message(QUESTION, video_part(mp4)))
    assert answer.choices[0].finish_reason in ("stop", "length")
