"""The request and response bodies of the OpenAI chat-completions API that trio-serve speaks (pydantic v2).

Requests: the fields that change what a VLM answers are modelled and checked; parameters this server cannot
honour (n > 1, tools, logprobs, penalties, JSON response formats) are refused rather than ignored;
unknown fields are ignored, as clients send extras (`user`, `metadata`, ...).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# ---- request -----------------------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str = Field(description="data:image/png|jpeg|webp;base64,... (http(s) URLs only with --allow-remote-images)")
    detail: str | None = None  # accepted and ignored: every image is letterboxed to the export's fixed grid


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(BaseModel):
    url: str = Field(description="data:video/mp4|webm|quicktime|x-matroska|x-msvideo;base64,... (http(s) URLs only "
                                 "with --allow-remote-images)")


class VideoPart(BaseModel):
    """vLLM's convention for a video in a chat message (an export made with --video-frames takes one)."""

    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


def _refused(param: str, message: str) -> PydanticCustomError:
    """A whole-request check's refusal that still names its field (a model validator's error has no location)."""
    return PydanticCustomError("unsupported_parameter", message, {"param": param})


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # greedy unless asked: the same answer trio-run gives (OpenAI's own default would be 1.0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=1, description="one choice per request")
    # refused unless neutral: this server cannot honour them
    logprobs: bool | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[dict] | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _refuse_what_cannot_be_honoured(self):
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise _refused("stop", "stop takes at most 4 non-empty strings")
        unsupported = [name for name, neutral in (("logprobs", False), ("frequency_penalty", 0),
                                                  ("presence_penalty", 0)) if getattr(self, name) not in (None, neutral)]
        unsupported += [name for name in ("logit_bias", "tools") if getattr(self, name)]
        if self.response_format is not None and self.response_format.type != "text":
            unsupported.append("response_format")
        if unsupported:
            raise _refused(unsupported[0], f"{', '.join(unsupported)} is not supported by trio-serve; leave it out")
        return self

    @property
    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# ---- responses ---------------------------------------------------------------------------------------------
FinishReason = Literal["stop", "length"]


class ImageTokens(BaseModel):
    """Extension of `usage`: image tokens entering the decoder and left after the last cut."""

    before_pruning: int
    after_pruning: int
    kept_per_cut: list[int]


class Usage(BaseModel):
    prompt_tokens: int  # text + image tokens entering the decoder (before any pruning)
    completion_tokens: int
    total_tokens: int
    image_tokens: ImageTokens


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "trio-edge"
    # extensions: what this export takes
    max_text_tokens: int
    max_new_tokens: int
    image_tokens: int
    schedule: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
