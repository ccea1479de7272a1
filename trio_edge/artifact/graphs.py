"""Graph signatures of a plan: kinds, inputs/outputs with static and named dynamic axes, the declared range
of every dynamic axis (TensorRT optimization profiles) and the typical lengths profiles are tuned for.

One definition shared by export and runtime. A dimension is an int (static) or a name (dynamic: text
length, query length, pruned length).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..trio.methods import RATERS_GRAPH
from .plan import PipelinePlan

QUERY_AXIS = "query"  # embed and segment graphs: 1 (decode) .. prompt length (prefill)
SEQ_AXIS = "seq"  # select graphs: the sequence entering the cut
PRUNED_AXIS = "pruned_seq"  # select graphs' outputs: seq - image tokens entering + kept
VISION_KEPT = "vision_kept"  # the vision graph's second output when a rule prunes inside it
# select graphs: the ascending sequence rows of the image tokens entering the cut (one span per image / frame group)
IMAGE_POSITIONS = "image_positions"
# Qwen3-VL's DeepStack planes (plan.deepstack_layers = k > 0): the vision graph's (M, k*D) features, laid out over the
# sequence by the embed graph (zeros at text positions) as (1, T, k*D), read by the graphs that add or prune them
DEEPSTACK_FEATURES = "deepstack_features"
DEEPSTACK = "deepstack"
DEEPSTACK_OUT = "deepstack_out"
TYPICAL_TEXT_TOKENS = 64  # prompt text around the image that prefill profiles are tuned for
MIN_TEXT_AFTER_IMAGE = 5  # the proxy supervises positions S-5..S-2: a select needs that much text


class GraphKind(str, Enum):
    VISION = "vision"
    EMBED = "embed"
    SEGMENT = "segment"
    SELECT = "select"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float32" | "float16" | "int64" | "bool" (artifact.dtypes)
    shape: tuple  # ints and axis names

    def dynamic_axes(self) -> list[int]:
        return [i for i, d in enumerate(self.shape) if isinstance(d, str)]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "dynamic_axes": self.dynamic_axes()}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    kind: GraphKind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    derived_axes: tuple[tuple[str, str, int], ...] = ()  # (axis, source axis, offset): axis = source + offset
    # (output, input) pairs: the output is the input updated in place, and runtimes bind both to one buffer
    in_place: tuple[tuple[str, str], ...] = ()

    def output_shapes(self, input_shapes: dict[str, tuple]) -> dict[str, tuple]:
        """Output shapes for given input shapes, so a runtime can allocate outputs before running."""
        dims = {}
        for tensor in self.inputs:
            for axis in tensor.dynamic_axes():
                dims[tensor.shape[axis]] = int(input_shapes[tensor.name][axis])
        for axis, source, offset in self.derived_axes:
            dims[axis] = dims[source] + offset
        return {t.name: tuple(dims[d] if isinstance(d, str) else d for d in t.shape) for t in self.outputs}


def layer_cache_names(layer: int) -> tuple[str, str, str, str]:
    """Inputs and outputs of layer `layer`'s caches in a segment with per-layer caches:
    past_key, past_value, present_key, present_value."""
    return f"past_key_{layer}", f"past_value_{layer}", f"present_key_{layer}", f"present_value_{layer}"


def cache_inputs(spec: GraphSpec, kv):
    """A segment's cache inputs from its one contiguous buffer kv (L, 2, KVH, N, hd): {"kv": kv}, or for graphs
    with per-layer caches each layer's keys and values as a (1, KVH, N, hd) view of that buffer."""
    if any(t.name == "kv" for t in spec.inputs):
        return {"kv": kv}
    # built on every decode step: all 2L views from one unbind (layer-major: keys, values, keys, ...)
    views = kv.flatten(0, 1)[:, None].unbind(0)
    names = [name for layer in range(kv.shape[0]) for name in layer_cache_names(layer)[:2]]
    return dict(zip(names, views))


