"""Qwen3-VL through the whole product: the adapter, the pipeline and the exported graphs, on a tiny random Qwen3-VL
built offline (patch 16, 2x2 merger, QK-norm, interleaved M-RoPE, DeepStack into decoder layers 0-2 of 4).

- Pruning off, the pipeline (the torch runtime's form and the form export traces) equals transformers'
  `Qwen3VLForConditionalGeneration.generate` token for token, with every step's logits; DeepStack is not idle.
- Keep-all cuts before and after the last DeepStack layer answer as the unpruned model (the planes follow the
  tokens through the select graphs).
- TRIO (the Qwen port's proxy), FastV and DART keep exactly what plain implementations built from transformers'
  own layers keep, with the DeepStack planes added after layers 0-2 and gathered at cuts before layer 3.
- The exported graphs (both targets) answer as transformers / the PyTorch pipeline do, pruned and not.
"""

from __future__ import annotations

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

from reference import qwen3_plain_prefill

from trio_edge.trio.schedule import Schedule

GRID = (256, 256)  # 16 x 16 patches: 64 image tokens
CASES = [(0, "what color is the triangle?"), (1, "how many circles are there?"),
         (2, "describe the picture in one word")]


@pytest.fixture(scope="module")
def pictures():
    return [random_image(w, h, seed=i) for i, (w, h) in enumerate([(300, 200), (256, 256), (90, 160)])]


def generate_reference(loaded, image, prompt, max_new_tokens=6):
    return hf_generate(loaded, image, prompt, GRID, max_new_tokens)


