"""The generation pipeline: preprocess -> vision -> embed -> segments and selects -> decode loop.

Backend-agnostic: every graph runs through `backend.run(name, inputs)`. One static KV buffer per layer
group is allocated once per pipeline and reused by every request.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass

import torch

from ..artifact.dtypes import TORCH_DTYPES
from ..artifact.graphs import (
    DEEPSTACK,
    DEEPSTACK_OUT,
    IMAGE_POSITIONS,
    VISION_KEPT,
    cache_inputs,
    position_tensor,
    updated_cache,
)
from ..artifact.plan import PipelinePlan, SegmentPlan, SelectPlan
from ..errors import InputError
from ..graph_ops import rows_after_pruning
from ..models.preprocess import load_image
from ..trio.methods import RATERS_GRAPH
from ..trio.select_module import apply_selection, carried_rows
from ..trio.selection import select_tokens


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    kept: list[list[int]]  # per cut, kept image-token indices in the original 0..M-1 numbering
    timings: dict[str, float]  # ms per stage
    prompt_tokens: int = 0
    first_logits: torch.Tensor | None = None
    timeline: list[tuple[str, float, float]] | None = None
    # a vision stage's kept tokens, per tile: index in the tile (0 = [CLS]), -1 for merged ones; cuts after it
    # number the image tokens the decoder sees (0..M'-1)
    vision_kept: list[list[int]] | None = None
    seed: int | None = None  # the sampling seed (drawn when none was given), so a sampled answer can be replayed
    # several images / a video: how many (images, or the video's frame groups), the image tokens each gives the
    # decoder, and for a video the sampled frames' indices in the clip, grouped as the model takes them (pairs)
    items: int = 1
    image_tokens_per_item: int = 0
    frame_groups: list[list[int]] | None = None

    @property
    def kept_per_item(self) -> list[list[list[int]]]:
        """Per cut, per image (or video frame group): the kept tokens' indices within that image, 0-based."""
        n = self.image_tokens_per_item
        return [[[i - item * n for i in cut if item * n <= i < (item + 1) * n] for item in range(self.items)]
                for cut in self.kept]

    def to_json(self) -> dict:
        body = {"text": self.text, "token_ids": self.token_ids, "kept": self.kept, "timings": self.timings,
                "prompt_tokens": self.prompt_tokens}
        if self.frame_groups is not None:
            body["frame_groups"] = self.frame_groups
            body["kept_per_frame_group"] = self.kept_per_item
        elif self.items > 1:
            body["kept_per_image"] = self.kept_per_item
        if self.vision_kept is not None:
            body["vision_kept"] = self.vision_kept
        if self.seed is not None:
            body["seed"] = self.seed
        return body


