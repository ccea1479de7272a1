"""TRIO pruning schedules: cuts `LAYER:KEEP`, validated against a model, serialised as versioned JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from ..errors import ScheduleError

POSITION_MODES = ("renumber", "original")
# Precision of the select stages: fp32 (exact: the kept set equals the fp32 reference) or the model's own
# dtype (fp16/bf16 models: several times less select compute, near-tied tokens may differ from fp32).
SELECT_PRECISIONS = ("fp32", "model")
SCHEDULE_FORMAT_VERSION = 1


def split_keep(keep: int, items: int) -> tuple[int, ...]:
    """A cut's KEEP split over `items` images (or video frame groups): KEEP // items each, one more for the first
    KEEP % items (--budget-per-image)."""
    base, extra = divmod(keep, items)
    return tuple(base + (1 if i < extra else 0) for i in range(items))


@dataclass(frozen=True)
class Cut:
    """Prune after `layer` decoder layers have run (0 = before any), keeping `keep` image tokens."""

    layer: int
    keep: int


@dataclass(frozen=True)
class VisionStage:
    """Prune inside the vision tower, before the decoder: keep `keep` tokens of every tile (the methods whose
    rule acts there, trio.methods.VISION_TOWER). `dominant`: VisionZip's share of `keep` chosen by [CLS] attention
    ([CLS] itself included), the rest are its contextual (merged) tokens; 0 for rules without that split.
    `tokens`: image tokens the decoder then sees (every tile's `keep`, packed as the model family's authors do),
    set when the stage is resolved against a model (0 until then)."""

    keep: int
    dominant: int = 0
    tokens: int = 0

    def describe(self) -> str:
        split = f" ({self.dominant}+{self.keep - self.dominant})" if self.dominant else ""
        return f"vision {self.keep}{split} per tile"


@dataclass(frozen=True)
class Schedule:
    cuts: tuple[Cut, ...] = ()
    threshold: float = 0.8
    positions: str = "renumber"
    provenance: dict = field(default_factory=dict, compare=False)
    precision: str = "fp32"  # of the select stages (SELECT_PRECISIONS)
    vision: VisionStage | None = None  # pruning inside the vision tower, before the first cut

    def __post_init__(self):
        object.__setattr__(self, "cuts", tuple(self.cuts))
        if self.positions not in POSITION_MODES:
            raise ScheduleError(f"positions must be one of {POSITION_MODES}, got {self.positions!r}")
        if self.precision not in SELECT_PRECISIONS:
            raise ScheduleError(f"select precision must be one of {SELECT_PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ScheduleError(f"the NMS threshold must be within [0, 1], got {self.threshold}")
        layers = [c.layer for c in self.cuts]
        if layers != sorted(set(layers)):
            raise ScheduleError(f"cut layers must be strictly increasing, got {layers}")

    @property
    def pruning(self) -> bool:
        return bool(self.cuts) or self.vision is not None

    def decoder_image_tokens(self, num_image_tokens: int) -> int:
        """Image tokens entering the decoder: the vision stage's, else all `num_image_tokens`."""
        return self.vision.tokens if self.vision is not None and self.vision.tokens else num_image_tokens

    @classmethod
    def parse(cls, text: str, **kwargs) -> "Schedule":
        """'1:92,10:54,15:22' -> Schedule; '' or 'none' -> no pruning. A first part 'vision:KEEP' (or
        'vision:DOMINANT+CONTEXTUAL', VisionZip's split) prunes inside the vision tower, KEEP tokens per tile."""
        text = (text or "").strip()
        if text.lower() in ("", "none", "full"):
            return cls((), **kwargs)
        cuts, vision = [], kwargs.pop("vision", None)
        for part in text.split(","):
            if part.strip().lower().startswith("vision:"):
                vision = _parse_vision(part.strip())
                continue
            try:
                layer, keep = (int(x) for x in part.strip().split(":"))
            except ValueError:
                raise ScheduleError(f"bad cut {part.strip()!r}: write LAYER:KEEP, e.g. 2:64 (several: 1:92,10:54)") from None
            cuts.append(Cut(layer, keep))
        return cls(tuple(cuts), vision=vision, **kwargs)

    def text(self) -> str:
        """The cuts as --cuts takes them (Schedule.parse(s.text()) has the same vision stage and cuts)."""
        parts = [f"vision:{self.vision.dominant}+{self.vision.keep - self.vision.dominant}" if self.vision
                 and self.vision.dominant else f"vision:{self.vision.keep}"] if self.vision else []
        return ",".join(parts + [f"{c.layer}:{c.keep}" for c in self.cuts]) or "none"

    def validate(self, num_layers: int, num_image_tokens: int) -> "Schedule":
        available = self.decoder_image_tokens(num_image_tokens)
        for cut in self.cuts:
            if not 0 <= cut.layer <= num_layers - 1:
                raise ScheduleError(f"cut {cut.layer}:{cut.keep}: LAYER must be within 0..{num_layers - 1} "
                                    f"(the model has {num_layers} decoder layers)")
            if not 1 <= cut.keep <= available:
                raise ScheduleError(f"cut {cut.layer}:{cut.keep}: KEEP must be within 1..{available} "
                                    f"(image tokens entering this cut); lower KEEP")
            available = cut.keep
        return self

    def tokens_per_layer(self, num_layers: int, num_image_tokens: int) -> list[int]:
        counts, current, cuts = [], self.decoder_image_tokens(num_image_tokens), {c.layer: c.keep for c in self.cuts}
        for layer in range(num_layers):
            current = cuts.get(layer, current)
            counts.append(current)
        return counts

    def layer_averaged_tokens(self, num_layers: int, num_image_tokens: int) -> float:
        counts = self.tokens_per_layer(num_layers, num_image_tokens)
        return sum(counts) / len(counts)

    def budget_ratio(self, num_layers: int, num_image_tokens: int) -> float:
        return self.layer_averaged_tokens(num_layers, num_image_tokens) / num_image_tokens

    def describe(self, num_layers: int, num_image_tokens: int) -> str:
        cuts = ",".join(f"{c.layer}:{c.keep}" for c in self.cuts) or "none"
        avg = self.layer_averaged_tokens(num_layers, num_image_tokens)
        precision = "" if self.precision == "fp32" or not self.cuts else "; selection in the model's precision"
        vision = f"{self.vision.describe()} ({self.vision.tokens} image tokens), " if self.vision else ""
        return (f"{vision}cuts {cuts}: {avg:.1f} of {num_image_tokens} image tokens layer-averaged "
                f"({100 * avg / num_image_tokens:.1f}%){precision}")

    def to_json(self) -> str:
        body = {"format_version": SCHEDULE_FORMAT_VERSION, "cuts": [asdict(c) for c in self.cuts],
                "threshold": self.threshold, "positions": self.positions, "precision": self.precision,
                "provenance": self.provenance}
        if self.vision is not None:
            body["vision"] = asdict(self.vision)
        return json.dumps(body, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Schedule":
        try:
            body = json.loads(text)
            version = body.get("format_version")
            if version != SCHEDULE_FORMAT_VERSION:
                raise ScheduleError(f"schedule file format_version {version!r} is not supported "
                                    f"(this trio-edge reads {SCHEDULE_FORMAT_VERSION}); upgrade trio-edge")
            cuts = tuple(Cut(int(c["layer"]), int(c["keep"])) for c in body["cuts"])
            vision = VisionStage(**body["vision"]) if body.get("vision") else None
            return cls(cuts, float(body.get("threshold", 0.8)), body.get("positions", "renumber"),
                       body.get("provenance", {}), body.get("precision", "fp32"), vision)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ScheduleError(f"not a trio-edge schedule file: {error}") from None


def _parse_vision(part: str) -> VisionStage:
    """'vision:KEEP' or 'vision:DOMINANT+CONTEXTUAL' -> VisionStage (tokens resolved later)."""
    value = part.split(":", 1)[1].strip()
    try:
        numbers = [int(x) for x in value.split("+")]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or any(n < 0 for n in numbers):
        raise ScheduleError(f"bad vision stage {part!r}: write vision:KEEP (tokens per tile) or, for VisionZip, "
                            "vision:DOMINANT+CONTEXTUAL, e.g. vision:54+10")
    if len(numbers) == 2 and numbers[0] < 1:
        raise ScheduleError(f"bad vision stage {part!r}: VisionZip keeps at least one dominant token (its [CLS]); "
                            "write vision:D+C with D >= 1")
    return VisionStage(sum(numbers), numbers[0] if len(numbers) == 2 else 0)


def lowest_keep_ratio(cut_layers, num_layers: int) -> float:
    """The layer-averaged share of image tokens that cuts at `cut_layers` always keep: every token runs through the
    layers before the first cut. A --keep-ratio must lie above it."""
    return cut_layers[0] / num_layers


def schedule_for_ratio(ratio: float, cut_layers, keep_weights, num_layers: int, num_image_tokens: int,
                       **kwargs) -> Schedule:
    """Scale `keep_weights` (one per cut) so the layer-averaged image tokens are ratio * M."""
    if not 0.0 < ratio <= 1.0:
        raise ScheduleError(f"--keep-ratio must be within (0, 1], got {ratio}")
    m, layers = num_image_tokens, num_layers
    bounds = list(cut_layers[1:]) + [layers]
    full_cost = cut_layers[0] * m  # layers before the first cut see every token
    weighted = sum((end - start) * w * m for start, end, w in zip(cut_layers, bounds, keep_weights))
    scale = (ratio * m * layers - full_cost) / weighted
    if scale <= 0:
        lowest = lowest_keep_ratio(cut_layers, layers)
        raise ScheduleError(f"--keep-ratio {ratio:.4g} is below what cuts at layers {list(cut_layers)} can reach "
                            f"({lowest:.3f}); pass explicit --cuts with an earlier first cut")

    def keeps_at(scale_: float) -> list[int]:
        keeps_, previous = [], m
        for weight in keep_weights:
            keep = max(1, min(previous, round(scale_ * weight * m)))
            keeps_.append(keep)
            previous = keep
        return keeps_

    def average(keeps_: list[int]) -> float:
        return Schedule(tuple(Cut(c, k) for c, k in zip(cut_layers, keeps_))).layer_averaged_tokens(layers, m)

    target = ratio * m
    keeps = keeps_at(scale)
    if abs(average(keeps) - target) > 1.0:
        # Clamping (KEEP <= tokens entering the cut) cut the budget short, e.g. high ratios: search the
        # scale instead; the average never decreases with the scale and each step moves it < 1 token.
        low, high = 0.0, scale
        while average(keeps_at(high)) < target:
            high *= 2
        for _ in range(200):
            mid = (low + high) / 2
            low, high = (mid, high) if average(keeps_at(mid)) < target else (low, mid)
        keeps = min((keeps_at(low), keeps_at(high)), key=lambda k: abs(average(k) - target))
        if abs(average(keeps) - target) > 1.0:
            raise ScheduleError(f"--keep-ratio {ratio:.4g} cannot be reached with cuts at layers {list(cut_layers)} "
                                f"(closest: {average(keeps) / m:.3f}); pass explicit --cuts")
    return Schedule(tuple(Cut(c, k) for c, k in zip(cut_layers, keeps)), **kwargs).validate(layers, m)


def schedule_from_file(schedule_file, overrides: dict) -> Schedule:
    """The schedule a --schedule-file holds, with the command line's positions / threshold / precision."""
    from pathlib import Path

    path = Path(schedule_file)
    if not path.is_file():
        raise ScheduleError(f"schedule file not found: {path}")
    return replace(Schedule.from_json(path.read_text()), **overrides)


def check_budget_options(*, cuts, keep_ratio, budget, schedule_file, preset, method) -> list[str]:
    """The budget options given (names), refusing more than one, and --budget for a method other than SparseVLM."""
    given = [name for name, value in (("--cuts", cuts), ("--keep-ratio", keep_ratio), ("--budget", budget),
                                      ("--schedule-file", schedule_file), ("--preset", preset)) if value is not None]
    if budget is not None and method != "sparsevlm":
        raise ScheduleError("--budget picks one of SparseVLM's tables: use it with --method sparsevlm "
                            "(for other methods pass --keep-ratio or --cuts)")
    if len(given) > 1:
        raise ScheduleError(f"{' and '.join(given)} are mutually exclusive; pass one")
    return given


def resolve_schedule(*, cuts: str | None = None, keep_ratio: float | None = None, schedule_file=None,
                     preset: str | None = None,
                     positions: str | None = None, threshold: float | None = None, precision: str | None = None,
                     method: str | None = None, budget: int | None = None, default_cut_layers=(),
                     default_keep_weights=(), num_layers: int, num_image_tokens: int,
                     tile_tokens: int | None = None, vision_tokens_for=None,
                     visual_runs: tuple[int, ...] | None = None) -> Schedule:
    """One schedule from the mutually exclusive user options; no option means no pruning. `method` gives the
    default positions (its authors' choice, trio.methods) and checks the cut layers it can act at. `budget` picks
    one of SparseVLM's tables (--method sparsevlm only). `tile_tokens` / `vision_tokens_for`: a vision-tower
    method's tile ([CLS] + patches; None without a [CLS]) and the decoder's image tokens for a keep per tile.
    `visual_runs`: the image tokens of each contiguous visual span of a request (the embedding-level DART's quotas
    are per span)."""
    from .methods import check_cuts, method_info
    from .presets import OWN_PLACEMENT, PRESETS, method_for, placed_cut_layers, preset_info

    if preset is not None:
        method = method_for(method, preset, "trio")
    if method is not None and positions is None and schedule_file is None:
        positions = method_info(method).positions
    given = check_budget_options(cuts=cuts, keep_ratio=keep_ratio, budget=budget, schedule_file=schedule_file,
                                 preset=preset, method=method)
    overrides = {k: v for k, v in (("positions", positions), ("threshold", threshold), ("precision", precision))
                 if v is not None}
    from .vision_stage import is_vision_method, vision_schedule

    if is_vision_method(method):
        return vision_schedule(method, cuts=cuts, keep_ratio=keep_ratio, schedule_file=schedule_file, preset=preset,
                               overrides=overrides, tile_tokens=tile_tokens, vision_tokens_for=vision_tokens_for,
                               num_image_tokens=num_image_tokens, num_layers=num_layers
                               ).validate(num_layers, num_image_tokens)
    if method not in (None, "trio") and not (given or cuts):
        # naming a rule without a budget would silently run unpruned (TRIO, the default, does so on purpose)
        presets = [name for name, info in PRESETS.items() if info.method == method]
        how = ("--budget 64/96/128/192 (its authors' tables; their code defaults to 192), --keep-ratio R or --cuts N:K"
               if method == "sparsevlm" else "--keep-ratio R or --cuts LAYER:KEEP"
               + (f" (or its authors' schedule: --preset {' / '.join(presets)})" if presets else ""))
        raise ScheduleError(f"--method {method} needs a token budget: pass {how}")
    if method == "sparsevlm" and any(value is not None for value in (budget, keep_ratio, cuts)):
        if positions == "original":
            raise ScheduleError("--method sparsevlm renumbers positions after each cut, as its authors' code does; "
                                "drop --positions original")
        from .sparsevlm import sparsevlm_schedule

        schedule = sparsevlm_schedule(num_layers=num_layers, num_image_tokens=num_image_tokens, budget=budget,
                                      keep_ratio=keep_ratio, cuts=cuts, **overrides)
        return schedule.validate(num_layers, num_image_tokens)
    if method == "dart-embed" and keep_ratio is not None:  # Edge-LLM's quota of every span, at layer 0
        from .dart_embed import span_quotas

        if not 0 < keep_ratio <= 1:
            raise ScheduleError(f"--keep-ratio must be within (0, 1], got {keep_ratio}")
        runs = tuple(visual_runs or (num_image_tokens,))
        schedule = Schedule((Cut(0, sum(span_quotas(runs, keep_ratio))),), **overrides)
    elif schedule_file is not None:
        schedule = schedule_from_file(schedule_file, overrides)
    elif preset is not None:
        text, scaled = preset_info(preset).cuts_for(num_layers, num_image_tokens)
        provenance = {"preset": preset, "source": preset_info(preset).source,
                      "scaled": f"from 32 layers / 576 tokens to {num_layers} / {num_image_tokens}" if scaled else None}
        schedule = Schedule.parse(text, provenance=provenance, **overrides)
    elif keep_ratio is not None:
        layers, weights = default_cut_layers, default_keep_weights  # TRIO's, scaled (also random / uniform)
        if method in OWN_PLACEMENT:  # FastV / DART once at K=2, PyramidDrop at 8/16/24 (of 32, scaled)
            layers, weights, _ = placed_cut_layers(method, keep_ratio, num_layers)
            lowest = lowest_keep_ratio(layers, num_layers)
            if keep_ratio <= lowest:  # schedule_for_ratio's own refusal would advise an earlier cut, not possible here
                raise ScheduleError(f"--method {method} cuts at layers {list(layers)} of {num_layers} here (its "
                                    f"authors' placement), so it keeps more than {lowest:.3f} of the image tokens "
                                    f"layer-averaged; raise --keep-ratio above that, or pass --cuts LAYER:KEEP")
        schedule = schedule_for_ratio(keep_ratio, layers, weights, num_layers, num_image_tokens, **overrides)
    else:
        schedule = Schedule.parse(cuts or "", **overrides)
    if schedule.vision is not None:
        raise ScheduleError(f"vision:{schedule.vision.keep} prunes inside the vision tower: it needs a method that acts "
                            "there (--method visionzip)")
    if method is not None:
        check_cuts(method, [(c.layer, c.keep) for c in schedule.cuts])
    return schedule.validate(num_layers, num_image_tokens)
