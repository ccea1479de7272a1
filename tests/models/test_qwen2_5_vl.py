"""Qwen2.5-VL through the whole product: the adapter, the pipeline and the exported graphs, on a tiny random
Qwen2.5-VL built offline (real vision geometry: patch 14, 2x2 merger, 112-px windows, one full-attention block).

- Pruning off, the pipeline (the torch runtime's form and the form export traces) equals transformers'
  `Qwen2_5_VLForConditionalGeneration.generate` token for token, with every step's logits.
- After a cut the kept tokens keep their original M-RoPE rows; decoding continues at the prompt's max + 1.
- The exported graphs (both targets) answer as the PyTorch pipeline does, pruned and not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_both_forms_alike,
    assert_export_refused,
    assert_unpruned_equals_generate,
    hf_generate,
    make_pipeline,
    random_image,
)

from trio_edge.errors import InputError, ScheduleError, UnsupportedModelError
from trio_edge.models.registry import load
from trio_edge.models.tiny_qwen import make_tiny_qwen2_5_vl
from trio_edge.trio.schedule import Schedule

GRID = (224, 224)  # 16 x 16 patches: 4 attention windows, 64 image tokens
CASES = [(0, "what color is the triangle?"), (1, "how many circles are there?"),
         (2, "describe the picture in one word")]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load(str(make_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen"), seed=1)))


@pytest.fixture(scope="module")
def pictures():
    return [random_image(w, h, seed=i) for i, (w, h) in enumerate([(300, 200), (224, 224), (90, 160)])]


def generate_reference(loaded, image, prompt, max_new_tokens=6):
    return hf_generate(loaded, image, prompt, GRID, max_new_tokens)


def test_the_family_is_recognised(qwen):
    adapter = qwen.adapter
    assert (adapter.family, adapter.position_rows, adapter.default_grid()) == ("qwen2.5-vl", 3, GRID)
    assert adapter.image_token_count(GRID) == 64 and adapter.pixel_shape(GRID) == (256, 3 * 2 * 14 * 14)
    assert adapter.stop_token_ids() == [qwen.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]


@pytest.mark.parametrize("runtime_form", [True, False], ids=["runtime-form", "export-form"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_unpruned_pipeline_equals_generate(qwen, pictures, case, runtime_form):
    index, prompt = CASES[case]
    assert_unpruned_equals_generate(qwen, pictures[index], prompt, GRID, runtime_form)


def test_the_answers_differ_between_requests(qwen, pictures):
    """The parity above is not vacuous: different images and prompts give different logits."""
    first = generate_reference(qwen, pictures[0], CASES[0][1], 1)[1][0]
    second = generate_reference(qwen, pictures[1], CASES[1][1], 1)[1][0]
    assert (first - second).abs().max() > 1e-2


def test_kept_tokens_keep_their_original_mrope_rows(qwen, pictures):
    from trio_edge.trio.select_module import pruned_index_map

    adapter = qwen.adapter
    schedule = adapter.schedule(GRID, cuts="1:20,2:8")
    assert schedule.positions == "original"
    pipeline = make_pipeline(qwen, schedule, max_new_tokens=2, grid=GRID)
    calls = {}
    run = pipeline.backend.run

    def recording(graph, inputs):
        out = run(graph, inputs)
        if graph.startswith("select"):
            calls[graph] = (inputs, out)
        return out

    pipeline.backend.run = recording
    result = pipeline.generate(pictures[0], CASES[0][1])
    ids = adapter.prompt_ids(CASES[0][1], 64)
    rows = adapter.prompt_positions(ids, GRID)
    for select in pipeline.plan.selects:
        inputs, out = calls[select.name]
        kept_rows = pruned_index_map(inputs["hidden"].shape[1], inputs["image_positions"], out["kept"])
        assert torch.equal(out["position_ids_out"], inputs["position_ids"][..., kept_rows])
    image_start = int((ids[0] == adapter.image_token_id).to(torch.int64).argmax())
    last_kept = [image_start + k for k in result.kept[-1]]
    last_rows = calls[pipeline.plan.selects[-1].name][1]["position_ids_out"]
    assert torch.equal(last_rows[..., image_start:image_start + 8], rows[..., last_kept])  # original numbering
    assert adapter.first_decode_position(rows) == int(rows.max()) + 1 < ids.shape[1]


@pytest.mark.parametrize("method, options", [("trio", {"cuts": "1:24,2:8"}), ("fastv", {"cuts": "2:24"}),
                                             ("dart", {"cuts": "2:20"}), ("pdrop", {"cuts": "1:24,2:8"}),
                                             ("uniform", {"cuts": "1:24"})])
def test_methods_run_in_both_forms_alike(qwen, pictures, method, options):
    schedule = qwen.adapter.schedule(GRID, method=method, **options)
    assert_both_forms_alike(qwen, schedule, method, pictures[2], CASES[2][1], GRID)


@pytest.mark.slow
@pytest.mark.parametrize("cuts, target", [(None, "onnxruntime"), ("1:30,2:16,3:8", "tensorrt")],
                         ids=["unpruned-onnxruntime-target", "trio-tensorrt-target"])
def test_exported_graphs_answer_as_pytorch(qwen, pictures, tmp_path, cuts, target):
    from trio_edge import load as load_export
    from trio_edge.exporters.export import export
    from trio_edge.exporters.trt_check import check_path, parse_trt_version

    export(qwen.source, tmp_path / "export", loaded=qwen, cuts=cuts, grid="224x224", max_text_tokens=48,
           max_new_tokens=4, progress=False, target=target)  # validates every graph against its module
    schedule = qwen.adapter.schedule(GRID, cuts=cuts) if cuts else Schedule()
    with load_export(tmp_path / "export") as graphs:
        for index, prompt in CASES[:2]:
            torch_answer = make_pipeline(qwen, schedule, max_new_tokens=4, grid=GRID).generate(pictures[index], prompt)
            onnx_answer = graphs.generate(pictures[index], prompt)
            assert onnx_answer.token_ids == torch_answer.token_ids and onnx_answer.kept == torch_answer.kept
            if cuts is None:
                assert onnx_answer.token_ids == generate_reference(qwen, pictures[index], prompt, 4)[0]
    if target == "tensorrt":
        errors = [f for report in check_path(str(tmp_path / "export"), parse_trt_version("10.3")) for f in report.errors]
        assert errors == []


def test_an_image_size_off_the_window_is_refused(qwen):
    with pytest.raises(InputError, match="image size 230x224 is not a multiple of 112 px"):
        qwen.adapter.grid_for("230x224")


def test_renumbered_positions_and_vision_tower_methods_are_refused(qwen):
    with pytest.raises(ScheduleError, match="keeps original M-RoPE positions"):
        qwen.adapter.schedule(GRID, cuts="1:20", positions="renumber")
    with pytest.raises(Exception, match="no \\[CLS\\]|vision tower"):
        qwen.adapter.schedule(GRID, method="visionzip", keep_ratio=0.3)


@pytest.mark.parametrize("arch, says", [("Qwen2VLForConditionalGeneration", "Qwen2-VL"),
                                        ("Qwen3VLMoeForConditionalGeneration", "Qwen3-VL-MoE is not supported")])
def test_other_qwen_versions_are_refused_before_loading(arch, says):
    from types import SimpleNamespace

    from trio_edge.models.families import adapter_class_for

    with pytest.raises(UnsupportedModelError, match=says):
        adapter_class_for(SimpleNamespace(architectures=[arch]))


def test_cli_refuses_a_bad_image_size_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-c", "from trio_edge.cli.export import main; raise SystemExit(main())",
                           "tiny-random-qwen", "-o", str(tmp_path / "out"), "--grid", "230x224"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    assert done.stderr.strip().splitlines() == [
        "error: image size 230x224 is not a multiple of 112 px, the vision tower's attention window; pick sides in "
        "multiples of 112 px (e.g. 224x224)"]


@pytest.mark.slow
def test_trio_serve_answers_a_qwen_model_through_the_openai_client(qwen, pictures):
    import base64
    import io

    from openai import OpenAI

    from trio_edge.serve import start

    image = io.BytesIO()
    pictures[0].save(image, format="PNG")
    data = base64.b64encode(image.getvalue()).decode()
    schedule = qwen.adapter.schedule(GRID, keep_ratio=0.3)
    expected = make_pipeline(qwen, schedule, max_new_tokens=4, grid=GRID).generate(pictures[0], CASES[0][1])
    with start(qwen.source, keep_ratio=0.3, max_new_tokens=4) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                                                 {"type": "text", "text": CASES[0][1]}]}]
        reply = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages)
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.model_extra["image_tokens"]["kept_per_cut"] == [len(k) for k in expected.kept]


@pytest.mark.parametrize("layers, ratios, cuts", [([2], [0.3], "2:19"), ([1, 3], [0.5, 0.34], "1:32,3:10")])
@pytest.mark.parametrize("runtime_form", [True, False], ids=["runtime-form", "export-form"])
def test_trio_cuts_equal_a_plain_implementation_of_the_authors_qwen_code(qwen, pictures, layers, ratios, cuts,
                                                                          runtime_form):
    """TRIO's Qwen port (tests/qwen_reference.py, checked against ocy1/TRIO's own code): the proxy reruns the layer
    just executed with the input embedding table as its head; kept sets and the pruned prefill's logits equal."""
    from qwen_reference import prefill_reference

    schedule = qwen.adapter.schedule(GRID, cuts=cuts)
    for index, prompt in CASES:
        inputs = qwen.adapter.hf_inputs(pictures[index], prompt, GRID)
        reference = prefill_reference(qwen.model, inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
                                      1.0, layers, ratios)
        ours = make_pipeline(qwen, schedule, max_new_tokens=1, grid=GRID, runtime_form=runtime_form).generate(
            pictures[index], prompt)
        assert ours.kept == reference.kept_original
        torch.testing.assert_close(ours.first_logits[0], reference.last_logits, rtol=1e-4, atol=1e-4)


