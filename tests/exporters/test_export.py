"""trio-export on the tiny model: graphs valid, ONNX pipeline == PyTorch pipeline, manifest integrity."""

import json
import shutil
import warnings

import numpy as np
import onnx
import pytest
import torch
from helpers import assert_ready_for_tensorrt, assert_same_generations
from PIL import Image

from trio_edge import load
from trio_edge.artifact.manifest import read_manifest
from trio_edge.errors import ArtifactError, InputError

FORBIDDEN_OPS = {"Loop", "If", "NonZero", "Scan", "ScatterND", "ScatterElements", "Scatter"}
WORDS = "what color is the circle square left right how many objects are there red blue shape".split()


def random_requests(count, seed):
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        height, width = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        prompt = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))
        requests.append((image, prompt))
    return requests


def test_export_writes_every_graph_with_static_selection(exported):
    name, directory, summary = exported
    manifest = read_manifest(directory)
    plan = manifest.plan
    expected = {"vision", "embed"} | {s.name for s in plan.segments} | {s.name for s in plan.selects}
    assert set(manifest.graphs) == expected
    assert len(plan.selects) == (1 if name == "one_cut" else 3)
    for graph in manifest.graphs.values():
        model = onnx.load(str(directory / graph.file))
        ops = {node.op_type for node in model.graph.node}
        if graph.kind == "segment":  # the KV cache: ONE scatter of the new slots, from the kv input to kv_out
            scatters = [n for n in model.graph.node if n.op_type == "ScatterND"]
            assert [(n.input[0], n.output[0]) for n in scatters] == [("kv", "kv_out")]
            ops -= {"ScatterND"}
        assert not ops & FORBIDDEN_OPS, f"{graph.file} has {ops & FORBIDDEN_OPS}"
        if graph.kind == "select":
            kept = next(o for o in model.graph.output if o.name == "kept")
            assert [d.dim_value for d in kept.type.tensor_type.shape.dim] == [graph.outputs[0]["shape"][0]]
    # validation ran on every graph, random and recorded-request cases, and passed
    validated = {row["graph"] for row in manifest.validation}
    assert validated == expected
    assert {row["case"] for row in manifest.validation} >= {"random-prefill", "random-decode", "request-prefill"}
    assert all(row["ok"] for row in manifest.validation)
    assert 1.0 < manifest.weights["ratio"] == pytest.approx(summary.weight_ratio)
    assert manifest.target == "tensorrt" and manifest.format_version == 5


def test_onnx_pipeline_matches_torch_pipeline_on_20_requests(exported):
    _, directory, _ = exported
    onnx_pipeline = load(directory, backend="onnxruntime")
    torch_pipeline = load(directory, backend="torch")
    assert_same_generations(torch_pipeline, onnx_pipeline, random_requests(20, seed=7), tol=1e-4)


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_chunked_prefill_generates_what_one_call_does(export_tiny, target):
    """ONNX Runtime on CPU prefills long prompts in chunks (each attends to the slots the earlier ones wrote):
    the same kept sets and tokens as one call, for both export targets' attention forms."""
    _, directory, _ = export_tiny("one_cut", target=target)
    whole, chunked = load(directory, backend="onnxruntime"), load(directory, backend="onnxruntime")
    assert whole.backend.prefill_chunk_tokens == 1024  # the CPU default
    whole.backend.prefill_chunk_tokens, chunked.backend.prefill_chunk_tokens = None, 7
    calls = []
    run = chunked.backend.run
    chunked.backend.run = lambda graph, inputs: calls.append(graph) or run(graph, inputs)
    assert_same_generations(whole, chunked, random_requests(3, seed=5), max_new_tokens=4, tol=1e-4)
    segment = chunked.plan.segments[0].name
    assert calls.count(segment) > 3 * 4  # several prefill chunks per request besides the decode steps


def test_trio_check_passes_on_export(exported):
    _, directory, _ = exported
    assert_ready_for_tensorrt(directory)


def _copy(directory, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    return target


def test_corrupted_file_is_detected(one_cut_dir, tmp_path):
    copy = _copy(one_cut_dir, tmp_path)
    target = copy / "segment_01_04.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 of segment_01_04.onnx"):
        load(copy)


def test_missing_and_truncated_files_are_detected(one_cut_dir, tmp_path):
    copy = _copy(one_cut_dir, tmp_path)
    (copy / "vision.onnx").unlink()
    with pytest.raises(ArtifactError, match="vision.onnx listed in the manifest is missing"):
        load(copy)
    copy2 = _copy(one_cut_dir, tmp_path / "b")
    path = copy2 / "embed.onnx"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="truncated"):
        load(copy2)


