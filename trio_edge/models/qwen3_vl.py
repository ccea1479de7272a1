"""Adapter for Qwen3-VL (Qwen3VLForConditionalGeneration, dense 2B/4B/8B): what differs from Qwen2.5-VL.

Shared with Qwen2.5-VL (Qwen2_5_VLAdapter, subclassed): one image at a fixed size fed as Qwen's flattened patches,
M-RoPE positions (get_rope_index for one still image is the same closed form, models.mrope: text after the image
resumes at the image's largest position + 1, decoding at the prompt's max + 1), original positions after a cut,
TRIO's Qwen proxy (the layer just run, the input embedding table as its head: ocy1/TRIO has no Qwen3-VL code, its
Qwen2.5-VL port is carried over unchanged), the PIL image processor without torchvision.

Different here:
- vision: patch 16 (image sides in multiples of 32 px), no window attention, a learned position table
  interpolated to the grid (models.qwen3_vision, constants at a fixed size);
- DeepStack: the merged features of vision blocks `deepstack_visual_indexes` are added to the image positions
  after decoder layers 0..k-1. The vision graph returns them as (M, k*D) beside the image features, the embed graph
  lays them out over the sequence, the segments holding layers < k add them, and a cut before layer k gathers
  the planes of its kept tokens (plan.deepstack_layers; artifact.graphs);
- the text rotary interleaves T/H/W over the frequencies (mrope_interleaved) and attention normalises q and k per
  head (QK-norm; the Llama-family segments apply q_norm/k_norm when a layer has them);
- the chat format: Qwen3-VL-Instruct's, with no default system message.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ScheduleError
from .qwen2_5_vl import Qwen2_5_VLAdapter, qwen_chat_template
from .qwen3_vision import Qwen3VisionFeatures, check_image_size, image_side_multiple

DEFAULT_IMAGE_SIDE = 768  # 48 x 48 patches -> 576 image tokens, the count TRIO's published budgets are set on
# Qwen3-VL-Instruct's chat format for text and one image: no system turn unless the chat has one
CHAT_TEMPLATE = qwen_chat_template(None)


class InterleavedMRotary(nn.Module):
    """Qwen3-VL's text rotary (transformers' Qwen3VLTextRotaryEmbedding) in an export-friendly form: position_ids
    (3, 1, T) -> cos, sin (1, T, hd). Frequency j takes its angle from the temporal, height or width row as
    transformers' interleaving does (H at j = 1, 4, ... below 3 * mrope_section[1], W at j = 2, 5, ... below
    3 * mrope_section[2], T elsewhere); chosen with two Where ops over a constant row map instead of strided
    in-place writes (which export as ScatterND). Reads the wrapped module's inv_freq and attention_scaling."""

    def __init__(self, rotary):
        super().__init__()
        self.rotary = rotary
        row = torch.zeros(rotary.inv_freq.shape[0], dtype=torch.int64)
        for dim in (1, 2):
            row[dim:rotary.mrope_section[dim] * 3:3] = dim
        self.register_buffer("row", row, persistent=False)

    def forward(self, x, position_ids):
        inv_freq = self.rotary.inv_freq.to(device=x.device, dtype=torch.float)
        freqs = position_ids.expand(3, -1, -1)[..., None].float() * inv_freq  # (3, B, T, hd/2)
        freqs = torch.where(self.row == 1, freqs[1], torch.where(self.row == 2, freqs[2], freqs[0]))
        angles = torch.cat((freqs, freqs), dim=-1)
        scaling = self.rotary.attention_scaling
        return (angles.cos() * scaling).to(x.dtype), (angles.sin() * scaling).to(x.dtype)