def test_a_trio_cut_before_any_layer_is_refused_on_qwen(qwen):
    with pytest.raises(ScheduleError, match="reruns the decoder layer just executed"):
        qwen.adapter.schedule(GRID, cuts="0:20")
    assert qwen.adapter.schedule(GRID, cuts="0:20", method="uniform").cuts[0].layer == 0  # other rules may cut there


def test_eval_and_calibration_run_methods_as_the_family_allows(qwen):
    from trio_edge.calibration.evaluate import method_schedule
    from trio_edge.calibration.search import candidate_schedules

    trio, _ = method_schedule(qwen.adapter, GRID, "trio", 1 / 3)
    assert trio.positions == "original" and min(c.layer for c in trio.cuts) >= 1
    with pytest.raises(ScheduleError, match="SparseVLM's released code runs LLaVA only"):
        method_schedule(qwen.adapter, GRID, "sparsevlm", 1 / 3)
    candidates = candidate_schedules(qwen.adapter, GRID, 0.3)
    assert candidates and all(s.positions == "original" and s.cuts[0].layer >= 1 for s in candidates)


def test_benchmark_counts_the_windowed_vision_tower(qwen):
    from trio_edge.models.cost import qwen_vision_flops

    vision = qwen.model.config.vision_config
    one_window, four_windows = qwen_vision_flops(vision, (112, 112), 64), qwen_vision_flops(vision, (224, 224), 64)
    # 4x the patches: dense work 4x, windowed attention 4x, full attention 16x
    assert 4 * one_window < four_windows < 16 * one_window


