"""Roofline floors, and the fp32 part of a TRIO prefill for the real llava-next-7b config (analytic)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from trio_edge.models.cost import DecoderShape, fp32_prefill_flops, select_flops_parts
from trio_edge.runtime.roofline import floors

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "roofline_projection.py"


def test_floors_split_fp32_and_fp16_work():
    result = floors(1e12, 0.5e12, 1e9, {"fp16_tflops": 1.0, "fp32_tflops": 0.5, "bandwidth_gbs": 1.0}, new_tokens=3)
    assert result["ttft_floor_ms"] == pytest.approx(500 + 1000)
    assert result["fp32_share_of_ttft_floor"] == pytest.approx(1000 / 1500)
    assert result["decode_floor_ms"] == pytest.approx(1000)
    assert result["end_to_end_floor_ms"] == pytest.approx(1500 + 2 * 1000)


def test_model_precision_leaves_only_the_nms_part_in_fp32():
    spec = importlib.util.spec_from_file_location("roofline_projection", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config, _, plans = script.plans("llava-next-7b", 0.111, 60, 64)
    shape = DecoderShape.from_config(config.text_config)
    parts = [select_flops_parts(shape, 60 + s.tokens_in, s.tokens_in, s.keep, plans["trio"].nms_iterations)
             for s in plans["trio"].selects]
    assert [s.keep for s in plans["trio"].selects] == [467, 274, 112]  # the default 11.1% schedule
    assert fp32_prefill_flops(config, plans["full"], 60) == 0.0
    assert fp32_prefill_flops(config, plans["trio"], 60) == pytest.approx(sum(p["proxy"] + p["nms"] for p in parts))
    assert fp32_prefill_flops(config, plans["trio_model_precision"], 60) == pytest.approx(sum(p["nms"] for p in parts))
    assert sum(p["proxy"] for p in parts) > 5 * sum(p["nms"] for p in parts)  # the proxy is what precision buys


def counted_flops(fn, *args) -> float:
    """Matrix-product FLOPs of one eager call, backward included, by PyTorch's own formulas
    (torch.utils.flop_counter) applied to every op dispatched (FlopCounterMode itself cannot follow
    torch.autograd.grad to a leaf, which the proxy saliency uses)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += formula(*args, **kwargs, out_val=out)
            return out

    with Counter():
        fn(*args)
    return Counter.total


def test_select_cost_matches_the_products_the_select_stage_runs(tiny):
    """models/cost.py's select-stage formula against PyTorch's own count of the stage's matrix products (the
    export form: every unrolled Cluster-NMS step runs), so the formula cannot drift from the graph again. M is
    above NMS_BLOCK so the blocked form has several blocks."""
    import torch

    from trio_edge.models.cost import nms_flops
    from trio_edge.trio.schedule import Schedule
    from trio_edge.trio.select_module import SelectStage
    from trio_edge.trio.selection import NMS_BLOCK, nms_select_fixed

    decoder, text, image, iterations = tiny.adapter.decoder, 40, NMS_BLOCK * 2 + 50, 3
    seq = text + image
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, seq, decoder.hidden_size, generator=generator)
    positions = torch.arange(seq)[None]
    stage = SelectStage(decoder, 1, image, 20, Schedule(), iterations)
    shape = DecoderShape(decoder.hidden_size, decoder.layers[1].mlp.gate_proj.out_features, decoder.num_heads,
                         decoder.num_kv_heads, decoder.head_dim, decoder.vocab_size)
    parts = select_flops_parts(shape, seq, image, 20, iterations)

    scores, features = torch.rand(image, generator=generator), hidden[0, text // 2:text // 2 + image]
    assert counted_flops(nms_select_fixed, scores, features, 20, 0.8, iterations) == parts["nms"]
    assert parts["nms"] == nms_flops(image, decoder.hidden_size, iterations, NMS_BLOCK, 20)
    # the kept buffer: about M x (keep + B) x D, not the M x M x D of all pairwise similarities
    assert parts["nms"] < 0.5 * (2.0 * image * image * decoder.hidden_size)
    with torch.no_grad():  # the stage re-enables grad for the proxy gradient, as in the backends
        proxy = counted_flops(stage.saliency, hidden, positions)
        whole = counted_flops(stage, hidden, positions, text // 2 + torch.arange(image))
    assert proxy == pytest.approx(parts["proxy"], rel=0.01)
    assert whole == pytest.approx(parts["proxy"] + parts["nms"], rel=0.01)
