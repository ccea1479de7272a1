"""Adapters for LLaVA-NeXT and LLaVA-1.5: all knowledge of these families lives here.

An adapter answers what generic code needs: the vision graph for a fixed grid, the image-token
count, the prompt format, the decoder parts (a Llama-family decoder) and the default TRIO schedule.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError, UnsupportedModelError
from .llama_decoder import LlamaFamilyDecoder
from .preprocess import letterbox, parse_grid
from .vision_tower import PrunedVisionFeatures, tower_has_cls

SUPPORTED_DECODERS = ("LlamaForCausalLM", "LlamaModel", "MistralModel", "MistralForCausalLM")
# LLaVA's released TRIO schedule for 576 tokens -> 64 (cuts after layers 1, 10, 15 of 32 keeping
# 92, 54, 22): generalised as cut positions relative to depth and keep fractions relative to M.
REFERENCE_CUT_DEPTHS = (1 / 32, 10 / 32, 15 / 32)
REFERENCE_KEEP_WEIGHTS = (92 / 576, 54 / 576, 22 / 576)


def checked_prompt(prompt) -> str:
    """The prompt as valid text: UTF-8 bytes are decoded; other bytes, lone surrogates (argv that was not
    UTF-8), non-text and empty prompts raise InputError."""
    prompt = checked_text(prompt)
    if not prompt.strip():
        raise InputError("the prompt is empty; pass a question or instruction (trio-run: --prompt)")
    return prompt


def checked_text(prompt) -> str:
    """Text that may be empty: UTF-8 bytes are decoded; other bytes, lone surrogates and non-text raise
    InputError."""
    if isinstance(prompt, (bytes, bytearray)):
        try:
            prompt = bytes(prompt).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"the prompt is not valid UTF-8 (byte 0x{prompt[error.start]:02x} at offset "
                             f"{error.start}); pass UTF-8 text") from None
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text (str), not {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = prompt[error.start]
        what = (f"undecodable byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF
                else f"lone surrogate U+{ord(bad):04X}")
        raise InputError(f"the prompt is not valid UTF-8 text ({what} at character {error.start}); pass UTF-8 "
                         "text (check the terminal's or the file's encoding, e.g. LANG=C.UTF-8)") from None
    return prompt


class VisionFeatures(nn.Module):
    """pixel tiles (P, 3, h, w) -> image features (M, D), for one fixed grid."""

    cuda_graph_safe = True  # fixed grid: fixed shapes, packing computed from Python ints

    def __init__(self, model, image_size_hw: tuple[int, int] | None):
        super().__init__()
        self.model = model.model
        self.image_size_hw = image_size_hw

    def forward(self, pixel_values):
        if self.image_size_hw is None:  # LLaVA-1.5: one tile, no packing
            out = self.model.get_image_features(pixel_values=pixel_values)
        else:
            out = self.model.get_image_features(pixel_values=pixel_values, image_sizes=[list(self.image_size_hw)])
        features = out.pooler_output
        return features[0] if isinstance(features, (list, tuple)) else features.reshape(-1, features.shape[-1])


class PackKeptInPlace(nn.Module):
    """LLaVA-NeXT's packing of tiles pruned by an index mask, as the released TRIO code does it (ocy1/TRIO
    prepare_inputs_labels_for_multimodal, spatial_unpad; nothing is unpadded on the fixed grid): the base tile's
    kept tokens in token order, then the packed tiles' grid in raster order, kept tokens only, every grid row
    ending with the image newline (always kept). features (T, K, D), kept (T, K) (index in the tile, 0 = [CLS])
    -> (T * K + rows * side, D)."""

    def __init__(self, rows: int, cols: int, side: int, newline: nn.Parameter):
        super().__init__()
        self.rows, self.cols, self.side, self.newline = rows, cols, side, newline

    def forward(self, features, kept):
        return pack_kept_tiles(features, kept - 1, self.newline, self.side, self.cols, self.rows)


def _divmod_nonnegative(x: torch.Tensor, divisor: int):
    """(x // divisor, x % divisor) for x >= 0 with truncating division: floor division exports an Equal on BOOL,
    which TensorRT's parser does not list (a trio-check warning)."""
    quotient = torch.div(x, divisor, rounding_mode="trunc")
    return quotient, x - quotient * divisor


def pack_kept_tiles(merged, kept, newline, side: int, across: int, down: int) -> torch.Tensor:
    """merged (P, K, D) and kept patch indices (P, K) of the base tile and the across x down packed tiles ->
    (K + (P-1) K + down * side, D). Every packed token and newline gets its raster position on the
    (down*side) x (across*side + 1) grid; sorting those distinct keys orders them (fixed count)."""
    tiles, k, dim = merged.shape
    width = across * side + 1
    tile = torch.arange(1, tiles, device=kept.device)[:, None]  # (P-1, 1)
    ty, tx = _divmod_nonnegative(tile - 1, across)
    y, x = _divmod_nonnegative(kept[1:], side)  # (P-1, K)
    token_keys = ((ty * side + y) * width + tx * side + x).reshape(-1)
    newline_keys = torch.arange(down * side, device=kept.device) * width + width - 1
    keys = torch.cat([token_keys, newline_keys]).float()  # exact below 2**24
    rows = torch.cat([merged[1:].reshape(-1, dim), newline.to(merged.dtype)[None].expand(down * side, dim)])
    order = torch.topk(-keys, keys.shape[0]).indices  # ascending raster order; keys are distinct
    return torch.cat([merged[0], rows.index_select(0, order)])


class LlavaAdapter:
    """LLaVA-1.5 (LlavaForConditionalGeneration): one square tile, no anyres packing."""

    family = "llava-1.5"
    position_rows = 1  # position_ids (1, T): one rotary position per token
    deepstack_layers = 0  # decoder layers after which vision features are added again (Qwen3-VL's DeepStack)
    # Without a chat template: LLaVA's released vicuna_v1 conversation (its system line only when one is
    # given), 'USER: <image>\n{prompt} ASSISTANT:' for one question; see format_conversation.
    conversation_roles = {"user": "USER", "assistant": "ASSISTANT"}

    @staticmethod
    def load_processor(from_pretrained):
        """The checkpoint's processor; `from_pretrained(auto_class)` is the registry's local-first loader."""
        from transformers import AutoProcessor

        return from_pretrained(AutoProcessor)

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse, before any weights load, a checkpoint whose architecture names this adapter but that it cannot run
        (Qwen: another version's model_type); LLaVA has none to refuse."""

    def __init__(self, config, processor, model=None):
        """`model` may be None where only pre/post-processing is needed (the runtime)."""
        self.model = model
        self.processor = processor
        self.config = config
        self.decoder = None
        if model is not None:
            text_model = model.model.language_model
            arch = type(text_model).__name__
            if arch not in SUPPORTED_DECODERS:
                raise UnsupportedModelError(
                    f"{self.family}: decoder {arch} is not supported (supported: {', '.join(SUPPORTED_DECODERS)})"
                )
            self.decoder = LlamaFamilyDecoder(
                text_model.embed_tokens, text_model.layers, text_model.rotary_emb, text_model.norm, model.lm_head
            )
        self.image_token_id = int(self.config.image_token_index)
        self.image_token = processor.tokenizer.convert_ids_to_tokens(self.image_token_id)

    # ---- image side -------------------------------------------------------------------------------
    @property
    def tile_size(self) -> int:
        return int(self.config.vision_config.image_size)

    def default_grid(self) -> tuple[int, int]:
        return (self.tile_size, self.tile_size)

    def validate_grid(self, grid: tuple[int, int]) -> None:
        if tuple(grid) != self.default_grid():
            raise InputError(f"{self.family} takes one {self.tile_size}x{self.tile_size} tile; --grid {grid[0]}x{grid[1]} "
                             "is not available for it (omit --grid)")

    def image_token_count(self, grid: tuple[int, int]) -> int:
        patches = (self.tile_size // int(self.config.vision_config.patch_size)) ** 2
        return patches + (1 if self.config.vision_feature_select_strategy == "full" else 0)

    def fp32_compute(self) -> dict:
        """Graph kind name -> why its graphs must compute in fp32 in an fp16/bf16 engine: none for LLaVA."""
        return {}

    def vision_rule(self, method: str, stage, grid: tuple[int, int]) -> nn.Module:
        """The rule of a vision-tower method for a resolved vision stage (trio.vision_stage.vision_rule)."""
        from ..trio.vision_stage import vision_rule

        return vision_rule(method, stage, self.vision_layer_count())

    def vision_module(self, grid: tuple[int, int], rule: nn.Module | None = None) -> nn.Module:
        """The vision graph's module; with a vision-tower `rule` (trio.vision_stage.vision_rule), the pruned one."""
        if rule is not None:
            return self._pruned_vision_module(grid, rule)
        return VisionFeatures(self.model, None)

    # ---- pruning inside the vision tower (VisionZip, ...) --------------------------------------------------
    def tile_tokens(self) -> int | None:
        """Tokens of one tile at the feature layer, [CLS] included; None when the tower has no [CLS] (the
        vision-tower rules rank tokens by its attention)."""
        if not tower_has_cls(self.config.vision_config) or not isinstance(self.config.vision_feature_layer, int):
            return None
        return (self.tile_size // int(self.config.vision_config.patch_size)) ** 2 + 1

    def pruned_image_token_count(self, grid: tuple[int, int], keep: int, method: str = "visionzip") -> int:
        """Image tokens the decoder sees when every tile keeps `keep` tokens: the tiles' kept tokens only (VisionZip's
        LLaVA and LLaVA-NeXT code add no image_newline tokens to pruned tiles; TRIO-VE's LLaVA-NeXT code keeps them:
        LlavaNextAdapter adds them)."""
        return self.tile_count(grid) * keep

    def vision_layer_count(self) -> int:
        return int(self.config.vision_config.num_hidden_layers)

    def _pruned_vision_module(self, grid, rule) -> nn.Module:
        return PrunedVisionFeatures(self.model, rule, lambda features, kept: features[0])

    def tile_count(self, grid: tuple[int, int]) -> int:
        return 1

    def pixel_shape(self, grid: tuple[int, int]) -> tuple[int, ...]:
        """The vision graph's input: (tiles, 3, tile, tile)."""
        return (self.tile_count(grid), 3, self.tile_size, self.tile_size)

    def grid_for(self, text: str | None) -> tuple[int, int]:
        """--grid WIDTHxHEIGHT (or the default when None), checked against this model."""
        grid = parse_grid(text) if text else self.default_grid()
        self.validate_grid(grid)
        return grid

    def letterboxed(self, image, grid: tuple[int, int]):
        """The image fitted into the grid on a canvas of the processor's mean colour."""
        fill = tuple(int(round(255 * m)) for m in self.processor.image_processor.image_mean)
        return letterbox(image, grid[0], grid[1], fill)

    def pixel_values(self, image, grid: tuple[int, int]) -> torch.Tensor:
        """RGB PIL image -> float tiles (P, 3, h, w) for the fixed grid."""
        boxed = self.letterboxed(image, grid)
        pixels = self.processor.image_processor(images=boxed, return_tensors="pt")["pixel_values"]
        return pixels.reshape(-1, *pixels.shape[-3:])

    # ---- video (the Qwen families; LLaVA takes images only) --------------------------------------------------
    def video_items(self, frames: int) -> int:
        """Vision-graph runs for a video of `frames` frames: LLaVA has no video input."""
        raise InputError(f"{self.family} takes images only; a video export (--video-frames) needs a Qwen2.5-VL or "
                         "Qwen3-VL model")

    # ---- text side --------------------------------------------------------------------------------
    def format_prompt(self, prompt: str, images: int = 1, video=None) -> str:
        """Verbatim if it holds the visual slots (one per image, or the video's one); else one user turn [image x
        images | video, prompt] of format_conversation (the chat template, else the family's default
        'USER: <image>\n{prompt} ASSISTANT:', one slot a line)."""
        prompt = checked_prompt(prompt)
        slot, wanted, what = ((self.video_token, 1, "video") if video is not None else
                              (self.image_token, images, "image"))
        slots = prompt.count(slot)
        if slots:
            if slots != wanted:
                raise InputError(f"the prompt has {slots} {what} slot{'s' if slots > 1 else ''} ({slot!r}); this "
                                 f"{'model' if wanted == 1 else 'export'} takes exactly {wanted} {what}"
                                 f"{'s' if wanted > 1 else ''}: write one slot per {what}, or none to have "
                                 f"{'them' if wanted > 1 else 'it'} placed before the question")
            return prompt
        visuals = [{"type": "video"}] if video is not None else [{"type": "image"}] * images
        return self.format_conversation([{"role": "user", "content": [*visuals, {"type": "text", "text": prompt}]}])

    def format_conversation(self, messages: list[dict]) -> str:
        """A chat as prompt text with the image slots in place, ending where the assistant's answer starts.

        `messages`: [{"role": "system" | "user" | "assistant", "content": [{"type": "text", "text": ...} |
        {"type": "image"}, ...]}, ...], the last one the user's, images in user turns (prompt_ids checks their number
        against the export's). The processor's chat template if it has one; else LLaVA's vicuna_v1 conversation:
        'SYSTEM USER: <image>\nQ ASSISTANT: A</s>USER: Q2 ASSISTANT:' (a turn's images first, one a line, as LLaVA's
        training data has it)."""
        self._check_conversation(messages)
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        end_of_answer = self.processor.tokenizer.eos_token or ""
        system = " ".join(_texts(m) for m in messages if m["role"] == "system")
        text = f"{system} " if system else ""
        for message in messages:
            if message["role"] == "system":
                continue
            content = _texts(message, "\n")
            images = sum(part["type"] == "image" for part in message["content"])
            content = f"{self.image_token}\n" * images + content
            role = self.conversation_roles[message["role"]]
            text += f"{role}: {content} " if message["role"] == "user" else f"{role}: {content}{end_of_answer}"
        return text + f"{self.conversation_roles['assistant']}:"

    def _check_conversation(self, messages: list[dict]) -> None:
        if not messages or messages[-1].get("role") != "user":
            raise InputError("the conversation must end with a user message (the question to answer)")
        visuals = 0
        for message in messages:
            role = message.get("role")
            if role not in ("system", "user", "assistant"):
                raise InputError(f"unknown message role {role!r}; use system, user or assistant")
            for part in message["content"]:
                if part["type"] in ("image", "video"):
                    if role != "user":
                        raise InputError(f"the {part['type']} is in a {role} message; send it in a user message")
                    visuals += 1
                elif self.image_token in checked_text(part["text"]):
                    raise InputError(f"message text contains the image slot {self.image_token!r}; send the image as "
                                     "an image part instead")
        if not visuals:
            raise InputError("the conversation has no image; send at least one image part in a user message")
        if not any(_texts(m).strip() for m in messages if m["role"] == "user"):
            raise InputError("the user messages have no text; ask a question or give an instruction about the image")

    def prompt_ids(self, prompt: str, tokens_per_item: int, images: int = 1, video=None) -> torch.Tensor:
        """Prompt -> input ids (1, S) with each image slot (or the video's frame groups) expanded to
        `tokens_per_item` image tokens: every visual token is `image_token_id`, where the embed graph merges the
        vision graph's features in order (a video's own token id only matters to the model's embedding, which the
        features replace)."""
        items = self.video_items(len(video.frames)) if video is not None else images
        text = self.expanded_prompt(prompt, tokens_per_item, images, video)
        # verbose=False: no "longer than the maximum" warning; the pipeline checks the export's own maximum
        ids = self.processor.tokenizer(text, return_tensors="pt", verbose=False)["input_ids"]
        found = int((ids == self.image_token_id).sum())
        if found != items * tokens_per_item:
            raise InputError(f"the prompt tokenised to {found} image tokens, expected {items * tokens_per_item}; "
                             f"write the image slot as {self.image_token!r} separated from other text")
        return ids

    def expanded_prompt(self, prompt: str, tokens_per_item: int, images: int = 1, video=None,
                        for_model: bool = False) -> str:
        """The prompt text with every image slot repeated `tokens_per_item` times (LLaVA takes no video).
        `for_model`: the text transformers' processor would make (the same for LLaVA)."""
        if video is not None:
            self.video_items(0)  # refused: LLaVA takes images only
        return self.format_prompt(prompt, images).replace(self.image_token, self.image_token * tokens_per_item)

    def prompt_positions(self, input_ids: torch.Tensor, grid: tuple[int, int], vision_kept=None,
                         video=None) -> torch.Tensor:
        """position_ids (1, S) of a prompt: 0..S-1, also after a vision-stage prune (`vision_kept`), as the released
        LLaVA code numbers the kept tokens."""
        return torch.arange(input_ids.shape[1], device=input_ids.device)[None]

    def first_decode_position(self, prompt_positions: torch.Tensor) -> int:
        """The first generated token's position with original positions: the prompt's length."""
        return int(prompt_positions.shape[-1])

    def stop_token_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id if self.model is not None else None
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]

    def hf_inputs(self, image, prompt: str, grid: tuple[int, int], video=None) -> dict:
        """Inputs for transformers' own `generate` on the same letterboxed image(s) (parity tests); `image`: one
        image or a list, in prompt order."""
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        boxed = [self.letterboxed(item, grid) for item in images]
        return dict(self.processor(images=boxed, text=self.format_prompt(prompt, len(images)), return_tensors="pt"))

    # ---- weight-only quantization ----------------------------------------------------------------------
    def linear_layers(self, *, lm_head: bool = False, vision: bool = False) -> dict[str, nn.Linear]:
        """Model name -> nn.Linear that weight-only quantization applies to: every linear layer inside the
        decoder layers (attention q/k/v/o, MLP gate/up/down); lm_head and the vision tower + projector only
        when asked (the projector feeds every image token, the head every logit)."""
        wanted = {id(m) for layer in self.decoder.layers for m in layer.modules() if isinstance(m, nn.Linear)}
        if lm_head:
            wanted.add(id(self.decoder.lm_head))
        if vision:
            wanted |= {id(m) for part in self._vision_parts() for m in part.modules() if isinstance(m, nn.Linear)}
        return {name: m for name, m in self.model.named_modules() if id(m) in wanted}

    def _vision_parts(self):
        return (self.model.model.vision_tower, self.model.model.multi_modal_projector)

    # ---- TRIO defaults ----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return int(self.config.text_config.num_hidden_layers)

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the language model takes (its config's max_position_embeddings), if it says."""
        value = getattr(self.config.text_config, "max_position_embeddings", None)
        return int(value) if value else None

    def default_cut_layers(self) -> tuple[int, ...]:
        """The released LLaVA schedule's cut layers (1, 10, 15) on decoders of 32 layers or more, its depths scaled
        to a shallower one (deduplicated)."""
        depth = min(self.num_layers, 32)
        return tuple(sorted({min(self.num_layers - 1, round(d * depth)) for d in REFERENCE_CUT_DEPTHS}))

    def constrain(self, schedule, method: str):
        """`schedule` as this family runs `method` (other families restrict positions or cut layers): unchanged."""
        return schedule

    def trio_proxy(self, cut_layer: int):
        """(decoder, layer index) of TRIO's proxy at a cut after `cut_layer` layers: the released LLaVA code runs the
        next layer (layers[cut_layer]) on the cut's input, then the final norm and lm_head."""
        return self.decoder, cut_layer

    def default_keep_weights(self) -> tuple[float, ...]:
        return REFERENCE_KEEP_WEIGHTS[-len(self.default_cut_layers()):]

    def visual_runs(self, grid, items: int = 1, video: bool = False) -> tuple[int, ...]:
        """The image tokens of a request's contiguous visual runs, in order: one run per image (text between them);
        a video's layout is its family's (Qwen)."""
        return (self.image_token_count(grid),) * items

    def schedule(self, grid, items: int = 1, video: bool = False, **options):
        """The schedule for user options (--cuts / --keep-ratio / --schedule-file, --method) on this model, with
        `items` images (or a video's frame groups, `video`) per request: budgets count the image tokens of all of
        them."""
        from ..trio.schedule import resolve_schedule

        return resolve_schedule(default_cut_layers=self.default_cut_layers(),
                                default_keep_weights=self.default_keep_weights(), num_layers=self.num_layers,
                                num_image_tokens=items * self.image_token_count(grid), tile_tokens=self.tile_tokens(),
                                vision_tokens_for=lambda keep, method: items * self.pruned_image_token_count(
                                    grid, keep, method),
                                visual_runs=self.visual_runs(grid, items, video), **options)


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT (LlavaNextForConditionalGeneration): anyres tiles + base tile, newline tokens."""

    family = "llava-next"

    def pinpoints(self) -> list[tuple[int, int]]:
        """Grid resolutions as (width, height)."""
        return [(int(w), int(h)) for h, w in self.config.image_grid_pinpoints]

    def default_grid(self) -> tuple[int, int]:
        squares = [p for p in self.pinpoints() if p[0] == p[1]] or self.pinpoints()
        return max(squares, key=lambda p: p[0] * p[1])

    def validate_grid(self, grid: tuple[int, int]) -> None:
        if tuple(grid) not in self.pinpoints():
            choices = ", ".join(f"{w}x{h}" for w, h in self.pinpoints())
            raise InputError(f"--grid {grid[0]}x{grid[1]} is not one of this model's grid resolutions: {choices}")

    def image_token_count(self, grid: tuple[int, int]) -> int:
        patches = self.tile_size // int(self.config.vision_config.patch_size)
        rows, cols = grid[1] // self.tile_size * patches, grid[0] // self.tile_size * patches
        # base tile + packed tiles + one newline token per packed row (no unpadding on the fixed grid)
        return patches * patches + rows * cols + rows

    def vision_module(self, grid: tuple[int, int], rule: nn.Module | None = None) -> nn.Module:
        if rule is not None:
            return self._pruned_vision_module(grid, rule)
        return VisionFeatures(self.model, (grid[1], grid[0]))

    def tile_count(self, grid: tuple[int, int]) -> int:
        return (grid[0] // self.tile_size) * (grid[1] // self.tile_size) + 1  # + the base tile

    def _pruned_vision_module(self, grid, rule) -> nn.Module:
        side = self.tile_size // int(self.config.vision_config.patch_size)
        rows, cols = grid[1] // self.tile_size, grid[0] // self.tile_size
        if getattr(rule, "packing", None) == "in-place":
            return PrunedVisionFeatures(self.model, rule, PackKeptInPlace(rows, cols, side, self.model.model.image_newline))
        return PrunedVisionFeatures(self.model, rule, PackPrunedTiles(rows, cols, side, rule.dominant))

    def pruned_image_token_count(self, grid: tuple[int, int], keep: int, method: str = "visionzip") -> int:
        """+ one newline per packed grid row after a rule that keeps tokens in place (TRIO-VE), as its code does."""
        from ..trio.vision_stage import keeps_newlines

        rows = grid[1] // self.tile_size * (self.tile_size // int(self.config.vision_config.patch_size))
        return self.tile_count(grid) * keep + (rows if keeps_newlines(method) else 0)


class PackPrunedTiles(nn.Module):
    """LLaVA-NeXT's packing of pruned tiles, as VisionZip's llava_arch.py does it (restore_image_features_sorted,
    spatial_unpad): the base tile's tokens as they come; then the grid tiles' dominant patches in raster order of
    the whole packed grid (no image_newline, no unpadding); then every grid tile's [CLS]; then every grid tile's
    contextual tokens, tile by tile. features (T, keep, D), kept (T, keep) -> (T * keep, D)."""

    def __init__(self, rows: int, cols: int, side: int, dominant: int):
        super().__init__()
        self.rows, self.cols, self.side, self.dominant = rows, cols, side, dominant

    def forward(self, features, kept):
        grid, dim = features[1:], features.shape[-1]  # (rows * cols, keep, D), tiles in row-major order
        patch = kept[1:, 1:self.dominant] - 1  # (n, dominant - 1): dominant patches, [CLS] dropped
        tile = torch.arange(grid.shape[0], device=kept.device)[:, None]
        # truncating division of non-negative ints: one ONNX Div (floor division adds sign fix-ups on BOOL)
        tile_row = torch.div(tile, self.cols, rounding_mode="trunc")
        patch_row = torch.div(patch, self.side, rounding_mode="trunc")
        row = tile_row * self.side + patch_row
        column = (tile - tile_row * self.cols) * self.side + patch - patch_row * self.side
        order = torch.sort((row * (self.cols * self.side) + column).reshape(-1)).indices
        patches = grid[:, 1:self.dominant].reshape(-1, dim).index_select(0, order)
        return torch.cat([features[0], patches, grid[:, 0], grid[:, self.dominant:].reshape(-1, dim)], dim=0)


def _texts(message: dict, separator: str = " ") -> str:
    return separator.join(part["text"] for part in message["content"] if part["type"] == "text")
