"""Adapter for Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration): all knowledge of this family lives here.

What differs from LLaVA, and how generic code sees it:
- the image is one picture at a fixed size chosen at export (`--grid WxH`, sides in multiples of the 112-px
  attention window), fed as Qwen's flattened patches (pixel_shape); the vision graph is QwenVisionFeatures;
- positions are M-RoPE rows (position_rows = 3, position_ids (3, 1, T)) computed from the text lengths and the
  fixed grid (models.mrope); after a cut the kept tokens keep their original rows, and decoding continues at
  the prompt's largest position + 1 (first_decode_position), as TRIO's Qwen code does;
- the prompt is Qwen's chat format (<|im_start|> ... with <|vision_start|><|image_pad|><|vision_end|>);
- transformers' Qwen2_5_VLProcessor cannot be built without torchvision (its video processor needs it), so the
  processor here is the tokenizer and Qwen's PIL image processor (QwenProcessor).
The decoder layers are Qwen2's (biased q/k/v projections), run by the Llama-family segments unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..errors import InputError, ScheduleError, UnsupportedModelError
from ..trio.schedule import Schedule
from .llama_decoder import LlamaFamilyDecoder
from .llava import LlavaAdapter
from .qwen_vision import PrunedQwenVision, QwenVisionFeatures, check_image_size, grid_thw, window_pixels

PROXY_NEEDS_A_LAYER = ("TRIO's Qwen proxy reruns the decoder layer just executed, so its cuts come after layer 1 or "
                       "later; use --cuts LAYER:KEEP with LAYER >= 1")
DEFAULT_IMAGE_SIDE = 672  # 48 x 48 patches -> 576 image tokens, the count TRIO's published budgets are set on


def qwen_chat_template(default_system: str | None) -> str:
    """Qwen-VL's chat format for text, images and a video (<|im_start|> turns, an image as
    <|vision_start|><|image_pad|><|vision_end|>, a video as <|vision_start|><|video_pad|><|vision_end|>), with
    `default_system` as the system turn when the chat has none."""
    system = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + default_system
              + "<|im_end|>\n{% endif %}") if default_system else ""
    return (
        "{% for message in messages %}" + system +
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


# Qwen2.5-VL-Instruct's chat format, used when a checkpoint's tokenizer carries no template
CHAT_TEMPLATE = qwen_chat_template("You are a helpful assistant.")


@dataclass
class QwenProcessor:
    """Qwen-VL's pre-processing without torchvision: the tokenizer (with its chat template) and the PIL image
    processor. Saves and loads as the same files a checkpoint holds. `default_template`: the family's chat format,
    used when the tokenizer carries none."""

    tokenizer: object
    image_processor: object
    default_template: str = CHAT_TEMPLATE

    @classmethod
    def load(cls, from_pretrained, default_template: str = CHAT_TEMPLATE) -> "QwenProcessor":
        """`from_pretrained(auto_class)` loads one part from the checkpoint (the registry's local-first loader)."""
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        return cls(from_pretrained(AutoTokenizer), from_pretrained(Qwen2VLImageProcessorPil), default_template)

    @property
    def chat_template(self) -> str:
        return getattr(self.tokenizer, "chat_template", None) or self.default_template

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def save_pretrained(self, path) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)