def updated_cache(kv, outputs: dict):
    """The segment's buffer after a run: its kv_out, or (per-layer caches) kv itself with every layer's
    present written into it; a no-op when the backend bound the presents to kv's own views (ONNX Runtime)."""
    if "kv_out" in outputs:
        return outputs["kv_out"]
    # kv is contiguous (the pipeline allocates it so): kv[layer, part] starts at start + (2 * layer + part) * step
    start, step = kv.data_ptr(), kv.stride(1) * kv.element_size()
    for layer in range(kv.shape[0]):
        _, _, present_key, present_value = layer_cache_names(layer)
        for part, present in enumerate((outputs[present_key], outputs[present_value])):
            if present.data_ptr() != start + (2 * layer + part) * step:
                kv[layer, part].copy_(present[0])
    return kv


def _segment_caches(plan: PipelinePlan, seg, dtype: str, layer_caches: bool):
    """(cache inputs, cache outputs, in-place pairs) of a segment graph."""
    if not layer_caches:
        return ((TensorSpec("kv", dtype, plan.kv_shape(seg)),), (TensorSpec("kv_out", dtype, plan.kv_shape(seg)),),
                (("kv_out", "kv"),))
    _, _, heads, slots, head_dim = plan.kv_shape(seg)
    inputs, outputs, pairs = [], [], []
    for layer in range(seg.end - seg.start):
        past_key, past_value, present_key, present_value = layer_cache_names(layer)
        inputs += [TensorSpec(name, dtype, (1, heads, slots, head_dim)) for name in (past_key, past_value)]
        outputs += [TensorSpec(name, dtype, (1, heads, slots, head_dim)) for name in (present_key, present_value)]
        pairs += [(present_key, past_key), (present_value, past_value)]
    return tuple(inputs), tuple(outputs), tuple(pairs)


def position_shape(plan: PipelinePlan, axis: str) -> tuple:
    """Shape of a position_ids tensor over `axis`: (1, T), or (rows, 1, T) for multi-row positions (M-RoPE)."""
    return (1, axis) if plan.position_rows == 1 else (plan.position_rows, 1, axis)


def position_tensor(positions, rows: int):
    """(T,) int64 positions as a graph's position_ids: (1, T), or every row equal (rows, 1, T) (a text token's
    M-RoPE position is the same on all three rows)."""
    return positions[None] if rows == 1 else positions.expand(rows, 1, positions.shape[-1])


