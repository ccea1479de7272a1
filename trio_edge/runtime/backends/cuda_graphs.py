"""CUDA-graph capture of fixed-shape module calls for the torch backend.

TRIO's fixed kept-token counts give every pruned prefill and every decode step a fixed shape, which is
what a CUDA graph needs: each (graph, input shapes) pair is captured once and then replayed with one
launch instead of one launch per kernel (eager PyTorch is launch-bound on the short pruned sequence).

A captured call owns static copies of its inputs; inputs the module writes in place (the KV buffer)
are not copied but adopted: the caller's buffer becomes the graph's buffer, so it is never copied.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch


class CapturedCall:
    """One module call captured for fixed input shapes; `__call__` copies new inputs in and replays."""

    def __init__(self, module: torch.nn.Module, args: list[torch.Tensor], in_place: set[int], warmup: int = 2):
        self.static = [arg if index in in_place else arg.clone() for index, arg in enumerate(args)]
        self.adopted = {self.static[index].data_ptr() for index in in_place}  # fixed for the graph's life
        side = torch.cuda.Stream(args[0].device)
        side.wait_stream(torch.cuda.current_stream(args[0].device))
        with torch.cuda.stream(side), torch.no_grad():  # warm-up on a side stream, as capture requires;
            for _ in range(warmup):  # repeating the call is harmless: it rewrites the same KV slots
                module(*self.static)
        torch.cuda.current_stream(args[0].device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            outputs = module(*self.static)
        self.outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)

    def __call__(self, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for static, arg in zip(self.static, args):
            if static.data_ptr() != arg.data_ptr():
                static.copy_(arg)
        self.graph.replay()
        # outputs live in the graph's memory and are overwritten by the next replay: hand out copies,
        # except buffers written in place, which the caller keeps using as the graph's own
        return tuple(out if out.data_ptr() in self.adopted else out.clone() for out in self.outputs)

    def release(self) -> None:
        self.graph.reset()


class CapturedCalls:
    """Captured calls keyed by (graph, input shapes), at most `limit` per graph (oldest released first:
    prompts of many different lengths would otherwise keep one prefill capture each)."""

    def __init__(self, limit: int = 8):
        self.limit = limit
        self.calls: dict[str, OrderedDict] = {}
        self.eager: set[str] = set()  # graphs whose capture failed: they run eagerly from then on

    def run(self, graph: str, module: torch.nn.Module, args: list[torch.Tensor], input_names: list[str]):
        if graph in self.eager:
            with torch.no_grad():
                return module(*args)
        calls = self.calls.setdefault(graph, OrderedDict())
        key = tuple(tuple(arg.shape) for arg in args)
        call = calls.get(key)
        if call is None:
            in_place = {input_names.index(name) for name in getattr(module, "in_place_inputs", ())}
            try:
                call = CapturedCall(module, args, in_place)
            except RuntimeError as error:  # an op that cannot be captured: correct, only slower, eagerly
                warnings.warn(f"{graph}: CUDA-graph capture failed ({str(error).splitlines()[0]}); running it "
                              "eagerly", RuntimeWarning, stacklevel=4)
                self.eager.add(graph)
                with torch.no_grad():
                    return module(*args)
            calls[key] = call
            if len(calls) > self.limit:
                calls.popitem(last=False)[1].release()
        calls.move_to_end(key)
        return call(args)