class Qwen2_5_VLAdapter(LlavaAdapter):
    """Qwen2.5-VL: one image at a fixed size, window-attention vision tower, M-RoPE positions."""

    family = "qwen2.5-vl"
    model_type = "qwen2_5_vl"  # the config's model_type this adapter reads
    position_rows = 3
    chat_template = CHAT_TEMPLATE  # used when the checkpoint's tokenizer has none

    @classmethod
    def load_processor(cls, from_pretrained) -> QwenProcessor:
        return QwenProcessor.load(from_pretrained, cls.chat_template)

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse another Qwen version's checkpoint (e.g. a config whose `architectures` names this family while its
        model_type, which decides the modules transformers builds, is another's)."""
        model_type = getattr(config, "model_type", None)
        if model_type is not None and model_type != cls.model_type:
            raise UnsupportedModelError(f"the {cls.family} adapter cannot run a {model_type} checkpoint (its config's "
                                        f"architectures name {(getattr(config, 'architectures', None) or ['?'])[0]}); "
                                        "fix the config's architectures to match its model_type")

    def __init__(self, config, processor, model=None):
        self.check_config(config)
        self.model, self.processor, self.config = model, processor, config
        self.decoder = None
        if model is not None:
            text = model.model.language_model
            self.decoder = LlamaFamilyDecoder(text.embed_tokens, text.layers, self.text_rotary(text), text.norm,
                                              model.lm_head)
        self.image_token_id = int(config.image_token_id)
        self.image_token = processor.tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.video_token_id = int(config.video_token_id)
        self.video_token = processor.tokenizer.convert_ids_to_tokens(self.video_token_id)
        self.vision_config = config.vision_config
        self._proxy_decoder = None  # built on first use (trio_proxy)

    @staticmethod
    def text_rotary(text_model):
        """The decoder's rotary embedding: position_ids (3, 1, T) -> cos, sin (1, T, hd)."""
        return text_model.rotary_emb

    # ---- image side -------------------------------------------------------------------------------
    tile_size = 0  # no square tiles: the vision input is pixel_shape's patches
    default_image_side = DEFAULT_IMAGE_SIDE

    def image_side_multiple(self) -> int:
        """Image sides must be multiples of this many pixels: the 112-px attention window."""
        return window_pixels(self.vision_config)

    def default_grid(self) -> tuple[int, int]:
        """The square size the checkpoint's image processor is pinned to (min = max pixels, as the tiny models
        ship), else default_image_side square."""
        size = self.processor.image_processor.size
        low, high = getattr(size, "shortest_edge", None), getattr(size, "longest_edge", None)
        side = math.isqrt(high) if high and low == high else 0
        if side and side * side == high and side % self.image_side_multiple() == 0:
            return (side, side)
        return (self.default_image_side, self.default_image_side)

    def validate_grid(self, grid: tuple[int, int]) -> None:
        check_image_size(self.vision_config, *grid)

    def _thw(self, grid) -> tuple[int, int, int]:
        return grid_thw(self.vision_config, *grid)

    def merged_grid(self, grid) -> tuple[int, int, int]:
        """(t, h, w) of the image tokens the decoder sees: patches / spatial merge."""
        t, h, w = self._thw(grid)
        merge = int(self.vision_config.spatial_merge_size)
        return (t, h // merge, w // merge)

    def image_token_count(self, grid: tuple[int, int]) -> int:
        t, h, w = self.merged_grid(grid)
        return t * h * w

    def pixel_shape(self, grid: tuple[int, int]) -> tuple[int, ...]:
        """(patches, channels x temporal patch x patch x patch): Qwen's image processor's flattened patches."""
        t, h, w = self._thw(grid)
        patch = int(self.vision_config.patch_size)
        return (t * h * w, int(self.vision_config.in_channels) * int(self.vision_config.temporal_patch_size) * patch * patch)

    def fp32_compute(self) -> dict:
        """The vision tower computes in fp32 in fp16/bf16 TensorRT engines: a naive fp16 build of Qwen2.5-VL's tower
        overflows (TensorRT-LLM's report: cosine 0.14 against PyTorch; a strongly typed fp32 build fixes it). Keys
        are graph kinds' names (artifact.graphs.GraphKind values)."""
        return {"vision": "Qwen2.5-VL's vision tower overflows fp16 (TensorRT-LLM: cosine 0.14 vs PyTorch "
                                  "in a naive fp16 build)"}

    def vision_rule(self, method: str, stage, grid: tuple[int, int]):
        """TRIO's vision stage as its Qwen port runs it (trio.trio_ve_qwen); the other vision-tower rules rank by a
        [CLS] token this tower does not have."""
        if method != "trio-ve":
            raise ScheduleError(f"--method {method} ranks tokens by a [CLS] token, which the {self.family} vision tower "
                                "does not have; use --method trio-ve (TRIO's Qwen vision stage) or a decoder method")
        from ..trio.trio_ve_qwen import TrioVEQwenRule

        _, h, w = self.merged_grid(grid)
        return TrioVEQwenRule(stage.keep, h, w, int(self.vision_config.depth), self.vision_config.fullatt_block_indexes)

    def vision_module(self, grid: tuple[int, int], rule=None):
        """The vision graph's module; with TRIO's Qwen vision-stage `rule` (vision_rule), the pruned one: (kept
        features, kept merged-token indices (1, keep))."""
        if rule is not None:
            return PrunedQwenVision(self.model.model.visual, self._thw(grid), rule)
        return QwenVisionFeatures(self.model.model.visual, self._thw(grid))

    def tile_tokens(self) -> int | None:
        return None  # no [CLS] token: the vision-tower rules that rank by it (VisionZip, TRIO-VE) do not apply

    def vision_layer_count(self) -> int:
        return int(self.vision_config.depth)

    def pixel_values(self, image, grid: tuple[int, int]) -> torch.Tensor:
        """RGB PIL image -> (patches, C*T*P*P), letterboxed to exactly width x height (min = max pixels, so Qwen's
        smart_resize keeps the size)."""
        pixels = grid[0] * grid[1]
        out = self.processor.image_processor(images=[self.letterboxed(image, grid)], return_tensors="pt",
                                             size={"shortest_edge": pixels, "longest_edge": pixels})
        if tuple(out["image_grid_thw"][0].tolist()) != self._thw(grid):
            raise InputError(f"the image processor resized to {out['image_grid_thw'][0].tolist()} patches, not the "
                             f"export's {list(self._thw(grid))}")
        return out["pixel_values"]

    # ---- video -------------------------------------------------------------------------------------------
    @property
    def frames_per_group(self) -> int:
        """Frames the vision tower takes as one temporal patch (2 on every Qwen-VL checkpoint)."""
        return int(self.vision_config.temporal_patch_size)

    def video_items(self, frames: int) -> int:
        """Frame groups (vision-graph runs) of a `frames`-frame video: the tower attends within each temporal patch
        of `frames_per_group` frames only, so a video is that many runs of the image graph."""
        group = self.frames_per_group
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < group or frames % group:
            raise InputError(f"--video-frames {frames}: {self.family} takes video frames in groups of {group} (its "
                             f"temporal patch); pass a multiple of {group}, at least {group}")
        return frames // group

    @staticmethod
    def sample_frame_indices(total: int, frames: int) -> list[int]:
        """Qwen2.5-VL's uniform sampling (transformers' Qwen2VLVideoProcessor.sample_frames with num_frames)."""
        from .video import arange_indices

        return arange_indices(total, frames)

    def load_video(self, source, frames: int, grid: tuple[int, int] | None = None, **limits):
        """A video file (path or bytes) -> `frames` frames sampled as this family's processor samples them
        (models.video.load_video; `limits`: its max_seconds / max_frames / max_pixels / max_decoded_pixels). With
        `grid`, each kept frame is letterboxed to it as it decodes (what video_pixel_values does to it anyway: a
        second letterbox to the same size changes no pixel), so full-size frames are not held. A video already
        decoded (a SampledVideo of `frames` frames) is taken as it is."""
        from .video import SampledVideo, load_video

        if isinstance(source, SampledVideo):
            if len(source.frames) != frames:
                raise InputError(f"the video has {len(source.frames)} sampled frames; this export takes {frames}")
            return source
        fit = (lambda image: self.letterboxed(image, grid)) if grid is not None else None
        return load_video(source, frames, self.sample_frame_indices, fit=fit, **limits)

    def frame_groups(self, video) -> list[list[int]]:
        """The sampled frames' indices in the clip, in the groups the tower takes together."""
        indices, group = list(video.frame_indices), self.frames_per_group
        return [indices[i:i + group] for i in range(0, len(indices), group)]

    def video_pixel_values(self, video, grid: tuple[int, int]) -> list[torch.Tensor]:
        """Each frame group as the vision graph's input (patches, C*T*P*P): frame k of the group at temporal slot k,
        what transformers' video processor lays out for that group (its rows are the video's, group by group). Each
        frame is letterboxed and normalised by the image processor, which writes a still frame into every slot."""
        group, channels = self.frames_per_group, int(self.vision_config.in_channels)
        frames = [self.pixel_values(frame, grid) for frame in video.frames]
        out = []
        for first in range(0, len(frames), group):
            slots = [frame.reshape(frame.shape[0], channels, group, -1) for frame in frames[first:first + group]]
            out.append(torch.stack([slots[k][:, :, k] for k in range(group)], dim=2).reshape(frames[first].shape))
        return out

    def _video_spans(self, video, grid) -> list:
        """The video's visual runs for M-RoPE: one run of all frame groups, temporal positions spaced by
        tokens_per_second x the seconds per group (transformers' second_per_grid_ts = temporal patch / sampled fps)."""
        from .mrope import VisualSpan

        _, h, w = self.merged_grid(grid)
        interval = int(self.vision_config.tokens_per_second) * self._seconds_per_group(video)
        return [VisualSpan((len(video.frames) // self.frames_per_group, h, w), interval)]

    def _seconds_per_group(self, video) -> torch.Tensor:
        """second_per_grid_ts as transformers' processor returns it (float32)."""
        return torch.tensor(self.frames_per_group / video.sampled_fps, dtype=torch.float32)

    def _expand_video(self, text: str, tokens_per_item: int, video, pad: str) -> str:
        """The video slot -> every frame group's tokens in one run (Qwen2.5-VL's processor)."""
        return text.replace(self.video_token, pad * (tokens_per_item * len(video.frames) // self.frames_per_group))

    # ---- text side --------------------------------------------------------------------------------
    def format_conversation(self, messages: list[dict]) -> str:
        """A chat as Qwen's chat format (the checkpoint's template, else Qwen2.5-VL-Instruct's): each image as
        <|vision_start|><|image_pad|><|vision_end|>, a video as <|vision_start|><|video_pad|><|vision_end|>, ending
        where the assistant's answer starts."""
        self._check_conversation(messages)
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def expanded_prompt(self, prompt: str, tokens_per_item: int, images: int = 1, video=None,
                        for_model: bool = False) -> str:
        """The prompt text with its visual slots expanded: each image slot to `tokens_per_item` image pads; the video
        slot to its frame groups' tokens (the family's layout, _expand_video). The pipeline's form marks every visual
        token with the image pad (the embed graph merges features there); `for_model`: a video's tokens are video
        pads, as transformers' processor writes them."""
        text = self.format_prompt(prompt, images, video)
        if video is None:
            return text.replace(self.image_token, self.image_token * tokens_per_item)
        return self._expand_video(text, tokens_per_item, video, self.video_token if for_model else self.image_token)

    def prompt_positions(self, input_ids: torch.Tensor, grid: tuple[int, int], vision_kept: torch.Tensor | None = None,
                         video=None) -> torch.Tensor:
        """M-RoPE position_ids (3, 1, S) of a prompt at the fixed grid (== get_rope_index): every image one visual
        run, a video its family's runs (_video_spans). After TRIO's vision stage the prompt holds only the kept image
        tokens: they keep the unpruned prompt's rows, gathered at `vision_kept` ((images, keep) merged-token indices
        per image), as the authors' Qwen code does."""
        from .mrope import VisualSpan, multimodal_positions, runs

        is_visual = input_ids[0] == self.image_token_id
        if video is not None:
            spans = self._video_spans(video, grid)
        else:
            spans = [VisualSpan(self.merged_grid(grid))] * sum(flag for flag, _ in runs(is_visual))
        kept = None if vision_kept is None else list(vision_kept)
        return multimodal_positions(is_visual, spans, kept)

    def first_decode_position(self, prompt_positions: torch.Tensor) -> int:
        """Decoding continues after the largest prompt position (transformers' rope_deltas), not at the length: the
        last prompt token's, which no pruning removes."""
        return int(prompt_positions.max()) + 1

    def hf_inputs(self, image, prompt: str, grid: tuple[int, int], video=None) -> dict:
        """Inputs for transformers' own `generate` at the same fixed size (parity tests): `image` one image or a list
        in prompt order, or `video` (a SampledVideo) with `image` None."""
        per_item = self.image_token_count(grid)
        images = [] if video is not None else (list(image) if isinstance(image, (list, tuple)) else [image])
        text = self.expanded_prompt(prompt, per_item, len(images), video, for_model=True)
        ids = self.processor.tokenizer(text, return_tensors="pt", verbose=False)["input_ids"]
        types = (ids == self.image_token_id).to(torch.int32) + 2 * (ids == self.video_token_id).to(torch.int32)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types}
        if video is None:
            inputs["pixel_values"] = torch.cat([self.pixel_values(item, grid) for item in images])
            inputs["image_grid_thw"] = torch.tensor([self._thw(grid)] * len(images))
            return inputs
        _, h, w = self._thw(grid)
        inputs["pixel_values_videos"] = torch.cat(self.video_pixel_values(video, grid))
        inputs["video_grid_thw"] = torch.tensor([[len(video.frames) // self.frames_per_group, h, w]])
        inputs.update(self._video_model_inputs(video))
        return inputs

    def _video_model_inputs(self, video) -> dict:
        """What else transformers' processor hands the model for a video: Qwen2.5-VL's seconds per temporal patch."""
        return {"second_per_grid_ts": self._seconds_per_group(video)[None]}

    # ---- weight-only quantization ----------------------------------------------------------------------
    def _vision_parts(self):
        return (self.model.model.visual,)  # the tower and its merger (the projector)

    # ---- TRIO on Qwen ----------------------------------------------------------------------------
    def trio_proxy(self, cut_layer: int):
        """TRIO's Qwen port (ocy1/TRIO qwen/model/qwen2_5_vl_custom.py, layer_prune): at a cut after `cut_layer`
        layers it reruns the layer just executed (layers[cut_layer - 1]) on its own output, and its output head is
        the INPUT embedding table (the text model it runs in has no lm_head, so `_get_output_head` falls through
        to F.linear(x, embed_tokens.weight)): the same as lm_head on tied checkpoints (3B), another matrix on 7B.
        Both followed exactly (tests/qwen_reference.py); the LLaVA port runs the next layer and lm_head."""
        if cut_layer < 1:
            raise ScheduleError(PROXY_NEEDS_A_LAYER)
        if self._proxy_decoder is None:
            decoder = self.decoder
            head = torch.nn.Linear(decoder.hidden_size, decoder.embed_tokens.weight.shape[0], bias=False)
            head.weight = decoder.embed_tokens.weight  # shared, not copied
            self._proxy_decoder = LlamaFamilyDecoder(decoder.embed_tokens, decoder.layers, decoder.rotary,
                                                     decoder.norm, head)
        return self._proxy_decoder, cut_layer - 1

    def default_cut_layers(self) -> tuple[int, ...]:
        """LLaVA's released cut depths (1, 10, 15 of 32) scaled to the depth, from layer 1 (the Qwen proxy reruns
        the layer before the cut)."""
        return tuple(sorted({max(1, layer) for layer in super().default_cut_layers()}))

    def visual_runs(self, grid, items: int = 1, video: bool = False) -> tuple[int, ...]:
        """One run per image; a video's frame groups form one run (transformers' processor writes one
        <|vision_start|> ... <|vision_end|> around all of them)."""
        per_item = self.image_token_count(grid)
        return (per_item * items,) if video else (per_item,) * items

    def schedule(self, grid, items: int = 1, video: bool = False, **options):
        """As LLaVA's, with positions kept original (TRIO's Qwen code keeps each kept token's M-RoPE rows);
        renumbering M-RoPE rows is refused (no authors' code defines it). See constrain."""
        from ..trio.presets import method_for

        if options.get("positions") == "renumber":
            raise ScheduleError(f"{self.family} keeps original M-RoPE positions after a cut, as TRIO's Qwen code does; "
                                "drop --positions renumber")
        method = method_for(options.get("method"), options.get("preset"), "trio")
        self.constrain(Schedule(), method)  # a method this family refuses, before resolving its budget
        if method == "trio-ve":
            if items > 1:
                raise ScheduleError("TRIO's Qwen vision stage takes one image, as its authors' code does (it asserts "
                                    "one); for several images or a video use --method trio (decoder cuts) or another "
                                    "decoder method")
            return self.constrain(self._trio_ve_schedule(grid, **options), method)
        return self.constrain(super().schedule(grid, items, video, **options), method)

    def _trio_ve_schedule(self, grid, *, cuts=None, keep_ratio=None, schedule_file=None, preset=None, threshold=None,
                          precision=None, method=None, positions=None, budget=None):
        from ..trio.schedule import check_budget_options
        from ..trio.vision_stage import trio_ve_qwen_schedule

        check_budget_options(cuts=cuts, keep_ratio=keep_ratio, budget=budget, schedule_file=schedule_file,
                             preset=preset, method="trio-ve")
        overrides = {k: v for k, v in (("threshold", threshold), ("precision", precision)) if v is not None}
        _, h, w = self.merged_grid(grid)
        schedule = trio_ve_qwen_schedule(cuts=cuts, keep_ratio=keep_ratio, schedule_file=schedule_file, preset=preset,
                                         overrides=overrides, merged_hw=(h, w), num_layers=self.num_layers)
        return schedule.validate(self.num_layers, self.image_token_count(grid))

    def constrain(self, schedule, method: str):
        """`schedule` as this family runs it: positions original; SparseVLM refused (its released code has no Qwen
        path); TRIO cuts from layer 1 on (trio_proxy)."""
        if method == "sparsevlm":
            raise ScheduleError("SparseVLM's released code runs LLaVA only (no Qwen path to be exact to); use "
                                f"--method trio, fastv, dart, pdrop, random or uniform on {self.family}")
        if method in ("trio", "trio-ve") and any(cut.layer < 1 for cut in schedule.cuts):
            raise ScheduleError(PROXY_NEEDS_A_LAYER)
        return replace(schedule, positions="original")
