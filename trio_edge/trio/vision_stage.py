"""Schedules of the rules that prune inside the vision tower (trio.methods.VISION_TOWER), light: no torch import.

A vision stage keeps a fixed number of tokens per tile; the model adapter says how many tokens a tile has
(its [CLS] + patches) and how many image tokens the decoder then sees (the family's packing of the kept ones).
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import ScheduleError
from .methods import VISION_TOWER, check_cuts, method_info
from .schedule import Cut, Schedule, VisionStage, schedule_from_file

# VisionZip's released split: 54 dominant + 10 contextual of 64, 108 + 20 of 128, 162 + 30 of 192 (one ratio)
VISIONZIP_CONTEXTUAL_SHARE = 10 / 64


def visionzip_split(keep: int) -> int:
    """Dominant tokens ([CLS] included) of a VisionZip keep without an explicit split: the authors' ratio."""
    return max(1, keep - round(keep * VISIONZIP_CONTEXTUAL_SHARE))


def keeps_newlines(method: str | None) -> bool:
    """Whether a vision-tower rule's kept tokens stay in place in LLaVA-NeXT's packed grid, its image_newline
    tokens kept (TRIO-VE, by index mask), rather than being laid out without them (VisionZip)."""
    return method == "trio-ve"


def written_schedule(schedule_file, cuts, overrides: dict) -> Schedule:
    """The schedule the user wrote out: --schedule-file, else --cuts (none: no pruning)."""
    if schedule_file is not None:
        return schedule_from_file(schedule_file, overrides)
    return Schedule.parse(cuts or "", **overrides)


def is_vision_method(method: str | None) -> bool:
    return method is not None and method_info(method).acts == VISION_TOWER


def vision_schedule(method: str, *, cuts=None, keep_ratio=None, schedule_file=None, preset=None, overrides: dict,
                    tile_tokens: int | None, vision_tokens_for, num_image_tokens: int, num_layers: int) -> Schedule:
    """The schedule of a vision-tower method from the user's options: --preset (the authors' per-tile numbers,
    scaled to the tile's patches), --keep-ratio (KEEP per tile so the decoder sees ratio * M image tokens) or
    --cuts vision:KEEP / --schedule-file. `tile_tokens`: tokens of one tile ([CLS] + patches), None when the
    tower has no [CLS]; `vision_tokens_for(keep, method)`: image tokens the decoder sees when every tile keeps
    `keep`. TRIO-VE (trio_ve_schedule) also takes decoder cuts (TRIO's), as its authors' default does."""
    from .presets import REFERENCE_TOKENS, preset_info

    if preset is not None and preset_info(preset).family is not None:
        raise ScheduleError(f"--preset {preset} is TRIO's {preset_info(preset).family} schedule; this model takes "
                            "the LLaVA ones (--preset trio-ve-64, trio-ve-128, trio-ve-192)")
    if tile_tokens is None:
        raise ScheduleError(f"--method {method} ranks a tile's tokens by its [CLS] attention, and this model's vision "
                            "tower has no [CLS] token; use a decoder method (e.g. --method trio)")
    if method == "trio-ve":
        return trio_ve_schedule(cuts=cuts, keep_ratio=keep_ratio, schedule_file=schedule_file, preset=preset,
                                overrides=overrides, patches=tile_tokens - 1, num_layers=num_layers,
                                vision_tokens_for=lambda keep: vision_tokens_for(keep, method),
                                num_image_tokens=num_image_tokens)
    if preset is not None:
        dominant, contextual = preset_info(preset).vision_for(tile_tokens - 1)
        patches = tile_tokens - 1
        scaled = f"from {REFERENCE_TOKENS} patches per tile to {patches}" if patches != REFERENCE_TOKENS else None
        schedule = Schedule((), vision=VisionStage(dominant + contextual, dominant), **overrides,
                            provenance={"preset": preset, "source": preset_info(preset).source, "scaled": scaled})
    elif keep_ratio is not None:
        if not 0.0 < keep_ratio <= 1.0:
            raise ScheduleError(f"--keep-ratio must be within (0, 1], got {keep_ratio}")
        keep = max(1, round(keep_ratio * num_image_tokens / vision_tokens_for(1, method)))
        schedule = Schedule((), vision=VisionStage(keep), **overrides)
    else:
        schedule = written_schedule(schedule_file, cuts, overrides)
    if schedule.vision is None:
        raise ScheduleError(f"--method {method} prunes inside the vision tower: pass --preset, --keep-ratio or "
                            "--cuts vision:KEEP (tokens kept per tile)")
    if schedule.cuts:
        raise ScheduleError(f"--method {method} has no decoder cuts; drop {schedule.text().split(',', 1)[1]} "
                            "from --cuts")
    return resolve_vision_stage(schedule, method, tile_tokens, lambda keep: vision_tokens_for(keep, method))


