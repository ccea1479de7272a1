"""Inputs to trace and validate each graph: examples for tracing, fresh random inputs, and the
activations of one real request recorded from the PyTorch pipeline."""

from __future__ import annotations

import torch

from ..artifact.dtypes import TORCH_DTYPES
from ..artifact.graphs import IMAGE_POSITIONS, GraphSpec, position_tensor
from ..artifact.plan import PipelinePlan

EXAMPLE_TEXT_TOKENS = 12  # text tokens around the image in example prompts


IMAGE_START = 3  # text tokens before the first image in example prompts


def example_image_positions(tokens: int, items: int) -> torch.Tensor:
    """Rows of `tokens` image tokens in an example prompt: from IMAGE_START, in `items` spans (as near equal as can
    be) with one text token between spans, as several images or video frame groups lie in a prompt."""
    spans = [tokens // items + (1 if i < tokens % items else 0) for i in range(min(items, tokens))]
    rows, row = [], IMAGE_START
    for span in spans:
        rows.extend(range(row, row + span))
        row += span + 1
    return torch.tensor(rows, dtype=torch.int64)


def random_inputs(spec: GraphSpec, plan: PipelinePlan, *, seed: int, text_tokens: int = EXAMPLE_TEXT_TOKENS,
                  image_token_id: int | None = None) -> list[tuple[str, dict]]:
    """Cases named 'random-prefill' and (for graphs with a query axis) 'random-decode'."""
    generator = torch.Generator().manual_seed(seed)
    image_tokens = plan.image_tokens_entering(spec.name)
    image_rows = example_image_positions(image_tokens, plan.items)
    seq = image_tokens + text_tokens + plan.items - 1  # the text between spans comes on top
    cases = [("random-prefill", seq, 0)]
    if spec.kind == "segment":
        cases.append(("random-decode", 1, seq + 2))
    result = []
    for case, length, past in cases:
        inputs = {}
        for tensor in spec.inputs:
            shape = [length if isinstance(d, str) else d for d in tensor.shape]
            dtype = TORCH_DTYPES[tensor.dtype]
            if tensor.name == "position_ids":
                inputs[tensor.name] = position_tensor(torch.arange(past, past + length), plan.position_rows)
            elif tensor.name == "past_length":
                inputs[tensor.name] = torch.tensor(past)
            elif tensor.name == IMAGE_POSITIONS:
                inputs[tensor.name] = image_rows
            elif tensor.name == "raters":  # SparseVLM's 0/1 rater mask: some of the text after the image
                after = torch.arange(length)[None] > image_rows[-1]
                inputs[tensor.name] = (after & (torch.rand(shape, generator=generator) < 0.5)).to(dtype)
            elif tensor.name == "input_ids":
                ids = torch.randint(5, plan.vocab_size, shape, generator=generator)
                if image_token_id is not None and length > 1:
                    ids[0, image_rows] = image_token_id
                inputs[tensor.name] = ids
            else:
                inputs[tensor.name] = torch.randn(shape, generator=generator).to(dtype)
        result.append((case, inputs))
    return result


def example_inputs(spec: GraphSpec, plan: PipelinePlan) -> dict:
    """Tracing example: a prefill-shaped case with every dynamic axis > 1 (no 0/1 specialisation)."""
    return random_inputs(spec, plan, seed=0)[0][1]


class RecordingBackend:
    """Wraps a backend and keeps the inputs of the first prefill call and first decode call per graph."""

    def __init__(self, backend):
        self.inner, self.device, self.specs = backend, backend.device, backend.specs
        self.prefill_chunk_tokens = getattr(backend, "prefill_chunk_tokens", None)
        self.cases: dict[str, list[tuple[str, dict]]] = {}

    def run(self, graph, inputs):
        calls = self.cases.setdefault(graph, [])
        query = inputs.get("hidden", inputs.get("input_ids"))
        label = "request-decode" if query is not None and query.shape[1] == 1 else "request-prefill"
        if label not in {name for name, _ in calls}:
            calls.append((label, {k: v.clone() for k, v in inputs.items()}))
        return self.inner.run(graph, inputs)


def recorded_request_inputs(modules, specs, plan: PipelinePlan, adapter, dtype: str) -> dict:
    """Run one real request (synthetic image, short prompt) through the PyTorch graphs and record inputs."""
    from PIL import Image

    from ..runtime.backends.torch_backend import TorchBackend
    from ..runtime.pipeline import Pipeline

    width, height = plan.grid
    gradient = torch.linspace(0, 255, width).repeat(height, 1)
    pixels = torch.stack([gradient, gradient.T[:height, :width] if width == height else gradient.flip(1),
                          torch.full_like(gradient, 90)], dim=-1)
    # every image (or video frame) different: the blue channel steps from one to the next
    pictures = [Image.fromarray(torch.cat([pixels[..., :2], pixels[..., 2:] + 20 * i], dim=-1).clamp(0, 255)
                                .to(torch.uint8).numpy()) for i in range(max(plan.images, plan.video_frames))]
    recorder = RecordingBackend(TorchBackend(specs, modules))
    pipeline = Pipeline(plan, recorder, adapter, stop_token_ids=[], dtype=dtype)
    request = {"video": frames_as_video(pictures)} if plan.video_frames else {
        "image": pictures if plan.images > 1 else pictures[0]}
    pipeline.generate(prompt="what is in the picture?", max_new_tokens=min(3, plan.max_new_tokens), **request)
    return recorder.cases


def frames_as_video(frames, fps: float = 2.0):
    """Frames already decoded, as the video a request carries (every frame sampled, at `fps`)."""
    from ..models.video import SampledVideo

    return SampledVideo(tuple(frames), tuple(range(len(frames))), fps, len(frames))