@pytest.mark.slow
def test_an_int4_export_runs_and_is_ready_for_tensorrt(pictures, tmp_path):
    from trio_edge import load as load_export
    from trio_edge.exporters.export import export
    from trio_edge.exporters.trt_check import check_path, parse_trt_version

    model = make_tiny_qwen2_5_vl(tmp_path / "model", seed=1)  # quantization rewrites the loaded weights: its own copy
    info = export(str(model), tmp_path / "export", cuts="1:24,2:8", weights="int4", max_text_tokens=48,
                  max_new_tokens=3, progress=False)  # every graph validated against its (quantized) module
    assert info.weight_format.startswith("int4")
    with load_export(tmp_path / "export") as graphs:
        answer = graphs.generate(pictures[0], CASES[0][1])
    assert [len(k) for k in answer.kept] == [24, 8] and len(answer.token_ids) >= 1
    reports = check_path(str(tmp_path / "export"), parse_trt_version("10.3"))
    assert [f for report in reports for f in report.errors] == []


@pytest.mark.parametrize("options, says", [
    (["--method", "sparsevlm", "--budget", "64"], "SparseVLM's released code runs LLaVA only"),
    (["--preset", "trio-ve-64"], "is TRIO's LLaVA schedule (per CLIP tile); on this model use --preset trio-qwen"),
    (["--preset", "visionzip-64"], "has no [CLS] token"),
    (["--cuts", "0:20"], "reruns the decoder layer just executed"),
    (["--cuts", "1:20", "--positions", "renumber"], "keeps original M-RoPE positions"),
])
def test_qwen_refusals_are_one_line_and_write_nothing(qwen, tmp_path, capsys, options, says):
    assert_export_refused(qwen.source, tmp_path, capsys, options, says)


