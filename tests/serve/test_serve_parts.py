"""The server's parts without a server: conversation rendering, stop strings, image limits, request schema,
settings."""

from __future__ import annotations

import base64
import copy

import pytest
from pydantic import ValidationError

from trio_edge.errors import InputError
from trio_edge.models.llava import LlavaNextAdapter
from trio_edge.serve.api_errors import ApiError
from trio_edge.serve.conversation import turns_and_visuals
from trio_edge.serve.images import data_url_bytes, decode_image
from trio_edge.serve.schema import ChatCompletionRequest
from trio_edge.serve.settings import ServeSettings
from trio_edge.serve.worker import StopMatcher

IMAGE = {"type": "image"}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


# ---- conversations (the model adapter renders them) ----------------------------------------------------------
def test_one_user_turn_is_exactly_the_trio_run_prompt(tiny):
    adapter = tiny.adapter
    question = "what color is the circle?"
    assert adapter.format_conversation([{"role": "user", "content": [IMAGE, text(question)]}]) == \
        adapter.format_prompt(question) == f"USER: <image>\n{question} ASSISTANT:"
    # OpenAI's examples put the text first: LLaVA's default conversation puts the image first anyway
    assert adapter.format_conversation([{"role": "user", "content": [text(question), IMAGE]}]) == \
        adapter.format_prompt(question)


def test_several_turns_follow_llavas_vicuna_conversation(tiny):
    rendered = tiny.adapter.format_conversation([
        {"role": "system", "content": [text("be brief.")]},
        {"role": "user", "content": [IMAGE, text("what is it?")]},
        {"role": "assistant", "content": [text("a cat")]},
        {"role": "user", "content": [text("what color?")]},
    ])
    assert rendered == "be brief. USER: <image>\nwhat is it? ASSISTANT: a cat</s>USER: what color? ASSISTANT:"


def test_a_chat_template_renders_the_whole_conversation(tiny):
    processor = copy.copy(tiny.processor)
    processor.chat_template = (
        "{% for message in messages %}<<{{ message['role'] }}>> {% for c in message['content'] %}"
        "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %} <<assistant>>{% endif %}")
    adapter = LlavaNextAdapter(tiny.model.config, processor, tiny.model)
    turns = [{"role": "user", "content": [IMAGE, text("hi")]}, {"role": "assistant", "content": [text("yo")]},
             {"role": "user", "content": [text("and?")]}]
    assert adapter.format_conversation(turns) == "<<user>> <image>\nhi<<assistant>> yo<<user>> and? <<assistant>>"


@pytest.mark.parametrize("turns, message", [
    ([{"role": "user", "content": [text("no picture")]}], "has no image"),
    ([{"role": "user", "content": [IMAGE, text("q")]}, {"role": "assistant", "content": [text("a")]}],
     "end with a user message"),
    ([{"role": "system", "content": [IMAGE]}, {"role": "user", "content": [text("q")]}], "system message"),
    ([{"role": "user", "content": [IMAGE, text("see <image> here")]}], "image slot"),
    ([{"role": "user", "content": [IMAGE, text("  ")]}], "no text"),
    ([{"role": "user", "content": [IMAGE, text("bad \udcff byte")]}], "not valid UTF-8"),
])
def test_conversations_the_model_cannot_take_are_input_errors(tiny, turns, message):
    with pytest.raises(InputError, match=message):
        tiny.adapter.format_conversation(turns)


def test_a_conversation_with_more_images_than_the_export_takes_is_refused(tiny):
    """The image count is checked against what the export takes when the prompt is tokenised (two images for a
    one-image model here), with a line that says how many it takes."""
    prompt = tiny.adapter.format_conversation([{"role": "user", "content": [IMAGE, IMAGE, text("two")]}])
    assert prompt.count("<image>") == 2
    with pytest.raises(InputError, match="2 image slots .* takes exactly 1 image"):
        tiny.adapter.prompt_ids(prompt, 88)


def test_openai_messages_become_turns_and_image_urls():
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what?"},
                                     {"type": "image_url", "image_url": {"url": "data:x"}}]}]})
    turns, urls, videos = turns_and_visuals(request.messages)
    assert videos == []
    assert turns == [{"role": "system", "content": [text("be brief")]},
                     {"role": "user", "content": [text("what?"), IMAGE]}]
    assert urls == ["data:x"]


