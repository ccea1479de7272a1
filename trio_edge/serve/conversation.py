"""OpenAI messages -> the prompt text the pipeline takes, checked against the export before it is queued.

The chat is rendered by the model adapter's `format_conversation` (the model's chat template, else its
family default), so one user message [image, question] gives exactly the prompt `trio-run` builds for that
question. Checks run on the event loop with the server's own copy of the processor: the pipeline's
tokenizer belongs to the worker thread (a fast tokenizer used from two threads at once can fail).
"""

from __future__ import annotations

import copy

from ..errors import InputError
from .api_errors import bad_request
from .schema import Message

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def turns_and_visuals(messages: list[Message]) -> tuple[list[dict], list[str], list[str]]:
    """The chat as the adapter's turns (image parts become {"type": "image"}, video parts {"type": "video"}), and
    the image URLs and video URLs, each in order."""
    turns, images, videos = [], [], []
    for message in messages:
        content = message.content
        if content is None or isinstance(content, str):
            parts = [{"type": "text", "text": content or ""}]
        else:
            parts = []
            for part in content:
                if part.type == "text":
                    parts.append({"type": "text", "text": part.text})
                elif part.type == "image_url":
                    parts.append({"type": "image"})
                    images.append(part.image_url.url)
                else:
                    parts.append({"type": "video"})
                    videos.append(part.video_url.url)
        turns.append({"role": ROLES[message.role], "content": parts})
    return turns, images, videos


class PromptChecker:
    """Renders a chat into the pipeline's prompt and refuses prompts the export cannot take."""

    def __init__(self, pipeline):
        self.io = copy.copy(pipeline.io)
        self.io.processor = copy.deepcopy(pipeline.io.processor)  # its own tokenizer (see the module docstring)
        self.plan = pipeline.plan
        self.max_text_tokens = pipeline.plan.max_text_tokens

    def prompt(self, turns: list[dict], video=None) -> str:
        """`video`: the request's decoded video (its frame times are text in some families' prompts)."""
        plan = self.plan
        try:
            prompt = self.io.format_conversation(turns)
            ids = self.io.prompt_ids(prompt, plan.image_tokens_per_item, images=plan.images, video=video)
            text_tokens = ids.shape[1] - plan.num_image_tokens
        except InputError as error:
            raise bad_request("invalid_request", str(error), "messages") from None
        if text_tokens > self.max_text_tokens:
            raise bad_request("context_length_exceeded", f"the messages make {text_tokens} text tokens; this export "
                              f"takes at most {self.max_text_tokens} (shorten them, or re-export with a larger "
                              "--max-text-tokens)", "messages")
        return prompt