def graph_specs(plan: PipelinePlan, *, tile_count: int, pixel_shape: tuple[int, ...], dtype: str,
                layer_caches: bool = False) -> dict[str, GraphSpec]:
    """Every graph's signature. `pixel_shape`: the vision graph's input (the model adapter's pixel_shape);
    `tile_count`: the tiles a vision-stage rule prunes. `layer_caches`: segments take one cache per layer's keys
    and values (the onnxruntime target: GQA's shared past/present buffers) instead of one kv per segment."""
    d, m, v = plan.hidden_size, plan.num_image_tokens, plan.vocab_size
    per_item = plan.image_tokens_per_item  # the vision graph runs once per image / video frame group
    q = QUERY_AXIS
    planes = plan.deepstack_layers * d

    def deepstack(name: str, axis: str, graph: str | None = None) -> tuple[TensorSpec, ...]:
        """The DeepStack planes over `axis`, for a graph that has them (none when the model has no DeepStack)."""
        wanted = planes and (graph is None or plan.takes_deepstack(graph))
        return (TensorSpec(name, dtype, (1, axis, planes)),) if wanted else ()

    def features(rows: int) -> tuple[TensorSpec, ...]:
        return (TensorSpec(DEEPSTACK_FEATURES, dtype, (rows, planes)),) if planes else ()

    specs = [
        GraphSpec("vision", GraphKind.VISION,
                  (TensorSpec("pixel_values", dtype, tuple(pixel_shape)),),
                  (TensorSpec("image_features", dtype, (per_item, d)), *features(per_item),
                   # a vision stage's kept tokens per tile (index in the tile, 0 = [CLS]; -1: merged)
                   *([TensorSpec(VISION_KEPT, "int64", (tile_count, plan.schedule.vision.keep))]
                     if plan.schedule.vision is not None else []))),
        GraphSpec("embed", GraphKind.EMBED,
                  (TensorSpec("input_ids", "int64", (1, q)), TensorSpec("image_features", dtype, (m, d)), *features(m)),
                  (TensorSpec("hidden", dtype, (1, q, d)), *deepstack(DEEPSTACK, q))),
    ]
    for seg in plan.segments:
        caches_in, caches_out, in_place = _segment_caches(plan, seg, dtype, layer_caches)
        head = TensorSpec("logits", dtype, (1, v)) if seg.with_head else TensorSpec("hidden_out", dtype, (1, q, d))
        specs.append(GraphSpec(
            seg.name, GraphKind.SEGMENT,
            (TensorSpec("hidden", dtype, (1, q, d)), TensorSpec("position_ids", "int64", position_shape(plan, q)),
             TensorSpec("past_length", "int64", ()), *deepstack(DEEPSTACK, q, seg.name), *caches_in),
            (head, *caches_out),
            in_place=in_place,
        ))
    # SparseVLM's text raters, chosen once on the language model's input and carried through every cut
    carries_raters = plan.method == "sparsevlm" and bool(plan.selects)
    if carries_raters:
        specs.append(GraphSpec(
            RATERS_GRAPH, GraphKind.SELECT,
            (TensorSpec("hidden", dtype, (1, SEQ_AXIS, d)), TensorSpec(IMAGE_POSITIONS, "int64", (m,))),
            (TensorSpec("raters", "float32", (1, SEQ_AXIS)),)))
    for sel in plan.selects:
        owned = plan.owned_segment_of(sel)  # a select that runs layer N-1 also writes that layer's KV buffer
        kv = (TensorSpec("kv", dtype, plan.kv_shape(owned)),) if owned else ()
        kv_out = (TensorSpec("kv_out", dtype, plan.kv_shape(owned)),) if owned else ()
        if carries_raters:
            kv += (TensorSpec("raters", "float32", (1, SEQ_AXIS)),)
            kv_out += (TensorSpec("raters_out", "float32", (1, PRUNED_AXIS)),)
        kv += deepstack(DEEPSTACK, SEQ_AXIS, sel.name)
        kv_out += deepstack(DEEPSTACK_OUT, PRUNED_AXIS) if plan.gives_deepstack(sel) else ()
        specs.append(GraphSpec(
            sel.name, GraphKind.SELECT,
            (TensorSpec("hidden", dtype, (1, SEQ_AXIS, d)),
             TensorSpec("position_ids", "int64", position_shape(plan, SEQ_AXIS)),
             TensorSpec(IMAGE_POSITIONS, "int64", (sel.tokens_in,)), *kv),
            (TensorSpec("kept", "int64", (sel.keep,)), TensorSpec("converged", "bool", ()),
             TensorSpec("hidden_out", dtype, (1, PRUNED_AXIS, d)),
             TensorSpec("position_ids_out", "int64", position_shape(plan, PRUNED_AXIS)),
             TensorSpec("saliency", "float32", (sel.tokens_in,)), *kv_out),
            derived_axes=((PRUNED_AXIS, SEQ_AXIS, sel.keep + sel.merged - sel.tokens_in),),
            in_place=(("kv_out", "kv"),) if owned else (),
        ))
    return {spec.name: spec for spec in specs}


def shape_ranges(spec: GraphSpec, plan: PipelinePlan) -> dict[str, tuple[int, int]]:
    """Declared (min, max) of every dynamic axis of a graph: recorded in the manifest, checked by the
    runtime, and the bounds of TensorRT's optimization profiles."""
    image = plan.image_tokens_entering(spec.name)
    if spec.kind in (GraphKind.EMBED, GraphKind.SEGMENT):
        return {QUERY_AXIS: (1, plan.max_text_tokens + image)}
    if spec.kind == GraphKind.SELECT:
        return {SEQ_AXIS: (image + MIN_TEXT_AFTER_IMAGE, plan.max_text_tokens + image)}
    return {}


def typical_lengths(plan: PipelinePlan, graph: str, kind: GraphKind) -> dict[str, int]:
    """Typical value of each dynamic axis of `graph` (what prefill profiles are tuned for): image tokens
    entering it + TYPICAL_TEXT_TOKENS."""
    typical = min(TYPICAL_TEXT_TOKENS, plan.max_text_tokens) + plan.image_tokens_entering(graph)
    if kind in (GraphKind.EMBED, GraphKind.SEGMENT):
        return {QUERY_AXIS: typical}
    if kind == GraphKind.SELECT:
        return {SEQ_AXIS: typical}
    return {}
