"""Input/output signatures of every graph of a plan: one definition shared by export and runtime.

A dimension is an int (static) or a name (dynamic: text length, query length, pruned length).
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import PipelinePlan


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float32" | "float16" | "int64" | "bool"
    shape: tuple  # ints and axis names

    def dynamic_axes(self) -> list[int]:
        return [i for i, d in enumerate(self.shape) if isinstance(d, str)]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "dynamic_axes": self.dynamic_axes()}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    kind: str  # vision | embed | segment | select
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    derived_axes: tuple[tuple[str, str, int], ...] = ()  # (axis, source axis, offset): axis = source + offset

    def output_shapes(self, input_shapes: dict[str, tuple]) -> dict[str, tuple]:
        """Output shapes for given input shapes, so a runtime can allocate outputs before running."""
        dims = {}
        for tensor in self.inputs:
            for axis in tensor.dynamic_axes():
                dims[tensor.shape[axis]] = int(input_shapes[tensor.name][axis])
        for axis, source, offset in self.derived_axes:
            dims[axis] = dims[source] + offset
        return {t.name: tuple(dims[d] if isinstance(d, str) else d for d in t.shape) for t in self.outputs}


def graph_specs(plan: PipelinePlan, *, tile_count: int, tile_size: int, dtype: str) -> dict[str, GraphSpec]:
    d, m, v = plan.hidden_size, plan.num_image_tokens, plan.vocab_size
    specs = [
        GraphSpec("vision", "vision", (TensorSpec("pixel_values", dtype, (tile_count, 3, tile_size, tile_size)),),
                  (TensorSpec("image_features", dtype, (m, d)),)),
        GraphSpec("embed", "embed", (TensorSpec("input_ids", "int64", (1, "query")), TensorSpec("image_features", dtype, (m, d))),
                  (TensorSpec("hidden", dtype, (1, "query", d)),)),
    ]
    for seg in plan.segments:
        kv = TensorSpec("kv", dtype, plan.kv_shape(seg))
        head = TensorSpec("logits", dtype, (1, v)) if seg.with_head else TensorSpec("hidden_out", dtype, (1, "query", d))
        specs.append(GraphSpec(
            seg.name, "segment",
            (TensorSpec("hidden", dtype, (1, "query", d)), TensorSpec("position_ids", "int64", (1, "query")),
             TensorSpec("past_length", "int64", ()), kv),
            (head, TensorSpec("kv_out", dtype, plan.kv_shape(seg))),
        ))
    for sel in plan.selects:
        specs.append(GraphSpec(
            sel.name, "select",
            (TensorSpec("hidden", dtype, (1, "seq", d)), TensorSpec("position_ids", "int64", (1, "seq")),
             TensorSpec("image_start", "int64", ())),
            (TensorSpec("kept", "int64", (sel.keep,)), TensorSpec("converged", "bool", ()),
             TensorSpec("hidden_out", dtype, (1, "pruned_seq", d)), TensorSpec("position_ids_out", "int64", (1, "pruned_seq")),
             TensorSpec("saliency", "float32", (sel.tokens_in,))),
            derived_axes=(("pruned_seq", "seq", sel.keep - sel.tokens_in),),
        ))
    return {spec.name: spec for spec in specs}
