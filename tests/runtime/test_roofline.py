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
    parts = [select_flops_parts(shape, 60 + s.tokens_in, s.tokens_in, plans["trio"].nms_iterations)
             for s in plans["trio"].selects]
    assert [s.keep for s in plans["trio"].selects] == [467, 274, 112]  # the default 11.1% schedule
    assert fp32_prefill_flops(config, plans["full"], 60) == 0.0
    assert fp32_prefill_flops(config, plans["trio"], 60) == pytest.approx(sum(p["proxy"] + p["nms"] for p in parts))
    assert fp32_prefill_flops(config, plans["trio_model_precision"], 60) == pytest.approx(sum(p["nms"] for p in parts))
    assert sum(p["proxy"] for p in parts) > 5 * sum(p["nms"] for p in parts)  # the proxy is what precision buys
