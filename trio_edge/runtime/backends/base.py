"""One small backend interface, Polygraphy-style: the base checks inputs once for every backend.

A backend runs named graphs on named torch tensors (host or device) and returns named tensors.
"""

from __future__ import annotations

import torch

from ...artifact.dtypes import TORCH_DTYPES
from ...artifact.graphs import GraphSpec
from ...errors import InputError


class Backend:
    name = "base"
    # Longest prefill call a segment graph gets: longer prompts run as consecutive chunks, each attending to the
    # slots the earlier ones wrote (None: one call). For graphs whose attention computes every query against
    # every key of the call (not only the causal half).
    prefill_chunk_tokens: int | None = None

    def __init__(self, specs: dict[str, GraphSpec], device: str):
        self.specs = specs
        self.device = torch.device(device)

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.specs[graph]
        self._check_inputs(spec, inputs)
        return self.run_impl(graph, inputs)

    def run_impl(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _check_inputs(spec: GraphSpec, inputs: dict[str, torch.Tensor]) -> None:
        expected = {t.name for t in spec.inputs}
        if set(inputs) != expected:
            raise InputError(f"graph {spec.name}: inputs {sorted(inputs)} do not match {sorted(expected)}")
        for tensor_spec in spec.inputs:
            value = inputs[tensor_spec.name]
            if value.dtype != TORCH_DTYPES[tensor_spec.dtype]:
                raise InputError(f"graph {spec.name} input {tensor_spec.name}: dtype {value.dtype}, expected {tensor_spec.dtype}")
            if len(value.shape) != len(tensor_spec.shape) or any(
                isinstance(want, int) and want != got for want, got in zip(tensor_spec.shape, value.shape)
            ):
                raise InputError(f"graph {spec.name} input {tensor_spec.name}: shape {tuple(value.shape)}, "
                                 f"expected {tuple(tensor_spec.shape)}")
