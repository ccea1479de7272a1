"""The GPU benchmark script runs end to end on CPU at a tiny width (structure only, no timing assertions)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "llava_next_7b.py"


def load_script():
    spec = importlib.util.spec_from_file_location("llava_next_7b_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_benchmark_measures_all_runs_with_roofline_and_projection(tmp_path):
    """Interleaved (the default): every runner open, one turn each per round."""
    out = tmp_path / "result.json"
    load_script().main(["--scale", "0.03", "--layers", "2", "--vision-layers", "1", "--new-tokens", "2,3",
                        "--iters", "2", "--warmup", "0", "--backends", "torch,onnxruntime", "--device", "cpu",
                        "--dtype", "fp32", "--out", str(out)])
    result = json.loads((tmp_path / "result_2.json").read_text())
    longer = json.loads((tmp_path / "result_3.json").read_text())
    assert longer["runs"]["onnxruntime_trio"]["decode_step_ms"]["steps"] == 2 * 2  # 2 measured requests x 2 steps
    assert result["runs"]["transformers_generate"]["decode_step_ms"]["steps"] == 2 * 1
    assert result["architecture"]["image_tokens"] == 2928  # the real 672x672 anyres token count
    assert set(result["runs"]) == {"transformers_generate"} | {
        f"{backend}_{run}" for backend in ("torch", "onnxruntime") for run in ("full", "trio")}
    runs = result["runs"]
    assert runs["torch_trio"]["kept"] == runs["onnxruntime_trio"]["kept"]
    assert set(result["ratios"]) == {"torch", "onnxruntime"}
    full, trio = result["runs"]["onnxruntime_full"], result["runs"]["onnxruntime_trio"]
    assert trio["kept"] and not full["kept"]
    assert trio["flops"]["prefill_total"] < full["flops"]["prefill_total"]
    for run in (full, trio):
        assert run["roofline"]["ttft_floor_ms"] > 0 and run["roofline"]["decode_floor_ms"] > 0
        assert run["orin_projection"]["end_to_end_floor_ms"] > run["orin_projection"]["ttft_floor_ms"]
    stages = trio["stage_roofline"]  # every timed prefill stage against its own FLOP floor at the measured peak
    selects = {name for name in trio["flops"] if name.startswith("select")}
    assert selects and selects <= set(stages)
    for row in stages.values():
        assert row["floor_ms"] > 0 and row["over_floor"] == pytest.approx(row["ms"] / row["floor_ms"])
    assert trio["select_floor_ms"] == pytest.approx(sum(stages[name]["floor_ms"] for name in selects))
    ratios = result["ratios"]["onnxruntime"]
    assert ratios["kv_used_reduction"] > 5  # 11.1% layer-averaged tokens
    assert ratios["trio_ttft_over_floor"] == pytest.approx(trio["ttft_ms"] / trio["roofline"]["ttft_floor_ms"])
    assert result["peaks"]["matmul_tflops"] > 0 and result["peaks"]["copy_gbs"] > 0


def test_sequential_benchmark_measures_transformers_then_each_backend(tmp_path):
    out = tmp_path / "result.json"
    load_script().main(["--scale", "0.03", "--layers", "2", "--vision-layers", "1", "--new-tokens", "2", "--iters", "2",
                        "--warmup", "1", "--turn-warmup", "0", "--backends", "torch", "--device", "cpu",
                        "--dtype", "fp32", "--sequential", "--out", str(out)])
    result = json.loads(out.read_text())
    assert list(result["runs"]) == ["transformers_generate", "torch_full", "torch_trio"]
    assert result["runs"]["transformers_generate"]["decode_step_ms"]["steps"] == 2  # 2 measured requests x 1 step
    assert result["runs"]["torch_trio"]["decode_step_ms"]["steps"] == 2
    assert result["runs"]["torch_trio"]["kept"] and not result["runs"]["torch_full"]["kept"]


def test_decoder_forms_benchmark_runs_and_forms_select_alike(tmp_path):
    spec = importlib.util.spec_from_file_location("decoder_forms_bench", SCRIPT.parent / "decoder_forms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "forms.json"
    module.main(["--scale", "0.03", "--layers", "2", "--vision-layers", "1", "--new-tokens", "2", "--iters", "1",
                 "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"full_runtime_form", "full_export_form", "trio_runtime_form", "trio_export_form"}
    assert result["runs"]["trio_runtime_form"]["kept"] and not result["runs"]["full_runtime_form"]["kept"]
    assert set(result["speedup_runtime_over_export"]) == {"full", "trio"}


@pytest.mark.slow
def test_decode_step_benchmark_times_both_targets_beside_torch_and_transformers(tmp_path, monkeypatch):
    """benchmarks/decode_step.py end to end at a tiny width: each export target's step split into graph and host
    time, the onnxruntime target's segment profiled with its fused attention, transformers' own step beside it."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it reads transformers' step through llava_next_7b's helpers
    spec = importlib.util.spec_from_file_location("decode_step_bench", SCRIPT.parent / "decode_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "step.json"
    module.main(["--scale", "0.03", "--layers", "2", "--steps", "2", "--warmup", "1", "--profile-runs", "2",
                 "--transformers-requests", "1", "--export-dir", str(tmp_path / "exports"), "--out", str(out)])
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert set(runs) == {"transformers_generate", "torch", "onnxruntime_tensorrt", "onnxruntime_onnxruntime"}
    assert runs["transformers_generate"]["steps"] == 15 and runs["torch"]["steps"] == 2
    for target in ("tensorrt", "onnxruntime"):
        run = runs[f"onnxruntime_{target}"]
        assert run["steps"] == 2 and run["graph_run_ms"] and run["step_ms"] >= sum(run["graph_run_ms"].values())
    (profile,) = runs["onnxruntime_onnxruntime"]["profile"].values()
    assert "GroupQueryAttention" in profile["ms_per_run_by_op"]
    assert set(result["ratio_transformers_over"]) == {"torch", "onnxruntime_tensorrt", "onnxruntime_onnxruntime"}