def test_manifest_version_and_path_traversal_are_refused(one_cut_dir, tmp_path):
    copy = _copy(one_cut_dir, tmp_path)
    manifest_path = copy / "manifest.json"
    body = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**body, "manifest_version": 99}))
    with pytest.raises(ArtifactError, match="manifest_version 99"):
        load(copy)
    files = dict(body["files"])
    files["../outside.onnx"] = files.pop("embed.onnx")
    manifest_path.write_text(json.dumps({**body, "files": files}))
    with pytest.raises(ArtifactError, match="outside the export directory"):
        load(copy)


def test_no_manifest_is_not_an_export(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load(tmp_path)


def test_export_refuses_to_overwrite_without_force(one_cut_dir, export_model):
    from trio_edge.exporters.export import export

    with pytest.raises(InputError, match="--force"):
        export(export_model.source, one_cut_dir, cuts="1:40", loaded=export_model, progress=False)


def test_prompt_longer_than_export_maximum_names_the_flag(one_cut_dir):
    pipeline = load(one_cut_dir)
    image = random_requests(1, seed=1)[0][0]
    with pytest.raises(InputError, match="--max-text-tokens"):
        pipeline.generate(image, " ".join(["red"] * 80), max_new_tokens=2)


@pytest.mark.slow
def test_unconverged_cluster_nms_falls_back_to_exact_greedy(export_model, tmp_path):
    """With 1 unrolled iteration and a low threshold the graph cannot converge; the runtime must still
    select exactly what the greedy reference selects (the torch pipeline with ample iterations)."""
    import dataclasses

    from trio_edge.exporters.export import export
    from trio_edge.models.split import build_modules
    from trio_edge.runtime.backends.torch_backend import TorchBackend
    from trio_edge.runtime.pipeline import Pipeline

    directory = tmp_path / "low-iter"
    export(export_model.source, directory, cuts="1:30", threshold=0.2, nms_iterations=1, loaded=export_model,
           max_text_tokens=48, max_new_tokens=6, progress=False, validate=False)
    pipeline = load(directory)
    exact_plan = dataclasses.replace(pipeline.plan, nms_iterations=200)
    reference = Pipeline(exact_plan, TorchBackend(pipeline.backend.specs, build_modules(export_model.adapter, exact_plan)),
                         export_model.adapter, stop_token_ids=[], dtype="float32")
    fallbacks = 0
    for image, prompt in random_requests(4, seed=11):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = pipeline.generate(image, prompt, max_new_tokens=4)
        fallbacks += sum("Cluster-NMS needed more" in str(w.message) for w in caught)
        want = reference.generate(image, prompt, max_new_tokens=4)
        assert got.kept == want.kept
        assert got.token_ids[:len(want.token_ids)] == want.token_ids[:len(got.token_ids)]
    assert fallbacks > 0, "the low-iteration export never needed the host fallback; the test proves nothing"


def test_unpruned_onnx_pipeline_matches_transformers_generate(export_model, tmp_path):
    """The whole exported chain (vision, embed, one segment graph, decode through the same graph) against
    transformers' own greedy generate, pruning off."""
    from trio_edge.exporters.export import export

    directory = tmp_path / "full"
    export(export_model.source, directory, loaded=export_model, max_text_tokens=48, max_new_tokens=10,
           progress=False, validate=False)
    pipeline = load(directory)
    adapter, grid = export_model.adapter, export_model.adapter.default_grid()
    for image, prompt in random_requests(5, seed=23):
        got = pipeline.generate(image, prompt, max_new_tokens=10)
        inputs = adapter.hf_inputs(image, prompt, grid)
        with torch.no_grad():
            out = export_model.model.generate(**inputs, max_new_tokens=10, do_sample=False, output_logits=True,
                                              return_dict_in_generate=True)
        want = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        stop = set(adapter.stop_token_ids())
        assert got.token_ids == want[:len(got.token_ids)] and (len(got.token_ids) == len(want) or got.token_ids[-1] in stop)
        torch.testing.assert_close(got.first_logits[0], out.logits[0][0], atol=1e-4, rtol=1e-4)


def test_output_shapes_from_the_signature_match_onnx_runtime(exported):
    """What the CUDA IO-binding path allocates before a run equals what ONNX Runtime produces."""
    _, directory, _ = exported
    pipeline = load(directory)
    recorded = {}
    original = pipeline.backend.run_impl

    def record(graph, inputs):
        outputs = original(graph, inputs)
        recorded.setdefault(graph, []).append(({k: tuple(v.shape) for k, v in inputs.items()},
                                               {k: tuple(v.shape) for k, v in outputs.items()}))
        return outputs

    pipeline.backend.run_impl = record
    image, prompt = random_requests(1, seed=3)[0]
    pipeline.generate(image, prompt, max_new_tokens=3)
    assert set(recorded) == set(pipeline.backend.specs)
    for graph, calls in recorded.items():
        for input_shapes, output_shapes in calls:
            assert pipeline.backend.specs[graph].output_shapes(input_shapes) == output_shapes, graph