def resolve_vision_stage(schedule: Schedule, method: str, tile_tokens: int, vision_tokens_for) -> Schedule:
    """The schedule with its vision stage checked against a tile and its decoder image-token count set."""
    stage = schedule.vision
    if not 1 <= stage.keep <= tile_tokens:
        raise ScheduleError(f"vision keep {stage.keep} per tile is outside 1..{tile_tokens} (the tokens of one tile: "
                            f"its [CLS] + {tile_tokens - 1} patches); lower the keep")
    dominant = stage.dominant
    if method == "trio-ve":
        from .trio_ve import check_ve_keep, ve_kept_count, windows_per_side

        side = round((tile_tokens - 1) ** 0.5)
        keep = check_ve_keep(stage.keep, side)
        if ve_kept_count(side, keep) != keep:
            fits = [t for t in range(1, side * side + 1) if ve_kept_count(side, t) == t]
            below, above = max([t for t in fits if t < keep], default=None), min([t for t in fits if t > keep])
            windows = windows_per_side(side) ** 2
            kept = ve_kept_count(side, keep)
            raise ScheduleError(f"TRIO-VE vision:{keep}: the released rule keeps {kept} tokens per tile for {keep} "
                                f"({windows} windows x int(T/2)//{windows} + T - int(T/2)); pass vision:"
                                + (f"{below} or vision:{above}" if below else f"{above}"))
    if method == "visionzip":
        dominant = dominant or visionzip_split(stage.keep)
    elif dominant:
        raise ScheduleError(f"--method {method} takes vision:KEEP (a DOMINANT+CONTEXTUAL split is VisionZip's)")
    return replace(schedule, vision=VisionStage(stage.keep, dominant, vision_tokens_for(stage.keep)))


def vision_rule(method: str, stage: VisionStage, num_vision_layers: int | None = None):
    """The torch rule (an nn.Module) of a vision-tower method for a resolved stage. A rule declares
    `attention_layers` and `key_layers` (encoder layer indices, negative from the end, as the authors index the
    tower's outputs) and maps (feature-layer hidden states (T, S, Dv), those attentions ((T, H, S, S), ...), those
    keys ((T, H, S, dh), ...)) to (tokens (T, keep, Dv), kept (T, keep) int64: each token's index in its tile,
    0 = [CLS], -1 for merged tokens)."""
    if method == "visionzip":
        from .visionzip import VisionZipRule

        return VisionZipRule(stage.keep, stage.dominant)
    if method == "trio-ve":
        from .trio_ve import TrioVERule

        if num_vision_layers is None:
            raise ValueError("TRIO-VE's rule needs the vision tower's depth (num_vision_layers)")
        return TrioVERule(stage.keep, num_vision_layers)
    raise ScheduleError(f"--method {method} has no vision-tower rule")


# The authors' README default: --visual_token_num 96 after the vision tower, --layer_list [16] --image_token_list
# [32] on the 32-layer LLaMA (64 layer-averaged). 128 and 192 are not released: the same shape, scaled.
TRIO_VE_CUT_LAYER = 16  # of 32
TRIO_VE_SHARES = (1.5, 0.5)  # vision-stage tokens and cut KEEP per layer-averaged token (96 / 64, 32 / 64)


def trio_ve_schedule(*, cuts, keep_ratio, schedule_file, preset, overrides: dict, patches: int, num_layers: int,
                     vision_tokens_for, num_image_tokens: int) -> Schedule:
    """TRIO-VE's schedule: a vision stage (T per tile) and TRIO's cuts after it. --preset trio-ve-64/128/192: T =
    96/192/288 of 576 patches scaled to the tile's patches, one cut at layer 16 of 32 (scaled by depth) keeping a
    third of the vision stage's tokens; --keep-ratio r: the same shape (1.5 r M after the vision stage, the cut's
    KEEP so that the layer average is r M); --cuts vision:T[,LAYER:KEEP...] / --schedule-file as given."""
    from .presets import preset_info, scaled_cut_layer
    from .trio_ve import ve_kept_count

    side = round(patches ** 0.5)
    valid = [t for t in range(1, patches + 1) if ve_kept_count(side, t) == t]
    cut_layer = scaled_cut_layer(TRIO_VE_CUT_LAYER, num_layers, "trio")
    provenance = {}
    if preset is not None or keep_ratio is not None:
        if preset is not None:
            info = preset_info(preset)
            wanted = info.vision[0] * patches / 576
            keep = min(valid, key=lambda t: (abs(t - wanted), t))
            stage_tokens = vision_tokens_for(keep)
            cut_keep = round(info.keeps[0] / info.vision[0] * stage_tokens)
            provenance = {"preset": preset, "source": info.source,
                          "scaled": None if (patches, num_layers) == (576, 32) else
                          f"vision {info.vision[0]} of 576 -> {keep} of {patches} per tile; cut {info.layers[0]}:"
                          f"{info.keeps[0]} of 32 layers -> {cut_layer}:{cut_keep} (a third of the vision tokens)"}
        else:
            if not 0.0 < keep_ratio <= 1.0:
                raise ScheduleError(f"--keep-ratio must be within (0, 1], got {keep_ratio}")
            average = keep_ratio * num_image_tokens
            keep = min(valid, key=lambda t: (abs(vision_tokens_for(t) - TRIO_VE_SHARES[0] * average), t))
            stage_tokens = vision_tokens_for(keep)
            after = num_layers - cut_layer
            cut_keep = round((average * num_layers - stage_tokens * cut_layer) / after) if after else stage_tokens
            if not 1 <= cut_keep <= stage_tokens:
                raise ScheduleError(f"--keep-ratio {keep_ratio} is out of TRIO-VE's reach on this model (the cut at "
                                    f"layer {cut_layer} would keep {cut_keep} of {stage_tokens}); pass --cuts "
                                    "vision:T,LAYER:KEEP")
        schedule = Schedule((Cut(cut_layer, cut_keep),), vision=VisionStage(keep), provenance=provenance, **overrides)
    else:
        schedule = written_schedule(schedule_file, cuts, overrides)
    if schedule.vision is None:
        raise ScheduleError("--method trio-ve prunes inside the vision tower first: pass --preset trio-ve-64, "
                            "--keep-ratio or --cuts vision:T[,LAYER:KEEP] (T tokens kept per tile)")
    check_cuts("trio-ve", [(c.layer, c.keep) for c in schedule.cuts])
    return resolve_vision_stage(schedule, "trio-ve", patches + 1, vision_tokens_for)


