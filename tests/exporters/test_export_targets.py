"""Export targets (--target tensorrt / onnxruntime) in the manifest, and the in-place KV contract: runtimes
refuse older segment graphs, bind kv_out to kv's own buffer, and TensorRT refuses ONNX Runtime exports."""

import json
import shutil

import pytest
import torch

from trio_edge import load
from trio_edge.artifact.manifest import read_manifest
from trio_edge.cli.export import main as export_main
from trio_edge.errors import ArtifactError


def edited_copy(directory, tmp_path, **changes):
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    body = json.loads((copy / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    (copy / "manifest.json").write_text(json.dumps(body))
    return copy


def test_unknown_target_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "out"
    code = export_main(["trio-tiny", "-o", str(out), "--target", "tflite"])
    err = capsys.readouterr().err
    assert code == 2 and "--target must be one of tensorrt, onnxruntime" in err and "'tflite'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_runtimes_refuse_a_version_2_export_and_say_to_re_export(one_cut_dir, tmp_path):
    copy = edited_copy(one_cut_dir, tmp_path, manifest_version=2, target=None)
    assert read_manifest(copy).target is None  # still readable (trio-check, tables)
    with pytest.raises(ArtifactError, match="manifest version 2.*rewrite the whole KV cache.*re-export"):
        load(copy, backend="onnxruntime")


def test_runtimes_refuse_a_version_3_onnxruntime_target_export(one_cut_dir, tmp_path):
    """Version 3 onnxruntime-target segments take one kv per segment; this runtime binds one cache per layer."""
    copy = edited_copy(one_cut_dir, tmp_path, manifest_version=3, target="onnxruntime")
    with pytest.raises(ArtifactError, match="manifest version 3.*one cache per layer.*re-export"):
        load(copy, backend="onnxruntime")
    manifest = read_manifest(copy)
    assert all("kv" in {t.name for t in manifest.specs()[s.name].inputs} for s in manifest.plan.segments)


def test_tensorrt_refuses_an_onnxruntime_target_export(one_cut_dir, tmp_path):
    copy = edited_copy(one_cut_dir, tmp_path, target="onnxruntime")
    with pytest.raises(ArtifactError, match="re-export with --target tensorrt"):
        load(copy, backend="tensorrt", device="cpu")


def test_an_unknown_target_in_a_manifest_is_refused(one_cut_dir, tmp_path):
    copy = edited_copy(one_cut_dir, tmp_path, target="tflite")
    with pytest.raises(ArtifactError, match="unknown export target 'tflite'"):
        read_manifest(copy)


def test_onnxruntime_writes_the_kv_cache_in_place(one_cut_dir, image):
    """kv_out is bound to kv's buffer: after a request every segment's cache is the buffer allocated at load,
    written (prompt + answer slots), with nothing beyond them touched."""
    with load(one_cut_dir) as pipeline:
        buffers = {name: (kv, kv.data_ptr()) for name, kv in pipeline.kv.items()}
        result = pipeline.generate(image, "what color is the circle", max_new_tokens=4)
        for name, (kv, address) in buffers.items():
            assert pipeline.kv[name] is kv and kv.data_ptr() == address
            written = (kv != 0).any(dim=(0, 1, 2, 4))  # per slot
            assert written.any()
            last = int(written.nonzero().max())
            assert written[:last + 1].all() and not written[last + 1:].any()
        assert len(result.token_ids) >= 1


def test_segments_read_the_cache_only_through_per_layer_gathers(one_cut_dir):
    """The decode cost guard: a segment graph's cache input feeds one Reshape (a free view as rows), read by one
    Gather per layer for keys and one for values, and the ScatterND of the new slots; no Slice or Split of the
    cache (slicing all layers' filled slots and then picking each layer copied the past twice per step)."""
    import onnx

    manifest = read_manifest(one_cut_dir)
    segments = [name for name, graph in manifest.graphs.items() if graph.kind == "segment"]
    assert segments
    for name in segments:
        graph = onnx.load(one_cut_dir / manifest.graphs[name].file, load_external_data=False).graph
        readers = [node for node in graph.node if "kv" in node.input]
        assert sorted(node.op_type for node in readers) == ["Reshape", "ScatterND"], name
        (rows,) = [node.output[0] for node in readers if node.op_type == "Reshape"]
        gathers = [node for node in graph.node if rows in node.input]
        layers = manifest.plan.kv_shape(next(s for s in manifest.plan.segments if s.name == name))[0]
        assert [node.op_type for node in gathers] == ["Gather"] * (2 * layers), name


@pytest.fixture(scope="session")
def ort_target_dir(export_tiny):
    return export_tiny("one_cut", target="onnxruntime")[1]


@pytest.mark.slow
def test_onnxruntime_target_uses_fused_gqa_and_answers_like_pytorch(ort_target_dir, image):
    """GroupQueryAttention in every segment (no spelled-out attention left), validated per graph at export, and
    the ORT pipeline on it generates exactly what the PyTorch pipeline does."""
    import onnx
    from helpers import assert_same_generations

    manifest = read_manifest(ort_target_dir)
    assert manifest.target == "onnxruntime"
    for segment in manifest.plan.segments:
        graph = onnx.load(str(ort_target_dir / manifest.graphs[segment.name].file))
        fused = [n for n in graph.graph.node if (n.domain, n.op_type) == ("com.microsoft", "GroupQueryAttention")]
        assert len(fused) == segment.end - segment.start
        assert not [n for n in graph.graph.node if n.op_type == "Softmax"]
        # past straight from the graph's inputs and present straight to its outputs: nothing between to copy
        inputs, outputs = {i.name for i in graph.graph.input}, {o.name for o in graph.graph.output}
        assert all(set(n.input[3:5]) <= inputs and set(n.output[1:3]) <= outputs for n in fused)
        assert not [n for n in graph.graph.node if n.op_type in ("ScatterND", "Gather", "Slice", "Concat")
                    and set(n.input) & {name for name in inputs if name.startswith("past_")}]
    assert all(row["ok"] for row in manifest.validation)
    requests = [(image, "what color is the circle"), (image, "how many objects are there")]
    assert_same_generations(load(ort_target_dir, backend="torch"), load(ort_target_dir), requests, tol=1e-4)


def test_an_fp32_onnxruntime_target_export_is_refused_on_cuda(one_cut_dir, tmp_path):
    """ORT's CUDA GroupQueryAttention has no fp32 kernel: say so before a session falls back to the CPU."""
    copy = edited_copy(one_cut_dir, tmp_path, target="onnxruntime")
    manifest = read_manifest(copy)
    assert manifest.model.dtype == "float32"
    with pytest.raises(ArtifactError, match="fp32 --target onnxruntime export.*fp16 and bf16 kernels only.*"
                                            "re-export with --dtype fp16"):
        manifest.check_onnxruntime_device(copy, "cuda:0")
    manifest.check_onnxruntime_device(copy, "cpu")  # the CPU kernel runs fp32
    read_manifest(one_cut_dir).check_onnxruntime_device(one_cut_dir, "cuda")  # a tensorrt-target export: fine


@pytest.mark.slow
def test_an_onnxruntime_target_export_is_refused_for_tensorrt(ort_target_dir, capsys):
    from trio_edge.cli.build import main as build_main
    from trio_edge.cli.check import main as check_main

    assert check_main([str(ort_target_dir)]) == 2
    assert build_main([str(ort_target_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("re-export with --target tensorrt" in line for line in err)


@pytest.mark.slow
def test_onnxruntime_target_attention_shares_one_buffer_per_layer(ort_target_dir, image):
    """Each segment takes its layers' caches as views of the segment's one buffer and ONNX Runtime's GQA writes the
    new slot there itself (past and present bound to the same memory): a sentinel in an unfilled slot survives a
    decode step, which an unshared GQA (it zeroes its fresh present) or a copy back into the buffer would erase."""
    from trio_edge.artifact.graphs import cache_inputs, layer_cache_names

    with load(ort_target_dir) as pipeline:
        pipeline.generate(image, "what color is the circle", max_new_tokens=2)
        seg = pipeline.plan.segments[-1]
        spec, kv = pipeline.backend.specs[seg.name], pipeline.kv[seg.name]
        assert "kv" not in {t.name for t in spec.inputs}
        filled = int((kv != 0).any(dim=(0, 1, 2, 4)).nonzero().max()) + 1
        kv[:, :, :, -1] = 7.0  # an unfilled slot
        before = kv.clone()
        hidden = torch.randn(1, 1, pipeline.plan.hidden_size)
        inputs = {"hidden": hidden, "position_ids": torch.tensor([[filled]]), "past_length": torch.tensor(filled),
                  **cache_inputs(spec, kv)}
        out = pipeline.backend.run(seg.name, inputs)
        for layer in range(kv.shape[0]):
            past_key, past_value, present_key, present_value = layer_cache_names(layer)
            assert out[present_key].data_ptr() == inputs[past_key].data_ptr() == kv[layer, 0].data_ptr()
            assert out[present_value].data_ptr() == inputs[past_value].data_ptr()
        assert (kv[:, :, :, -1] == 7.0).all()
        assert torch.equal(kv[:, :, :, :filled], before[:, :, :, :filled])
        assert (kv[:, :, :, filled] != before[:, :, :, filled]).any()  # the new slot, written by the graph


@pytest.mark.slow
def test_onnxruntime_target_with_a_layer_owning_select_answers_like_pytorch(export_tiny, image):
    """FastV's select graph runs decoder layer N-1 and writes that layer's KV into the one-layer buffer (its own
    kv / kv_out); the layer's decode steps then read it through the GQA segment's per-layer views of that buffer."""
    from helpers import assert_same_generations

    _, directory, _ = export_tiny("fastv_one_cut", target="onnxruntime")
    manifest = read_manifest(directory)
    owned = [sel.owned_segment for sel in manifest.plan.selects if sel.owned_segment]
    assert owned and all("kv" not in {t.name for t in manifest.specs()[name].inputs} for name in owned)
    requests = [(image, "what color is the circle"), (image, "how many objects are there")]
    assert_same_generations(load(directory, backend="torch"), load(directory), requests, tol=1e-4)