@pytest.mark.parametrize("runtime_form", [True, False], ids=["runtime-form", "export-form"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_unpruned_pipeline_equals_generate(qwen3, pictures, case, runtime_form):
    index, prompt = CASES[case]
    assert_unpruned_equals_generate(qwen3, pictures[index], prompt, GRID, runtime_form)


def test_deepstack_and_the_prompt_change_the_answer(qwen3, pictures):
    """The parity above is not vacuous: other images/prompts give other logits, and so does dropping DeepStack."""
    first = generate_reference(qwen3, pictures[0], CASES[0][1], 1)[1][0]
    second = generate_reference(qwen3, pictures[1], CASES[1][1], 1)[1][0]
    assert (first - second).abs().max() > 1e-2
    pipeline = make_pipeline(qwen3, Schedule(), max_new_tokens=1, grid=GRID)
    run = pipeline.backend.run

    def without_deepstack(graph, inputs):
        out = run(graph, inputs)
        return {**out, "deepstack": torch.zeros_like(out["deepstack"])} if graph == "embed" else out

    pipeline.backend.run = without_deepstack
    dropped = pipeline.generate(pictures[0], CASES[0][1]).first_logits[0]
    assert (dropped - first).abs().max() > 1e-2


@pytest.mark.parametrize("cuts, method", [("1:64", "uniform"), ("2:64", "trio"), ("2:64", "fastv"),
                                          ("3:64", "dart"), ("1:64,3:64", "trio")])
def test_keep_all_cuts_answer_as_the_unpruned_model(qwen3, pictures, cuts, method):
    """Cuts before layer 3 hand the DeepStack planes on through their select graph, cuts at 3 need none: keeping
    every token, both answer exactly as the unpruned pipeline (and so as generate)."""
    full = make_pipeline(qwen3, Schedule(), max_new_tokens=4, grid=GRID).generate(pictures[0], CASES[0][1])
    schedule = qwen3.adapter.schedule(GRID, cuts=cuts, method=method)
    for form in (True, False):
        pruned = make_pipeline(qwen3, schedule, max_new_tokens=4, grid=GRID, method=method,
                               runtime_form=form).generate(pictures[0], CASES[0][1])
        assert pruned.token_ids == full.token_ids and pruned.kept == [list(range(64))] * len(schedule.cuts)
        torch.testing.assert_close(pruned.first_logits, full.first_logits, rtol=1e-5, atol=1e-5)


def test_a_chunked_prefill_slices_the_deepstack_planes_with_the_tokens(qwen3, pictures):
    """ONNX Runtime on CPU prefills in chunks: each chunk of a segment below layer 3 gets its own rows' planes."""
    schedule = qwen3.adapter.schedule(GRID, cuts="1:32")
    answers = []
    for chunk in (None, 7):
        pipeline = make_pipeline(qwen3, schedule, max_new_tokens=4, grid=GRID, runtime_form=False)
        pipeline.backend.prefill_chunk_tokens = chunk
        answers.append(pipeline.generate(pictures[1], CASES[1][1]))
    assert answers[0].token_ids == answers[1].token_ids and answers[0].kept == answers[1].kept
    torch.testing.assert_close(answers[1].first_logits, answers[0].first_logits, rtol=1e-5, atol=1e-5)


def test_the_host_fallback_gathers_the_deepstack_planes_too(qwen3, pictures):
    """A select graph whose unrolled Cluster-NMS did not converge is redone on the host: the planes of the tokens the
    host keeps follow them, so the answer equals the always-exact runtime form's."""
    schedule = qwen3.adapter.schedule(GRID, cuts="1:20")
    exact = make_pipeline(qwen3, schedule, max_new_tokens=3, grid=GRID).generate(pictures[0], CASES[0][1])
    short = make_pipeline(qwen3, schedule, max_new_tokens=3, grid=GRID, runtime_form=False, nms_iterations=1)
    with pytest.warns(RuntimeWarning, match="selected on the host"):
        fallback = short.generate(pictures[0], CASES[0][1])
    assert fallback.kept == exact.kept and fallback.token_ids == exact.token_ids
    torch.testing.assert_close(fallback.first_logits, exact.first_logits, rtol=1e-5, atol=1e-5)


# ---- plain implementations from transformers' own parts (tests/reference.py qwen3_plain_prefill) ---------------
@pytest.mark.parametrize("method, cuts", [("trio", "1:32,2:16"), ("trio", "2:24,3:10"), ("fastv", "2:24"),
                                          ("fastv", "3:20"), ("dart", "2:20"), ("dart", "3:20")])
@pytest.mark.parametrize("runtime_form", [True, False], ids=["runtime-form", "export-form"])
def test_kept_sets_equal_plain_implementations(qwen3, pictures, method, cuts, runtime_form):
    schedule = qwen3.adapter.schedule(GRID, cuts=cuts, method=method)
    layers = {cut.layer: cut.keep for cut in schedule.cuts}
    for index, prompt in CASES:
        inputs = qwen3.adapter.hf_inputs(pictures[index], prompt, GRID)
        kept, logits = qwen3_plain_prefill(qwen3.model, inputs, layers, method)
        ours = make_pipeline(qwen3, schedule, max_new_tokens=1, grid=GRID, method=method,
                             runtime_form=runtime_form).generate(pictures[index], prompt)
        assert ours.kept == kept
        torch.testing.assert_close(ours.first_logits[0], logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method, options", [("pdrop", {"cuts": "1:24,2:8"}), ("random", {"cuts": "2:24"}),
                                             ("uniform", {"cuts": "1:24,3:8"})])
def test_other_methods_run_in_both_forms_alike(qwen3, pictures, method, options):
    schedule = qwen3.adapter.schedule(GRID, method=method, **options)
    assert_both_forms_alike(qwen3, schedule, method, pictures[2], CASES[2][1], GRID)


# ---- the exported graphs ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("cuts, method, target", [(None, "trio", "onnxruntime"), (None, "trio", "tensorrt"),
                                                  ("1:32,2:16,3:8", "trio", "tensorrt"),
                                                  ("2:24", "fastv", "onnxruntime"), ("2:20", "dart", "tensorrt"),
                                                  ("1:24,3:8", "pdrop", "onnxruntime")],
                         ids=["unpruned-onnxruntime", "unpruned-tensorrt", "trio-tensorrt", "fastv-onnxruntime",
                              "dart-tensorrt", "pdrop-onnxruntime"])