# TRIO's Qwen port (ocy1/TRIO qwen/, README): the vision stage keeps int(0.167 M), one cut after layer 14 of 28 keeps
# int(0.333 x the current count). --keep-ratio r takes the same shape: int(1.5 r M) after the tower (0.167 at 1/9),
# a cut at half depth keeping int(0.333 x that), so the layer average is r.
QWEN_CUT_RATIO = 0.333


def trio_ve_qwen_schedule(*, cuts, keep_ratio, schedule_file, preset, overrides: dict, merged_hw: tuple[int, int],
                          num_layers: int) -> Schedule:
    """TRIO's vision stage and decoder cut as its Qwen2.5-VL port schedules them, on a merged grid `merged_hw`
    (h, w) of M tokens: --preset trio-qwen, --keep-ratio r, or --cuts vision:KEEP[,LAYER:KEEP...] /
    --schedule-file as given (absolute counts)."""
    from .presets import preset_info, scaled_cut_layer
    from .trio_ve_qwen import check_qwen_ve_keep

    tokens = merged_hw[0] * merged_hw[1]
    if preset is not None or keep_ratio is not None:
        if preset is not None:
            info = preset_info(preset)
            if info.family is None:
                raise ScheduleError(f"--preset {preset} is TRIO's LLaVA schedule (per CLIP tile); on this model use "
                                    "--preset trio-qwen (the authors' Qwen2.5-VL settings)")
            vision_ratio, cut_ratio = info.ratios
            reference_layer, reference = info.layers[0], info.reference_layers
            provenance = {"preset": preset, "source": info.source}
        else:
            if not 0.0 < keep_ratio <= 1.0:
                raise ScheduleError(f"--keep-ratio must be within (0, 1], got {keep_ratio}")
            vision_ratio, cut_ratio, reference_layer, reference = 1.5 * keep_ratio, QWEN_CUT_RATIO, 14, 28
            provenance = {}
        keep = int(vision_ratio * tokens)  # the authors' int(ratio * M)
        layer = scaled_cut_layer(reference_layer, num_layers, "trio", reference=reference, lowest=1)
        cut_keep = int(cut_ratio * keep)
        if provenance and num_layers != reference:
            provenance["scaled"] = f"cut after layer {reference_layer} of {reference} -> {layer} of {num_layers}"
        schedule = Schedule((Cut(layer, cut_keep),) if 0 < cut_keep < keep else (), vision=VisionStage(keep),
                            provenance=provenance, **overrides)
    else:
        schedule = written_schedule(schedule_file, cuts, overrides)
    if schedule.vision is None:
        raise ScheduleError("--method trio-ve prunes inside the vision tower first: pass --preset trio-qwen, "
                            "--keep-ratio or --cuts vision:KEEP[,LAYER:KEEP] (KEEP of the image's merged tokens)")
    if schedule.vision.dominant:
        raise ScheduleError("--method trio-ve takes vision:KEEP (a DOMINANT+CONTEXTUAL split is VisionZip's)")
    check_qwen_ve_keep(schedule.vision.keep, *merged_hw)
    check_cuts("trio-ve", [(c.layer, c.keep) for c in schedule.cuts])
    return replace(schedule, vision=VisionStage(schedule.vision.keep, 0, schedule.vision.keep))
