"""Schedules of the rules that prune inside the vision tower (trio.methods.VISION_TOWER), light: no torch import.

A vision stage keeps a fixed number of tokens per tile; the model adapter says how many tokens a tile has
(its [CLS] + patches) and how many image tokens the decoder then sees (the family's packing of the kept ones).
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import ScheduleError
from .methods import VISION_TOWER, method_info
from .schedule import Schedule, VisionStage

# VisionZip's released split: 54 dominant + 10 contextual of 64, 108 + 20 of 128, 162 + 30 of 192 (one ratio)
VISIONZIP_CONTEXTUAL_SHARE = 10 / 64


def visionzip_split(keep: int) -> int:
    """Dominant tokens ([CLS] included) of a VisionZip keep without an explicit split: the authors' ratio."""
    return max(1, keep - round(keep * VISIONZIP_CONTEXTUAL_SHARE))


def is_vision_method(method: str | None) -> bool:
    return method is not None and method_info(method).acts == VISION_TOWER


def vision_schedule(method: str, *, cuts=None, keep_ratio=None, schedule_file=None, preset=None, overrides: dict,
                    tile_tokens: int | None, vision_tokens_for, num_image_tokens: int) -> Schedule:
    """The schedule of a vision-tower method from the user's options: --preset (the authors' per-tile numbers,
    scaled to the tile's patches), --keep-ratio (KEEP per tile so the decoder sees ratio * M image tokens) or
    --cuts vision:KEEP / --schedule-file. `tile_tokens`: tokens of one tile ([CLS] + patches), None when the
    tower has no [CLS]; `vision_tokens_for(keep)`: image tokens the decoder sees when every tile keeps `keep`."""
    from pathlib import Path

    from .presets import REFERENCE_TOKENS, preset_info

    if tile_tokens is None:
        raise ScheduleError(f"--method {method} ranks a tile's tokens by its [CLS] attention, and this model's vision "
                            "tower has no [CLS] token; use a decoder method (e.g. --method trio)")
    if preset is not None:
        dominant, contextual = preset_info(preset).vision_for(tile_tokens - 1)
        patches = tile_tokens - 1
        scaled = f"from {REFERENCE_TOKENS} patches per tile to {patches}" if patches != REFERENCE_TOKENS else None
        schedule = Schedule((), vision=VisionStage(dominant + contextual, dominant), **overrides,
                            provenance={"preset": preset, "source": preset_info(preset).source, "scaled": scaled})
    elif keep_ratio is not None:
        if not 0.0 < keep_ratio <= 1.0:
            raise ScheduleError(f"--keep-ratio must be within (0, 1], got {keep_ratio}")
        keep = max(1, round(keep_ratio * num_image_tokens / vision_tokens_for(1)))
        schedule = Schedule((), vision=VisionStage(keep), **overrides)
    elif schedule_file is not None:
        path = Path(schedule_file)
        if not path.is_file():
            raise ScheduleError(f"schedule file not found: {path}")
        schedule = replace(Schedule.from_json(path.read_text()), **overrides)
    else:
        schedule = Schedule.parse(cuts or "", **overrides)
    if schedule.vision is None:
        raise ScheduleError(f"--method {method} prunes inside the vision tower: pass --preset, --keep-ratio or "
                            "--cuts vision:KEEP (tokens kept per tile)")
    if schedule.cuts:
        raise ScheduleError(f"--method {method} has no decoder cuts; drop {schedule.text().split(',', 1)[1]} "
                            "from --cuts")
    return resolve_vision_stage(schedule, method, tile_tokens, vision_tokens_for)


def resolve_vision_stage(schedule: Schedule, method: str, tile_tokens: int, vision_tokens_for) -> Schedule:
    """The schedule with its vision stage checked against a tile and its decoder image-token count set."""
    stage = schedule.vision
    if not 1 <= stage.keep <= tile_tokens:
        raise ScheduleError(f"vision keep {stage.keep} per tile is outside 1..{tile_tokens} (the tokens of one tile: "
                            f"its [CLS] + {tile_tokens - 1} patches); lower the keep")
    dominant = stage.dominant
    if method == "visionzip":
        dominant = dominant or visionzip_split(stage.keep)
    elif dominant:
        raise ScheduleError(f"--method {method} takes vision:KEEP (a DOMINANT+CONTEXTUAL split is VisionZip's)")
    return replace(schedule, vision=VisionStage(stage.keep, dominant, vision_tokens_for(stage.keep)))


def vision_rule(method: str, stage: VisionStage):
    """The torch rule (an nn.Module) of a vision-tower method for a resolved stage. A rule declares
    `attention_layers` and `key_layers` (encoder layer indices, negative from the end, as the authors index the
    tower's outputs) and maps (feature-layer hidden states (T, S, Dv), those attentions ((T, H, S, S), ...), those
    keys ((T, H, S, dh), ...)) to (tokens (T, keep, Dv), kept (T, keep) int64: each token's index in its tile,
    0 = [CLS], -1 for merged tokens)."""
    if method == "visionzip":
        from .visionzip import VisionZipRule

        return VisionZipRule(stage.keep, stage.dominant)
    raise ScheduleError(f"--method {method} has no vision-tower rule")