def test_exported_graphs_answer_as_pytorch(qwen3, pictures, tmp_path, cuts, method, target):
    from trio_edge import load as load_export
    from trio_edge.exporters.export import export
    from trio_edge.exporters.trt_check import check_path, parse_trt_version

    export(qwen3.source, tmp_path / "export", loaded=qwen3, cuts=cuts, method=method, max_text_tokens=48,
           max_new_tokens=4, progress=False, target=target)  # validates every graph against its module
    schedule = qwen3.adapter.schedule(GRID, cuts=cuts, method=method) if cuts else Schedule()
    with load_export(tmp_path / "export") as graphs:
        for index, prompt in CASES[:2]:
            onnx_answer = graphs.generate(pictures[index], prompt)
            if cuts is None:
                assert onnx_answer.token_ids == generate_reference(qwen3, pictures[index], prompt, 4)[0]
            else:
                torch_answer = make_pipeline(qwen3, schedule, max_new_tokens=4, grid=GRID, method=method).generate(
                    pictures[index], prompt)
                assert onnx_answer.token_ids == torch_answer.token_ids and onnx_answer.kept == torch_answer.kept
    if target == "tensorrt":
        errors = [f for report in check_path(str(tmp_path / "export"), parse_trt_version("10.3")) for f in report.errors]
        assert errors == []


@pytest.mark.parametrize("options, says", [
    (["--grid", "250x256"], "image size 250x256 is not a multiple of 32 px"),
    (["--cuts", "0:20"], "reruns the decoder layer just executed"),
    (["--method", "sparsevlm", "--budget", "32"], "SparseVLM's released code runs LLaVA only"),
    (["--preset", "trio-qwen"], "Qwen3-VL has no pruning inside the vision tower"),
    (["--method", "visionzip", "--keep-ratio", "0.3"], "Qwen3-VL has no pruning inside the vision tower"),
])
def test_qwen3_refusals_are_one_line_and_write_nothing(qwen3, tmp_path, capsys, options, says):
    assert_export_refused(qwen3.source, tmp_path, capsys, options, says)


def test_a_mislabelled_checkpoint_is_refused_by_the_cli(qwen3, tmp_path, capsys):
    """A Qwen3-VL checkpoint whose config names the Qwen2.5-VL architecture: one line, exit 2, nothing written."""
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(qwen3.source, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
    assert_export_refused(model, tmp_path, capsys, [], "the qwen2.5-vl adapter cannot run a qwen3_vl checkpoint")


@pytest.mark.slow
def test_a_real_architecture_with_random_weights_exports_and_answers(pictures, tmp_path):
    """qwen3-vl-2b's shipped config (scaled down: width x0.03, 4 decoder and 3 vision layers, its DeepStack blocks
    moved to 0, 1, 2), random weights, offline: unpruned equal to generate; a cut before layer 3 exported, validated
    and answering as the PyTorch pipeline."""
    from trio_edge import load as load_export
    from trio_edge.exporters.export import export
    from trio_edge.models.random_weights import build_random
    from trio_edge.models.registry import load

    loaded = load(str(build_random("qwen3-vl-2b", tmp_path / "model", dtype=torch.float32, scale=0.03, layers=4,
                                   vision_layers=3)))
    assert loaded.adapter.deepstack_layers == 3 and loaded.adapter.default_grid() == (768, 768)
    prompt = CASES[0][1]
    expected = generate_reference(loaded, pictures[0], prompt, 3)[0]
    unpruned = make_pipeline(loaded, Schedule(), max_new_tokens=3, grid=GRID).generate(pictures[0], prompt)
    assert unpruned.token_ids == expected
    export(loaded.source, tmp_path / "export", loaded=loaded, cuts="2:20", grid="256x256", max_text_tokens=48,
           max_new_tokens=3, progress=False)
    schedule = loaded.adapter.schedule(GRID, cuts="2:20")
    torch_answer = make_pipeline(loaded, schedule, max_new_tokens=3, grid=GRID).generate(pictures[0], prompt)
    with load_export(tmp_path / "export") as graphs:
        onnx_answer = graphs.generate(pictures[0], prompt)
    assert onnx_answer.kept == torch_answer.kept and onnx_answer.token_ids == torch_answer.token_ids
