"""The pipeline plan: which graphs run in which order with which static sizes.

Built once from (model, schedule, grid, maxima) at export; stored in the manifest; the runtime
reads it back and needs nothing else to orchestrate the graphs.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from .. import defaults
from ..errors import InputError, ScheduleError, require_whole_numbers
from ..trio.methods import EMBEDDING, VISION_TOWER, check_cuts, method_info
from ..trio.schedule import Cut, Schedule, VisionStage, split_keep

POSITIONS_OVER_TRAINED = 4  # the most a plan may reach past max_position_embeddings (RoPE extrapolates)


@dataclass(frozen=True)
class SegmentPlan:
    name: str
    start: int  # first decoder layer
    end: int  # one past the last decoder layer
    image_tokens: int  # image tokens in this group's sequence
    kv_length: int  # static KV buffer length: max text + image tokens + max new tokens
    with_head: bool  # ends with final norm + lm_head (the last group)


@dataclass(frozen=True)
class SelectPlan:
    name: str
    proxy_layer: int
    tokens_in: int  # image tokens entering this cut
    keep: int
    # rules that score with layer N-1 (FastV, DART, ...): the one-layer segment [N-1, N) this select runs in
    # prefill (it writes that segment's KV buffer); the segment itself runs the layer in decode. None: TRIO's
    # proxy cut, which runs after the preceding segment.
    owned_segment: str | None = None
    merged: int = 0  # tokens the rule adds right after the kept ones (SparseVLM's recycling); older manifests: 0
    # --budget-per-image: the image tokens of each image (or video frame group) entering this cut, and how many of
    # each it keeps (they sum to tokens_in and keep); empty: one budget over all image tokens of the request
    item_tokens: tuple[int, ...] = ()
    item_keeps: tuple[int, ...] = ()


@dataclass(frozen=True)
class PipelinePlan:
    num_layers: int
    num_image_tokens: int
    max_text_tokens: int
    max_new_tokens: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    grid: tuple[int, int]
    schedule: Schedule
    segments: tuple[SegmentPlan, ...]
    selects: tuple[SelectPlan, ...]
    nms_iterations: int
    method: str = "trio"  # the selection rule of every cut (trio.methods); older manifests: trio
    # image tokens of the unpruned model; num_image_tokens is what the decoder sees, fewer after a vision stage
    # (schedule.vision: a rule inside the vision graph keeps a fixed count per tile). Older manifests: 0 = equal
    unpruned_image_tokens: int = 0
    # rows of a position: 1 (LLaVA: position_ids (1, T)) or 3 (Qwen's M-RoPE: (3, 1, T) temporal/height/width)
    position_rows: int = 1
    # Qwen3-VL's DeepStack: vision features added to the image positions after decoder layers 0..k-1 (k planes of
    # hidden_size each, carried beside the hidden states until layer k); 0 for every other family / older manifests
    deepstack_layers: int = 0
    # what one request shows the model: `items` runs of the vision graph, each giving num_image_tokens / items image
    # tokens -- `items` images (video_frames 0), or one video of `video_frames` frames fed as `items` groups of
    # frames (the model's temporal patch); older manifests: one image
    items: int = 1
    video_frames: int = 0

    @property
    def images(self) -> int:
        """Images a request takes (0 for a video export)."""
        return 0 if self.video_frames else self.items

    @property
    def image_tokens_per_item(self) -> int:
        """Image tokens of one image / frame group entering the decoder (the vision graph's output rows)."""
        return self.num_image_tokens // self.items

    @property
    def budget_per_image(self) -> bool:
        return any(s.item_keeps for s in self.selects)

    @property
    def cut_rule(self) -> str:
        """The rule of the decoder cuts: the method's, or TRIO's after TRIO-VE's vision stage (trio.methods)."""
        return method_info(self.method).cut_rule

    @property
    def full_image_tokens(self) -> int:
        return self.unpruned_image_tokens or self.num_image_tokens

    def stages(self):
        """Segments and selects interleaved in prefill order; a select that owns a segment replaces it."""
        order = []
        for segment in self.segments:
            owner = next((s for s in self.selects if s.owned_segment == segment.name), None)
            if owner is not None:
                order.append(owner)
                continue
            cut = next((s for s in self.selects if s.owned_segment is None and s.proxy_layer == segment.start), None)
            if cut is not None:
                order.append(cut)
            order.append(segment)
        return order

    def describe(self) -> str:
        """The schedule's summary; with tokens a rule adds (SparseVLM's merged ones), the realised average too."""
        text = self.schedule.describe(self.num_layers, self.full_image_tokens)
        if not any(s.merged for s in self.selects):
            return text
        average = sum((s.end - s.start) * s.image_tokens for s in self.segments) / self.num_layers
        merged = "/".join(str(s.merged) for s in self.selects)
        return (f"{text}; + {merged} merged tokens: {average:.1f} layer-averaged "
                f"({100 * average / self.full_image_tokens:.1f}%) in all")

    def takes_deepstack(self, graph: str) -> bool:
        """Whether a segment or select graph reads the DeepStack planes: it runs a layer below deepstack_layers (a
        segment; a select owning layer N-1), or it prunes tokens whose planes are still to be added (a cut N < k)."""
        k = self.deepstack_layers
        for segment in self.segments:
            if segment.name == graph:
                return segment.start < k
        select = next((s for s in self.selects if s.name == graph), None)
        if select is None:
            return False
        return select.proxy_layer < k or (select.owned_segment is not None and select.proxy_layer - 1 < k)

    def gives_deepstack(self, select: SelectPlan) -> bool:
        """Whether a select passes the DeepStack planes of its kept tokens on (a cut before layer k)."""
        return select.proxy_layer < self.deepstack_layers

    def owned_segment_of(self, select: SelectPlan) -> SegmentPlan | None:
        return next((s for s in self.segments if s.name == select.owned_segment), None)

    def image_tokens_entering(self, graph: str) -> int:
        """Image tokens in the sequence a graph receives (all M before the first cut)."""
        for segment in self.segments:
            if segment.name == graph:
                return segment.image_tokens
        for select in self.selects:
            if select.name == graph:
                return select.tokens_in
        return self.num_image_tokens

    def kv_shape(self, segment: SegmentPlan) -> tuple[int, ...]:
        return (segment.end - segment.start, 2, self.num_kv_heads, segment.kv_length, self.head_dim)

    def kv_bytes(self, bytes_per_element: int) -> int:
        total = 0
        for segment in self.segments:
            n = 1
            for dim in self.kv_shape(segment):
                n *= dim
            total += n * bytes_per_element
        return total

    def to_dict(self) -> dict:
        body = asdict(self)
        body["schedule"] = {"cuts": [asdict(c) for c in self.schedule.cuts], "threshold": self.schedule.threshold,
                            "positions": self.schedule.positions, "precision": self.schedule.precision}
        if self.schedule.vision is not None:
            body["schedule"]["vision"] = asdict(self.schedule.vision)
        body["grid"] = list(self.grid)
        return body

    @classmethod
    def from_dict(cls, body: dict) -> "PipelinePlan":
        body = dict(body)
        sched = body["schedule"]
        body["schedule"] = Schedule(tuple(Cut(**c) for c in sched["cuts"]), sched["threshold"], sched["positions"],
                                    precision=sched.get("precision", "fp32"),  # older manifests: fp32
                                    vision=VisionStage(**sched["vision"]) if sched.get("vision") else None)
        body["segments"] = tuple(SegmentPlan(**s) for s in body["segments"])
        body["selects"] = tuple(SelectPlan(**{**s, "item_tokens": tuple(s.get("item_tokens", ())),
                                              "item_keeps": tuple(s.get("item_keeps", ()))}) for s in body["selects"])
        body["grid"] = tuple(body["grid"])
        return cls(**body)


def plan_for(adapter, schedule: Schedule, *, grid, max_text_tokens: int = defaults.MAX_TEXT_TOKENS,
             max_new_tokens: int = defaults.MAX_NEW_TOKENS,
             nms_iterations: int = defaults.NMS_ITERATIONS, method: str = defaults.METHOD,
             images: int = 1, video_frames: int = 0, budget_per_image: bool = False) -> PipelinePlan:
    """The plan of a model adapter (models.llava) for a schedule (resolved for the same images / video: the
    adapter's `schedule(grid, items=...)`), fixed grid and maxima. `images`: images per request, in prompt order;
    `video_frames` (> 0): a request is one video of that many frames instead (the adapter says how they group)."""
    decoder = adapter.decoder
    require_whole_numbers({"--max-text-tokens": max_text_tokens, "--max-new-tokens": max_new_tokens})
    items = visual_items(adapter, images, video_frames)
    image_tokens, limit = items * adapter.image_token_count(grid), adapter.max_positions
    positions = image_tokens + max_text_tokens + max_new_tokens
    if limit is not None and positions > limit:
        told = (f"{positions} positions ({image_tokens} image tokens + --max-text-tokens "
                f"{max_text_tokens} + --max-new-tokens {max_new_tokens}), over the {limit} the model was trained on "
                "(max_position_embeddings)")
        if positions > POSITIONS_OVER_TRAINED * limit:  # a typo, and buffers no machine holds
            raise InputError(f"{told}, more than {POSITIONS_OVER_TRAINED} times that; lower --max-new-tokens or "
                             "--max-text-tokens")
        logging.getLogger("trio_edge").warning(f"notice: {told}; past them its answers degrade")
    return make_plan(
        num_layers=decoder.num_layers, num_image_tokens=image_tokens, schedule=schedule,
        max_text_tokens=max_text_tokens, max_new_tokens=max_new_tokens, hidden_size=decoder.hidden_size,
        num_kv_heads=decoder.num_kv_heads, head_dim=decoder.head_dim, vocab_size=decoder.vocab_size, grid=grid,
        nms_iterations=nms_iterations, method=method, position_rows=adapter.position_rows,
        deepstack_layers=adapter.deepstack_layers, items=items, video_frames=video_frames,
        budget_per_image=budget_per_image, visual_runs=adapter.visual_runs(grid, items, bool(video_frames)),
    )


def visual_items(adapter, images: int, video_frames: int) -> int:
    """Vision-graph runs per request: one per image, or the video's frame groups (adapter.video_items)."""
    require_whole_numbers({"--images": images}, minimum=0)
    require_whole_numbers({"--video-frames": video_frames}, minimum=0)
    if video_frames:
        if images not in (0, 1):
            raise InputError(f"an export takes images or one video, not both: drop --images {images} or "
                             "--video-frames")
        return adapter.video_items(video_frames)
    if images < 1:
        raise InputError("--images must be at least 1 (or give --video-frames for a video export)")
    return images


def image_tokens_leaving(method: str, cuts, num_image_tokens: int) -> list[int]:
    """Image tokens in the sequence after each cut: KEEP, plus the merged tokens of SparseVLM's recycling."""
    if method == "sparsevlm":
        from ..trio.sparsevlm import image_tokens_after

        return image_tokens_after(cuts, num_image_tokens)
    return [c.keep for c in cuts]


def make_plan(*, num_layers, num_image_tokens, schedule: Schedule, max_text_tokens, max_new_tokens,
              hidden_size, num_kv_heads, head_dim, vocab_size, grid,
              nms_iterations=defaults.NMS_ITERATIONS, method: str = defaults.METHOD,
              position_rows: int = 1, deepstack_layers: int = 0, items: int = 1, video_frames: int = 0,
              budget_per_image: bool = False, visual_runs: tuple[int, ...] | None = None) -> PipelinePlan:
    """`num_image_tokens`: the unpruned model's, over all `items` images / frame groups of a request; a vision stage
    (schedule.vision) leaves the decoder fewer. `budget_per_image`: every cut splits its KEEP over the items.
    `visual_runs`: the image tokens of each contiguous visual span (the embedding-level DART keeps a quota of
    each; default one span per item)."""
    schedule.validate(num_layers, num_image_tokens)
    if items > 1 and method_info(method).cut_rule == "sparsevlm" and schedule.cuts:
        raise ScheduleError("SparseVLM's released code takes one image (its raters and recycling read one image span); "
                            "use --method trio, fastv, dart, pdrop, random or uniform for several images or a video")
    if schedule.vision is not None and (method_info(method).acts != VISION_TOWER or not schedule.vision.tokens):
        raise ScheduleError(f"the schedule prunes inside the vision tower ({schedule.vision.describe()}): it needs a "
                            "vision-tower method (--method visionzip), resolved against the model (adapter.schedule)")
    unpruned, num_image_tokens = num_image_tokens, schedule.decoder_image_tokens(num_image_tokens)
    owns_layer = method_info(method).owns_layer
    check_cuts(method, [(c.layer, c.keep) for c in schedule.cuts])
    bounds = sorted({c.layer for c in schedule.cuts} | ({c.layer - 1 for c in schedule.cuts} if owns_layer else set()))
    # image tokens entering cut i, then after it (SparseVLM adds its merged tokens to the kept ones)
    tokens = [num_image_tokens] + image_tokens_leaving(method, schedule.cuts, num_image_tokens)

    def image_tokens_at(layer: int) -> int:  # image tokens entering decoder layer `layer`
        return tokens[sum(c.layer <= layer for c in schedule.cuts)]

    def name(start: int, end: int) -> str:
        return f"segment_{start:02d}_{end:02d}"

    segments = tuple(
        SegmentPlan(name(start, end), start, end, image_tokens_at(start),
                    max_text_tokens + image_tokens_at(start) + max_new_tokens, with_head=(end == num_layers))
        for start, end in zip([0] + bounds, bounds + [num_layers])
        if end > start
    )
    if method_info(method).acts == EMBEDDING:  # Edge-LLM's DART: a quota per visual span, at layer 0
        if budget_per_image:
            raise ScheduleError("--method dart-embed keeps a quota of every visual span already (as Edge-LLM does); "
                                "drop --budget-per-image")
        from ..trio.dart_embed import quotas_for_keep

        runs = tuple(visual_runs or split_keep(num_image_tokens, items))
        for c in schedule.cuts:
            if c.keep < len(runs):
                raise ScheduleError(f"--method dart-embed keeps at least one token of every visual span (as Edge-LLM "
                                    f"does): cut 0:{c.keep} is under the {len(runs)} spans of this export; keep at "
                                    f"least {len(runs)}")
        budgets = [{"item_tokens": runs, "item_keeps": quotas_for_keep(runs, c.keep)} for c in schedule.cuts]
    else:
        budgets = item_budgets(method, schedule.cuts, num_image_tokens, items) if budget_per_image else None
    selects = tuple(
        SelectPlan(f"select_{i}_layer{c.layer:02d}", c.layer, tokens[i], c.keep, merged=tokens[i + 1] - c.keep,
                   owned_segment=name(c.layer - 1, c.layer) if owns_layer else None,
                   **(budgets[i] if budgets else {}))
        for i, c in enumerate(schedule.cuts)
    )
    return PipelinePlan(num_layers, num_image_tokens, max_text_tokens, max_new_tokens, hidden_size, num_kv_heads,
                        head_dim, vocab_size, tuple(grid), schedule, segments, selects, nms_iterations, method,
                        unpruned if schedule.vision is not None else 0, position_rows, deepstack_layers, items,
                        video_frames)


def item_budgets(method: str, cuts, num_image_tokens: int, items: int) -> list[dict]:
    """--budget-per-image: each cut's KEEP split over the items (trio.schedule.split_keep), the tokens of each
    item entering it following from the cut before. Refused where a rule's kept set spans all items (DART's pivots)
    or an item would keep nothing."""
    if items < 2:
        raise ScheduleError("--budget-per-image splits each cut's budget over several images or video frame groups; "
                            "this export takes one image (give --images N or --video-frames F, or drop the option)")
    if method_info(method).cut_rule == "dart":
        raise ScheduleError("DART chooses its pivots among all image tokens, so it has no per-image budget; drop "
                            "--budget-per-image or use --method trio, fastv, pdrop, random or uniform")
    budgets, entering = [], split_keep(num_image_tokens, items)
    for cut in cuts:
        if cut.keep < items:
            raise ScheduleError(f"--budget-per-image: cut {cut.layer}:{cut.keep} keeps fewer tokens than the {items} "
                                "images / frame groups it splits them over; raise KEEP or drop --budget-per-image")
        keeps = split_keep(cut.keep, items)
        budgets.append({"item_tokens": entering, "item_keeps": keeps})
        entering = keeps
    return budgets