def test_a_second_image_slot_is_refused(qwen):
    with pytest.raises(InputError, match="the prompt has 2 image slots"):
        qwen.adapter.prompt_ids("<|image_pad|> and <|image_pad|>: which is red?", 64)


@pytest.mark.slow
def test_an_fp16_export_has_the_vision_tower_computed_in_fp32_by_tensorrt(qwen, tmp_path):
    """TensorRT-LLM reports a naive fp16 build of this tower overflowing: the manifest marks the vision graph,
    trio-build builds it without FP16 (fp16 weights and I/O kept) and trio-check says why; other graphs and fp32
    exports are unmarked."""
    from trio_edge.artifact.manifest import read_manifest
    from trio_edge.exporters.engine_build import builder_flags
    from trio_edge.exporters.export import export
    from trio_edge.exporters.trt_check import check_path, parse_trt_version

    export(qwen.source, tmp_path / "export", loaded=qwen, dtype="fp16", cuts="1:24", max_text_tokens=48,
           max_new_tokens=2, progress=False, target="tensorrt")
    graphs = read_manifest(tmp_path / "export").graphs
    marked = {name: entry.fp32_compute for name, entry in graphs.items() if entry.fp32_compute}
    assert list(marked) == ["vision"] and "overflows fp16" in marked["vision"]
    entry = graphs["vision"]
    assert builder_flags(entry.kind, "fp16", "fp32", entry.fp32_compute) == ([], [])
    assert builder_flags(graphs["embed"].kind, "fp16", "fp32", graphs["embed"].fp32_compute) == (["FP16"], [])
    reports = check_path(str(tmp_path / "export"), parse_trt_version("10.3"))
    notes = [(Path(r.path).name, f.message) for r in reports for f in r.warnings if f.rule == "precision"]
    assert [name for name, _ in notes] == ["vision.onnx"] and "builds it without FP16" in notes[0][1]
    assert [f for report in reports for f in report.errors] == []


@pytest.mark.slow
def test_vision_layers_that_do_not_split_into_blocks_stay_unquantized(pictures, tmp_path):
    """Qwen2.5-VL's vision MLPs take 3420 features, which no useful block size divides: with --quantize-vision
    those layers keep the export dtype (counted in the manifest), the rest is int4; decoder layers are never
    skipped (a block size that does not divide them is refused)."""
    from trio_edge import load as load_export
    from trio_edge.artifact.manifest import read_manifest
    from trio_edge.exporters.export import export

    model = make_tiny_qwen2_5_vl(tmp_path / "model", seed=1)  # vision width 32: blocks of 64 do not divide it
    export(str(model), tmp_path / "export", cuts="1:24", weights="int4", block_size=64, quantize_vision=True,
           quantize_lm_head=True, max_text_tokens=48, max_new_tokens=2, progress=False)
    quantization = read_manifest(tmp_path / "export").quantization
    assert quantization.vision and quantization.unquantized_vision > 0
    assert f"{quantization.unquantized_vision} of its layers unquantized" in quantization.describe()
    with load_export(tmp_path / "export") as graphs:
        assert len(graphs.generate(pictures[0], CASES[0][1]).token_ids) >= 1
    with pytest.raises(InputError, match="does not divide the 64 input features"):
        export(str(model), tmp_path / "refused", weights="int4", block_size=128, max_text_tokens=48,
               max_new_tokens=2, progress=False)
    assert not (tmp_path / "refused").exists()