class _Clock:
    """Per-stage wall time (synchronised on CUDA) and a timeline of (stage, start ms, duration ms)."""

    def __init__(self, device: torch.device):
        self.device, self.timings, self.events = device, {}, []
        self.origin = time.perf_counter()

    def lap(self, name: str, start: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (now - start) * 1e3
        self.events.append((name, (start - self.origin) * 1e3, (now - start) * 1e3))
        return now


class Pipeline:
    def __init__(self, plan: PipelinePlan, backend, io_adapter, *, stop_token_ids, dtype: str):
        self.plan, self.backend, self.io = plan, backend, io_adapter
        self.stop_token_ids = set(stop_token_ids)
        self.device = backend.device
        self.dtype = TORCH_DTYPES[dtype]
        self.vision_kept = None  # the last request's vision-stage kept tokens (a vision-tower method's)
        self.from_export = False  # open_export sets it: error messages then name trio-export's options
        # one request at a time owns the KV buffers: threads take turns (the lock), and a stream that another
        # request overtook between two of its tokens stops with an error instead of reading that request's cache
        self._lock, self._owner = threading.Lock(), None
        self.weight_format = dtype  # what the weights are; an export's opener sets e.g. "int4 (rtn, block 32)"
        # segments whose positions are renumbered 0..S'-1: those after the first cut of a renumbering schedule (before
        # it, and everywhere with original positions, a token's position is the prompt's own)
        first_cut = min((cut.layer for cut in plan.schedule.cuts), default=plan.num_layers)
        renumber = plan.schedule.positions == "renumber"
        self._renumbered = {seg.name: renumber and seg.start >= first_cut for seg in plan.segments}
        with torch.inference_mode(False):  # the torch backend writes these in place, outside inference mode
            self.kv = {seg.name: torch.zeros(plan.kv_shape(seg), dtype=self.dtype, device=self.device)
                       for seg in plan.segments}

    # ---- inputs -----------------------------------------------------------------------------------
    def prepare(self, image, prompt: str, video=None):
        """-> (vision-graph inputs, one per image / video frame group; input_ids (1, S); the sampled video or None).
        Counts are checked first, then the prompt (cheap: a bad one should not wait for a large image to decode),
        then the images are decoded; a video is decoded before the prompt, whose timestamps may come from it."""
        plan, io = self.plan, self.io
        images = self._image_list(image, video)
        if video is not None:
            video = io.load_video(video, plan.video_frames, plan.grid)
        input_ids = io.prompt_ids(prompt, plan.image_tokens_per_item, images=len(images), video=video).to(self.device)
        text_tokens = input_ids.shape[1] - plan.num_image_tokens
        if text_tokens > plan.max_text_tokens:
            raise InputError(f"the prompt has {text_tokens} text tokens; this export allows at most "
                             f"{plan.max_text_tokens} (shorten it, or re-export with a larger --max-text-tokens)")
        if plan.method == "sparsevlm" and plan.selects:
            image_end = int((input_ids[0] == io.image_token_id).to(torch.int64).cumsum(0).argmax()) + 1
            if image_end >= input_ids.shape[1]:
                raise InputError("SparseVLM needs text after the image (its raters are chosen among those tokens); "
                                 "put the question after <image> in the prompt")
        if video is not None:
            pixels = io.video_pixel_values(video, plan.grid)
        else:
            pixels = [io.pixel_values(load_image(item), plan.grid) for item in images]
        return [p.to(self.device, self.dtype) for p in pixels], input_ids, video

    def _image_list(self, image, video) -> list:
        """The request's images as a list, checked against what the export takes (a count, or one video)."""
        plan = self.plan
        how = "re-export" if self.from_export else "open the model again"
        if plan.video_frames:
            if video is None or image is not None:
                raise InputError(f"this {'export' if self.from_export else 'pipeline'} takes one video of "
                                 f"{plan.video_frames} frames and no image (trio-run --video CLIP; video= in Python); "
                                 f"for images {how} without --video-frames")
            return []
        if video is not None:
            raise InputError(f"this {'export' if self.from_export else 'pipeline'} takes images, not a video; to take "
                             f"one, {how} with --video-frames F (Qwen2.5-VL and Qwen3-VL)")
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if image is None or len(images) != plan.images:
            given = 0 if image is None else len(images)
            raise InputError(f"this {'export' if self.from_export else 'pipeline'} takes exactly {plan.images} "
                             f"image{'s' if plan.images > 1 else ''} per request, got {given}; pass "
                             f"{plan.images}, or {how} with --images {given or 1}")
        return images

    # ---- stages -----------------------------------------------------------------------------------
    def _run_segment(self, seg: SegmentPlan, hidden, position_ids, past_length: torch.Tensor, deepstack=None):
        """`deepstack`: the DeepStack planes of these positions (Qwen3-VL), passed to segments that add them."""
        spec, kv = self.backend.specs[seg.name], self.kv[seg.name]
        planes = {DEEPSTACK: deepstack} if self.plan.takes_deepstack(seg.name) else {}
        out = self.backend.run(seg.name, {"hidden": hidden, "position_ids": position_ids,
                                          "past_length": past_length, **planes, **cache_inputs(spec, kv)})
        self.kv[seg.name] = updated_cache(kv, out)
        return out["logits" if seg.with_head else "hidden_out"]

    def _prefill_segment(self, seg: SegmentPlan, hidden, position_ids, deepstack=None):
        """A segment's prefill from slot 0: one call, or consecutive chunks of the backend's prefill_chunk_tokens
        (each writes its slots, the next attends to them), hidden states concatenated; a head's logits are the
        last chunk's (the last position's)."""
        chunk = getattr(self.backend, "prefill_chunk_tokens", None)  # wrappers (export probes, tests) may lack it
        length = hidden.shape[1]
        if chunk is None or length <= chunk:
            return self._run_segment(seg, hidden, position_ids, torch.zeros((), dtype=torch.int64, device=self.device),
                                     deepstack)
        outs = [self._run_segment(seg, hidden[:, lo:lo + chunk], position_ids[..., lo:lo + chunk],
                                  torch.tensor(lo, dtype=torch.int64, device=self.device),
                                  None if deepstack is None else deepstack[:, lo:lo + chunk])
                for lo in range(0, length, chunk)]
        return outs[-1] if seg.with_head else torch.cat(outs, dim=1)

    def _choose_raters(self, hidden, image_positions):
        """SparseVLM's text raters, once, on the language model's input: (1, S) 0/1."""
        raters = self.backend.run(RATERS_GRAPH, {"hidden": hidden, IMAGE_POSITIONS: image_positions})["raters"]
        if not bool(raters.sum() > 0):
            raise InputError("SparseVLM found no text raters after the image (it needs the question after the image "
                             "to score image tokens); put the question after <image> in the prompt")
        return raters

    def _run_select(self, sel: SelectPlan, hidden, position_ids, image_positions, raters=None, deepstack=None):
        inputs = {"hidden": hidden, "position_ids": position_ids, IMAGE_POSITIONS: image_positions}
        if sel.owned_segment is not None:  # the select runs that segment's layer in prefill and writes its KV
            inputs["kv"] = self.kv[sel.owned_segment]
        if raters is not None:
            inputs["raters"] = raters
        if self.plan.takes_deepstack(sel.name):
            inputs[DEEPSTACK] = deepstack
        out = self.backend.run(sel.name, inputs)
        if sel.owned_segment is not None:
            self.kv[sel.owned_segment] = out["kv_out"]
        if not bool(out["converged"]):
            out = self._exact_select_on_host(sel, hidden, position_ids, image_positions, out, deepstack)
        return out

    def _exact_select_on_host(self, sel: SelectPlan, hidden, position_ids, image_positions, out, deepstack=None):
        """The graph's unrolled Cluster-NMS did not converge on this input: apply the exact greedy rule to
        the graph's saliency instead (per image with per-image budgets), so the selection is still exactly TRIO's."""
        warnings.warn(f"{sel.name}: Cluster-NMS needed more than {self.plan.nms_iterations} iterations on this "
                      "input; selected on the host instead (re-export with a larger --nms-iterations to avoid it)",
                      RuntimeWarning, stacklevel=3)
        features = hidden[0].index_select(0, image_positions).float().cpu()
        saliency, kept, offset = out["saliency"].cpu(), [], 0
        for tokens, keep in zip(sel.item_tokens or (sel.tokens_in,), sel.item_keeps or (sel.keep,)):
            item = select_tokens(saliency[offset:offset + tokens], features[offset:offset + tokens], keep,
                                 self.plan.schedule.threshold)
            kept.append(item + offset)
            offset += tokens
        kept = torch.cat(kept).to(self.device)
        hidden_out, positions = apply_selection(hidden, position_ids, image_positions, kept,
                                                self.plan.schedule.positions == "renumber")
        if DEEPSTACK_OUT in out:
            out = {**out, DEEPSTACK_OUT: carried_rows(deepstack, image_positions, kept)}
        return {**out, "kept": kept, "hidden_out": hidden_out, "position_ids_out": positions,
                "converged": torch.tensor(True)}

    def _vision(self, pixels) -> dict:
        """The vision graph on every image / frame group, outputs concatenated in prompt order."""
        outs = [self.backend.run("vision", {"pixel_values": item}) for item in pixels]
        return {name: torch.cat([out[name] for out in outs]) for name in outs[0]}

    def prefill(self, pixels, input_ids, clock: _Clock, video=None):
        """-> (image features, the last logits, kept tokens per cut, each segment's cache length, the prompt's
        positions: the adapter's prompt_positions, (1, S) or M-RoPE's (3, 1, S), after any vision-stage prune)."""
        t = time.perf_counter()
        vision = self._vision(pixels)
        self.vision_kept = vision.get(VISION_KEPT)
        # what the embed graph takes from the vision graph (image features; Qwen3-VL's DeepStack features too)
        features = {spec.name: vision[spec.name] for spec in self.backend.specs["embed"].inputs
                    if spec.name != "input_ids"}
        t = clock.lap("vision", t)
        position_ids = prompt_positions = self.io.prompt_positions(input_ids, self.plan.grid, self.vision_kept,
                                                                   video=video)
        embedded = self.backend.run("embed", {"input_ids": input_ids, **features})
        hidden, deepstack = embedded["hidden"], embedded.get(DEEPSTACK)
        t = clock.lap("embed", t)
        image_positions = torch.nonzero(input_ids[0] == self.io.image_token_id)[:, 0]  # (M,) ascending rows
        image_ids = torch.arange(self.plan.num_image_tokens, device=self.device)  # merged tokens: -1
        raters = None
        if self.plan.method == "sparsevlm" and self.plan.selects:
            raters = self._choose_raters(hidden, image_positions)
            t = clock.lap(RATERS_GRAPH, t)
        kept, lengths = [], {}
        for stage in self.plan.stages():
            if isinstance(stage, SelectPlan):
                if stage.owned_segment is not None:
                    lengths[stage.owned_segment] = hidden.shape[1]
                out = self._run_select(stage, hidden, position_ids, image_positions, raters, deepstack)
                hidden, position_ids, raters = out["hidden_out"], out["position_ids_out"], out.get("raters_out")
                deepstack = out.get(DEEPSTACK_OUT)  # planes still to add follow the kept tokens
                image_positions = rows_after_pruning(image_positions, out["kept"])
                if stage.merged:  # SparseVLM's merged tokens sit right after the kept ones (one image span)
                    image_positions = torch.cat([image_positions, image_positions[-1] + 1 + torch.arange(
                        stage.merged, device=self.device)])
                image_ids = image_ids.index_select(0, out["kept"])
                kept.append([i for i in image_ids.tolist() if i >= 0])  # original indices; merged ones have none
                merged = torch.full((stage.merged,), -1, dtype=image_ids.dtype, device=self.device)
                image_ids = torch.cat([image_ids, merged])
            else:
                lengths[stage.name] = hidden.shape[1]
                hidden = self._prefill_segment(stage, hidden, position_ids, deepstack)
            t = clock.lap(stage.name, t)
        return features, hidden, kept, lengths, prompt_positions

    def decode_step(self, token: int, features, step: int, first_position: int, lengths: dict):
        """One generated token through every segment. `first_position`: the first generated token's position
        with original positions (the model adapter's first_decode_position); renumbered positions (after a cut
        of a renumbering schedule) follow each segment's own cache length."""
        # Every small input of the step goes to the device in one copy before anything is launched: a copy
        # from host memory waits for the device, and one per segment would stall it between segments.
        values = [token]
        for seg in self.plan.segments:
            past = lengths[seg.name] + step
            values += [past, past if self._renumbered[seg.name] else first_position + step]
        scalars = torch.tensor(values, dtype=torch.int64).to(self.device)
        embedded = self.backend.run("embed", {"input_ids": scalars[:1].view(1, 1), **features})
        hidden, deepstack = embedded["hidden"], embedded.get(DEEPSTACK)  # a text token's planes: zeros
        for index, seg in enumerate(self.plan.segments):
            past = scalars[1 + 2 * index]
            position = position_tensor(scalars[2 + 2 * index].view(1), self.plan.position_rows)
            hidden = self._run_segment(seg, hidden, position, past, deepstack)
        return hidden  # logits (1, V)

    # ---- public -----------------------------------------------------------------------------------
    def generate(self, image=None, prompt: str | None = None, *, video=None, max_new_tokens: int | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, stream: bool = False):
        """Answer `prompt` about `image` (a path, bytes or PIL image; a list of them for an export that takes several,
        in the order the prompt refers to them) or about `video` (a path or bytes; an export with --video-frames).

        Greedy when `temperature` is 0 (the default), else temperature + nucleus (`top_p`) sampling seeded
        by `seed` (None: a fresh random seed). `max_new_tokens` defaults to the export's maximum.
        Returns a GenerationResult (`text`, `token_ids`, `kept`, `timings`); with `stream=True` a TokenStream
        that yields each new token as it is generated. Bad inputs raise InputError here, before any work.
        """
        if self.backend is None:
            raise InputError("this pipeline is closed (its `with` block ended or close() was called); open it again "
                             "with trio_edge.load(...)")
        if prompt is None:
            raise InputError("the prompt must be text (str), not None: generate() needs the question about the image or "
                             "video")
        max_new = self._checked_max_new_tokens(max_new_tokens)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (temperature, top_p))
        if not numbers or not temperature >= 0 or not 0 < top_p <= 1:
            raise InputError(f"temperature must be a number >= 0 and top_p a number within (0, 1], got "
                             f"{temperature!r} and {top_p!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise InputError(f"seed must be a whole number within 0..2**63-1 (or None for a fresh one), got {seed!r}")
        if seed is None:  # greedy needs none; sampling draws one (never from torch's global generator)
            seed = 0 if temperature == 0 else int.from_bytes(os.urandom(8), "little") % 2**62
        result = GenerationResult("", [], [], {}, seed=seed if temperature > 0 else None, items=self.plan.items,
                                  image_tokens_per_item=self.plan.image_tokens_per_item)
        clock = _Clock(self.device)
        result.timeline = clock.events
        pixels, input_ids, video = self.prepare(image, prompt, video)
        if video is not None:
            result.frame_groups = self.io.frame_groups(video)
        clock.lap("preprocess", clock.origin)
        tokens = self._tokens(pixels, input_ids, video, max_new, temperature, top_p, seed, result, clock)
        if stream:
            return TokenStream(self, tokens, result)
        with self._lock:
            for _ in tokens:
                pass
        result.text = self.decode_text(result.token_ids)
        return result

    def _checked_max_new_tokens(self, max_new_tokens) -> int:
        max_new = self.plan.max_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(max_new, bool) or not isinstance(max_new, int):
            raise InputError(f"max_new_tokens must be a whole number, got {max_new!r}")
        if not 0 <= max_new <= self.plan.max_new_tokens:
            how = ("export was built for (re-export with a larger --max-new-tokens)" if self.from_export else
                   "pipeline was opened with (open the model again with a larger max_new_tokens)")
            raise InputError(f"max_new_tokens={max_new} is outside 0..{self.plan.max_new_tokens}, the maximum this "
                             f"{how}")
        return max_new

    def _tokens(self, pixels, input_ids, video, max_new: int, temperature: float, top_p: float, seed: int,
                result: GenerationResult, clock: "_Clock"):
        """Prefill, then yield generated token ids one by one, filling `result` as it goes."""
        request = self._owner = object()  # this request now owns the KV buffers
        try:
            yield from self._owned_tokens(request, pixels, input_ids, video, max_new, temperature, top_p, seed, result,
                                          clock)
        finally:
            if self._owner is request:
                self._owner = None

    def _owned_tokens(self, request, pixels, input_ids, video, max_new: int, temperature: float, top_p: float,
                      seed: int, result: GenerationResult, clock: "_Clock"):
        start = clock.origin
        features, logits, result.kept, lengths, positions = self.prefill(pixels, input_ids, clock, video)
        first_position = self.io.first_decode_position(positions)
        if self.vision_kept is not None:
            result.vision_kept = self.vision_kept.tolist()
        result.prompt_tokens, result.first_logits = input_ids.shape[1], logits
        sampler = torch.Generator(device="cpu").manual_seed(seed)
        clock.timings["ttft"] = (time.perf_counter() - start) * 1e3
        result.timings = clock.timings
        clock.timings["decode"] = 0.0
        for step in range(max_new):
            token = sample(logits[0], temperature, top_p, sampler)
            result.token_ids.append(token)
            yield token
            if token in self.stop_token_ids or step == max_new - 1:
                break
            if self._owner is not request:
                raise InputError("another request ran on this pipeline between two tokens of this stream and "
                                 "rewrote its KV cache; finish or close() a stream before the next request, or "
                                 "use one pipeline per concurrent request")
            t = time.perf_counter()
            logits = self.decode_step(token, features, step, first_position, lengths)
            clock.lap("decode", t)
        steps = max(len(result.token_ids) - 1, 1)
        clock.timings["decode_ms_per_token"] = clock.timings["decode"] / steps
        clock.timings["total"] = (time.perf_counter() - start) * 1e3

    def decode_text(self, token_ids: list[int]) -> str:
        ids = [t for t in token_ids if t not in self.stop_token_ids]
        return self.io.processor.tokenizer.decode(ids, skip_special_tokens=True)

    def close(self) -> None:
        """Release the backend's sessions/engines and the KV buffers; the pipeline cannot run afterwards."""
        if self.backend is not None:
            self.backend.close()
        self.backend, self.kv = None, {}

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class StreamedToken:
    token_id: int
    text: str  # the text this token adds to the answer (may be empty, e.g. a stop token)


class TokenStream:
    """Iterator of StreamedToken, from Pipeline.generate(..., stream=True). `result` is complete (text,
    token_ids, kept, timings) once the stream is exhausted; `close()` stops the generation early."""

    def __init__(self, pipeline: Pipeline, tokens, result: GenerationResult):
        self.pipeline, self._tokens, self.result = pipeline, tokens, result
        self._printed = ""

    def __iter__(self):
        return self

    def __next__(self) -> StreamedToken:
        with self.pipeline._lock:  # threads take turns step by step
            token = next(self._tokens)  # StopIteration ends the stream
        text = self.pipeline.decode_text(self.result.token_ids)
        delta, self._printed = text[len(self._printed):], text
        self.result.text = text
        return StreamedToken(token, delta)

    def close(self) -> None:
        self._tokens.close()
        self.result.text = self.pipeline.decode_text(self.result.token_ids)


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy when temperature == 0, else temperature + nucleus sampling (seeded, on the host)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