# ---- stop strings --------------------------------------------------------------------------------------------
def test_stop_strings_cut_the_answer_and_hold_back_what_could_become_one():
    matcher = StopMatcher(["STOP", "\n\n"])
    assert matcher.visible("hello") == ("hello", False)
    assert matcher.visible("hello ST") == ("hello ", False)  # "ST" may become "STOP"
    assert matcher.visible("hello STOP and more") == ("hello ", True)
    assert matcher.visible("a\n") == ("a", False)
    assert matcher.visible("a\n\nb STOP") == ("a", True)  # the earliest stop wins
    assert StopMatcher([]).visible("anything") == ("anything", False)


# ---- images ----------------------------------------------------------------------------------------------------
def png_bytes(width=8, height=6) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_data_urls_decode_within_limits():
    data = png_bytes()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert data_url_bytes(url, 10_000) == data
    assert data_url_bytes(url.replace("base64,", "base64,\n"), 10_000) == data  # wrapped base64
    assert decode_image(data, 1000).size == (8, 6)


@pytest.mark.parametrize("url, status, code", [
    ("data:image/png;base64," + "A" * 2000, 413, "image_too_large"),
    ("data:image/gif;base64,R0lGODlh", 400, "unsupported_image_type"),
    ("data:image/png,rawbytes", 400, "invalid_image"),
    ("data:image/png;base64,@@@@", 400, "invalid_image"),
    ("not a data url", 400, "invalid_image"),
])
def test_bad_data_urls_are_refused(url, status, code):
    with pytest.raises(ApiError) as refused:
        data_url_bytes(url, 1000)
    assert (refused.value.status, refused.value.code) == (status, code)


def test_images_over_the_pixel_limit_or_in_other_formats_are_refused():
    with pytest.raises(ApiError, match="pixels") as refused:
        decode_image(png_bytes(100, 100), 9_999)
    assert refused.value.code == "image_too_many_pixels"
    import io

    from PIL import Image

    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    with pytest.raises(ApiError) as refused:
        decode_image(gif.getvalue(), 1000)
    assert refused.value.code == "unsupported_image_type"


# ---- request schema and settings -----------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{"n": 2}, {"logprobs": True}, {"tools": [{"type": "function"}]},
                                   {"frequency_penalty": 0.5}, {"response_format": {"type": "json_object"}},
                                   {"stop": ["a", "b", "c", "d", "e"]}, {"stop": [""]}, {"temperature": 3},
                                   {"top_p": 0}, {"max_tokens": 0}])
def test_parameters_that_cannot_be_honoured_are_refused(extra):
    from trio_edge.serve.app import _validation_error

    with pytest.raises(ValidationError) as refused:
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], **extra})
    error = _validation_error(refused.value.errors()).body()["error"]  # the 400 a client gets: it names the field
    assert error["param"] == next(iter(extra)) and not error["message"].startswith("Value error"), error


def test_a_body_that_is_not_a_json_object_says_to_send_one():
    from fastapi.testclient import TestClient

    from trio_edge.serve.app import create_app

    never_opened = create_app(lambda: None, ServeSettings(model_name="m"))  # no lifespan: validation only
    answer = TestClient(never_opened).post("/v1/chat/completions", content=b'{"model": "m", "messages": []}',
                                           headers={"Content-Type": "text/plain"})  # curl -d without -H
    assert answer.status_code == 400
    assert "Content-Type: application/json" in answer.json()["error"]["message"]


def test_neutral_and_unknown_parameters_are_accepted():
    request = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1, "logprobs": False,
        "frequency_penalty": 0, "response_format": {"type": "text"}, "user": "someone", "stop": "END"})
    assert request.stop_sequences == ["END"] and not request.include_usage


@pytest.mark.parametrize("options", [{"max_queue": -1}, {"timeout": 0}, {"timeout": float("nan")},
                                     {"api_key": " "}, {"model_name": ""}, {"max_image_bytes": 0}])
def test_settings_are_checked(options):
    with pytest.raises(InputError):
        ServeSettings(**{"model_name": "m", **options})


def test_accepted_connections_send_without_waiting_for_acks():
    """TCP_NODELAY on the listening socket, inherited by each accepted connection: without it a response's body
    waits for the client's delayed ACK of its headers (~40 ms per request, measured in serve_bench)."""
    import socket

    from trio_edge.serve.server import _bind

    listener = _bind("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname()[:2]) as client:
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert client.fileno() == -1  # closed by the with block
