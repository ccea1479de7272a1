"""The PyTorch pipeline of a loaded model (no export): the same stages the graphs run, in eager mode.

This is the reference the exported graphs are compared against, the `torch` backend's pipeline, and
the evaluation harness for peer selection rules (which only exist in PyTorch).
"""

from __future__ import annotations

from ..models.split import build_modules, plan_for
from .backends import check_device
from .backends.torch_backend import TorchBackend
from .graphs import graph_specs
from .pipeline import Pipeline


def torch_pipeline(loaded, schedule, *, grid=None, max_text_tokens: int = 512, max_new_tokens: int = 64,
                   device: str = "cpu", method: str = "trio", seed: int = 0, nms_iterations: int = 32,
                   cuda_graphs: bool | None = None) -> Pipeline:
    """`cuda_graphs`: capture the fixed-shape calls as CUDA graphs (default: on for CUDA devices)."""
    check_device(device)
    adapter = loaded.adapter
    grid = tuple(grid) if grid else adapter.default_grid()
    adapter.validate_grid(grid)
    plan = plan_for(adapter, schedule, grid=grid, max_text_tokens=max_text_tokens, max_new_tokens=max_new_tokens,
                    nms_iterations=nms_iterations)
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    specs = graph_specs(plan, tile_count=adapter.tile_count(grid), tile_size=adapter.tile_size, dtype=dtype)
    backend = TorchBackend(specs, build_modules(adapter, plan, method=method, seed=seed, runtime_form=True), device=device,
                           cuda_graphs=cuda_graphs)
    return Pipeline(plan, backend, adapter, stop_token_ids=adapter.stop_token_ids(), dtype=dtype)