VISION_METHODS_REFUSED = ("Qwen3-VL has no pruning inside the vision tower: TRIO's vision stage is in its authors' "
                          "Qwen2.5-VL port only and VisionZip needs a [CLS] token; use a decoder method (--method trio, "
                          "fastv, dart, pdrop, random, uniform)")


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    """Qwen3-VL: one image at a fixed size (multiples of 32 px), DeepStack, interleaved M-RoPE, QK-norm."""

    family = "qwen3-vl"
    model_type = "qwen3_vl"
    chat_template = CHAT_TEMPLATE
    default_image_side = DEFAULT_IMAGE_SIDE

    @staticmethod
    def text_rotary(text_model):
        return InterleavedMRotary(text_model.rotary_emb)

    @property
    def deepstack_layers(self) -> int:
        """Decoder layers after which DeepStack adds vision features (one per deepstack_visual_indexes entry)."""
        return len(self.vision_config.deepstack_visual_indexes)

    def image_side_multiple(self) -> int:
        return image_side_multiple(self.vision_config)

    def validate_grid(self, grid: tuple[int, int]) -> None:
        check_image_size(self.vision_config, *grid)

    def vision_module(self, grid: tuple[int, int], rule=None):
        if rule is not None:
            raise ScheduleError(VISION_METHODS_REFUSED)
        return Qwen3VisionFeatures(self.model.model.visual, self._thw(grid))

    # ---- video: one visual run per frame group, after a timestamp (transformers' Qwen3VLProcessor) ----------------
    @staticmethod
    def sample_frame_indices(total: int, frames: int) -> list[int]:
        """Qwen3-VL's uniform sampling (transformers' Qwen3VLVideoProcessor.sample_frames with num_frames)."""
        from .video import linspace_indices

        return linspace_indices(total, frames)

    def group_timestamps(self, video) -> list[float]:
        """Seconds of each frame group: the mean of its first and last frame's time (Qwen3VLProcessor's
        _calculate_timestamps, the frame count already a whole number of groups)."""
        times, group = video.timestamps_s(), self.frames_per_group
        return [(times[i] + times[i + group - 1]) / 2 for i in range(0, len(times), group)]

    def _expand_video(self, text: str, tokens_per_item: int, video, pad: str) -> str:
        """The video slot -> for each frame group '<T seconds>' + <|vision_start|> + its tokens + <|vision_end|>,
        inside the template's own <|vision_start|> ... <|vision_end|>, exactly as transformers 5's Qwen3VLProcessor
        expands it (it replaces the video pad alone; vLLM drops the outer pair)."""
        start, end = (self.processor.tokenizer.convert_ids_to_tokens(int(i)) for i in
                      (self.config.vision_start_token_id, self.config.vision_end_token_id))
        blocks = "".join(f"<{seconds:.1f} seconds>{start}{pad * tokens_per_item}{end}"
                         for seconds in self.group_timestamps(video))
        return text.replace(self.video_token, blocks)

    def _video_spans(self, video, grid) -> list:
        """One visual run per frame group (get_rope_index splits the video's grid into t grids of one temporal
        patch, the timestamps' text between them)."""
        from .mrope import VisualSpan

        _, h, w = self.merged_grid(grid)
        return [VisualSpan((1, h, w))] * (len(video.frames) // self.frames_per_group)

    def _video_model_inputs(self, video) -> dict:
        return {}  # the timestamps are in the text

    def visual_runs(self, grid, items: int = 1, video: bool = False) -> tuple[int, ...]:
        """One run per image or video frame pair (each pair has its own timestamp and vision markers)."""
        return (self.image_token_count(grid),) * items

    def fp32_compute(self) -> dict:
        """None marked: the fp16 overflow reported is Qwen2.5-VL's tower; none is reported for Qwen3-VL's."""
        return {}

    def constrain(self, schedule, method: str):
        """As Qwen2.5-VL, and no pruning inside the vision tower: TRIO's vision stage exists in its authors'
        Qwen2.5-VL port only (it reads that tower's window / full-attention blocks), VisionZip needs a [CLS]."""
        if method in ("trio-ve", "visionzip"):
            raise ScheduleError(VISION_METHODS_REFUSED)
        return super().constrain(schedule, method)
