"""--weights int8 / int4: the graphs hold symmetric blocked DequantizeLinear weights that ONNX Runtime fuses into
MatMulNBits, stored once on disk; every graph still matches its (dequantized-weight) PyTorch module; the
manifest records the format; bad options fail with one line and write nothing."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import assert_same_generations
from onnx import TensorProto, external_data_helper, numpy_helper

from trio_edge import load
from trio_edge.artifact.manifest import read_manifest
from trio_edge.artifact.weights import ORT_DISABLED_OPTIMIZERS
from trio_edge.cli.export import main as export_main
from trio_edge.errors import ArtifactError, InputError
from trio_edge.exporters.export import export
from trio_edge.exporters.quantize import dequantized, pack_int4, recover_codes, rtn_codes, unpack_int4
from trio_edge.exporters.trt_check import check_directory
from trio_edge.runtime.backends.ort_sessions import cache_entry

ORT_FLOAT = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


@pytest.fixture(scope="module")
def int4_export(export_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant") / "int4"
    info = export(export_model.source, out, cuts="1:40", loaded=export_model, max_text_tokens=48, max_new_tokens=8,
                  weights="int4", progress=False)
    return out, info


def _initializers(path):
    return {t.name: t for t in onnx.load(str(path), load_external_data=False).graph.initializer}


def test_rtn_codes_round_trip_and_int4_packing():
    rng = np.random.default_rng(0)
    weight_kn = rng.standard_normal((64, 6)).astype(np.float32)
    for bits, bound in ((4, 0.6), (8, 0.03)):
        codes, scales = rtn_codes(weight_kn, bits, 32)
        assert codes.shape == (64, 6) and scales.shape == (2, 6)
        assert codes.min() >= -(1 << (bits - 1)) and codes.max() <= (1 << (bits - 1)) - 1
        values = dequantized(codes, scales.astype(np.float16), 32, torch.float16)  # (N, K) as the graph holds
        assert np.abs(values.float().numpy().T - weight_kn).max() < bound
        # the codes are recovered exactly from the rounded fp16 values (what the graph rewrite relies on)
        assert np.array_equal(recover_codes(values.float().numpy().T, scales.astype(np.float16), 32, bits), codes)
    codes = np.array([-8, 7, 0, -1, 3], np.int8)
    assert np.array_equal(unpack_int4(np.frombuffer(pack_int4(codes), np.uint8), 5), codes)


def test_int4_export_holds_shared_blocked_dq_weights(int4_export):
    directory, info = int4_export
    manifest = read_manifest(directory)
    assert manifest.quantization.format == "int4" and manifest.quantization.block_size == 32
    assert manifest.opset == 21 and manifest.weight_format() == "int4 (rtn, block 32)"
    assert all(row["ok"] for row in manifest.validation) and {r["graph"] for r in manifest.validation} == set(
        manifest.graphs)
    segment_files = {manifest.graphs[s.name].file + ".data" for s in manifest.plan.segments}
    for name, entry in manifest.graphs.items():
        model = onnx.load(str(directory / entry.file), load_external_data=False)
        inits = {t.name: t for t in model.graph.initializer}
        dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        if entry.kind in ("vision", "embed"):
            assert not dqs and entry.weights["format"] == "float32"
            continue
        assert dqs and entry.weights["format"] == "int4" and entry.weights["quantized_tensors"] > 0
        for node in dqs:
            codes, scales = inits[node.input[0]], inits[node.input[1]]
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert codes.data_type == TensorProto.INT4 and len(node.input) == 2  # symmetric: no zero point
            assert attrs == {"axis": 0, "block_size": 32}
            assert list(scales.dims) == [codes.dims[0] // 32, codes.dims[1]]
        if entry.kind == "select":  # the proxy layer's codes live in the segment's data file: stored once
            locations = {e.value for t in inits.values() if external_data_helper.uses_external_data(t)
                         for e in t.external_data if e.key == "location"}
            assert locations & segment_files and entry.weights["shared_tensors"] > 0
            assert not any(t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and min(t.dims) > 8
                           and t.name.startswith(("permute", "layers")) for t in inits.values())
    # each rewritten graph's data file holds exactly the bytes graphs point at (streamed codes, no stale weights)
    spans = collections.defaultdict(list)
    for entry in manifest.graphs.values():
        for tensor in onnx.load(str(directory / entry.file), load_external_data=False).graph.initializer:
            info = {e.key: e.value for e in tensor.external_data}
            if "location" in info:
                spans[info["location"]].append((int(info.get("offset", 0)), int(info["length"])))
    for data_file in segment_files:
        unique = sorted(set(spans[data_file]))
        assert sum(length for _, length in unique) == (directory / data_file).stat().st_size
        assert all(a + n <= b for (a, n), (b, _) in zip(unique, unique[1:]))  # no overlaps
    assert not list(directory.glob("*.tmp"))
    # (the artifact / weight ratio is measured on the 7B shape: a tiny model's graph structure outweighs it)


def test_onnxruntime_fuses_every_segment_weight_into_matmulnbits(int4_export, tmp_path):
    directory, _ = int4_export
    manifest = read_manifest(directory)
    segment = manifest.plan.segments[-1].name
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(directory / manifest.graphs[segment].file), options,
                         providers=["CPUExecutionProvider"], disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx"),
                                                           load_external_data=False).graph.node)
    quantized = manifest.graphs[segment].weights["quantized_tensors"]
    assert ops["MatMulNBits"] == quantized and ops["DequantizeLinear"] == 0


def test_quantized_pipeline_matches_the_dequantized_torch_pipeline(int4_export, export_model, images):
    """ONNX Runtime (fused int4, int8 activations) vs the PyTorch pipeline on the dequantized weights."""
    import copy

    from trio_edge.exporters.quantize import quantize_model
    from trio_edge.runtime.open import open_model

    directory, _ = int4_export
    manifest = read_manifest(directory)
    reference_model = copy.deepcopy(export_model)
    quantize_model(reference_model.adapter.linear_layers(), manifest.quantization)
    reference = open_model(reference_model, cuts="1:40", max_text_tokens=48, max_new_tokens=8)
    with load(directory) as quantized:
        assert quantized.weight_format == "int4 (rtn, block 32)"
        requests = [(image, "what color is the circle?") for image in images[:3]]
        assert_same_generations(reference, quantized, requests, max_new_tokens=4, tol=5e-2)


def test_trio_check_accepts_the_int4_export(int4_export):
    reports = check_directory(int4_export[0])
    assert all(r.ok for r in reports), [f.message for r in reports for f in r.errors]


def test_torch_backend_refuses_a_quantized_export(int4_export):
    with pytest.raises(ArtifactError, match="holds int4 weights, which the torch backend cannot run"):
        load(int4_export[0], backend="torch")


def test_version_1_manifests_still_load_as_unquantized(one_cut_dir, tmp_path):
    import json
    import shutil

    copy = tmp_path / "v1"
    shutil.copytree(one_cut_dir, copy)
    body = json.loads((copy / "manifest.json").read_text())
    body["manifest_version"] = 1
    body.pop("quantization", None)
    for graph in body["graphs"].values():
        graph.pop("weights", None)
    (copy / "manifest.json").write_text(json.dumps(body))
    manifest = read_manifest(copy)
    assert manifest.quantization is None and manifest.weight_format() == "float32"


@pytest.mark.slow
def test_int8_fp16_export_validates_and_shares_the_float_lm_head(export_model, image, tmp_path):
    out = tmp_path / "int8"
    export(export_model.source, out, cuts="1:40", loaded=export_model, max_text_tokens=48, max_new_tokens=8,
           dtype="fp16", weights="int8", progress=False)
    manifest = read_manifest(out)
    assert all(row["ok"] for row in manifest.validation)
    select = manifest.plan.selects[0].name
    inits = _initializers(out / manifest.graphs[select].file)
    assert any(t.data_type == TensorProto.INT8 for t in inits.values())
    # fp32 selection (the default) on an fp16 export: the select graph holds no fp32 copy of any weight
    assert not any(t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and min(t.dims) > 8
                   and not external_data_helper.uses_external_data(t) for t in inits.values())
    assert "lm_head.weight" in inits  # the segment's fp16 lm_head, referenced, not copied
    # ... nor in memory: ONNX Runtime does not constant-fold the Casts to fp32 into resident copies (its
    # optimized select graph, saved by the runtime's cache, holds no fp32 matrix either), and it still selects.
    with load(out, backend="onnxruntime") as pipeline:
        assert len(pipeline.generate(image, "what is it?", max_new_tokens=2).kept[0]) == 40
        cached, settings = pipeline.backend.cache[select], pipeline.backend.settings
    assert cached in ("miss", "hit")
    optimized = _initializers(cache_entry(manifest.content_key(), select, ort.__version__, settings) / "model.onnx")
    large_fp32 = [n for n, t in optimized.items() if t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 1024]
    assert not large_fp32, large_fp32


@pytest.mark.parametrize("argv, message", [
    (["--weights", "int3"], "--weights must be one of fp32, fp16, int8, int4"),
    (["--weights", "int4", "--block-size", "24"], "--block-size must be a power of two"),
    (["--weights", "int4", "--block-size", "128"], "--block-size 128 does not divide the 64 input features"),
    (["--weights", "int4", "--quant-method", "gptq"], "needs calibration images"),
    (["--weights", "int4", "--quant-method", "awq"], "--quant-method must be one of rtn, gptq"),
    (["--weights", "fp16"], "pass --dtype fp16 instead"),
    (["--quant-method", "gptq"], "need --weights int8 or int4"),
])
def test_bad_quantization_options_fail_with_one_line_and_write_nothing(export_model, tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    code = export_main([export_model.source, "-o", str(out), "--no-validate", "--quiet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_gptq_without_data_is_an_input_error_from_python(export_model, tmp_path):
    with pytest.raises(InputError, match="needs calibration images"):
        export(export_model.source, tmp_path / "x", loaded=export_model, weights="int4", quant_method="gptq")


def test_trio_run_prints_the_weight_format(int4_export, image, tmp_path, capsys):
    import json

    from trio_edge.cli.run import main as run_main

    path = tmp_path / "image.png"
    image.save(path)
    assert run_main([str(int4_export[0]), "--image", str(path), "--prompt", "what color is it?", "--json",
                     "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["weights"] == "int4 (rtn, block 32)"


@pytest.mark.slow
def test_gptq_export_validates_and_differs_from_round_to_nearest(export_model, int4_export, tmp_path):
    out = tmp_path / "gptq"
    export(export_model.source, out, cuts="1:40", loaded=export_model, max_text_tokens=48, max_new_tokens=8,
           weights="int4", quant_method="gptq", calibration_data="synthetic", calibration_samples=4, progress=False)
    manifest = read_manifest(out)
    assert all(row["ok"] for row in manifest.validation)
    assert manifest.quantization.method == "gptq" and manifest.quantization.calibration["samples"] == 4
    segment = manifest.plan.segments[0].name
    gptq, rtn = _initializers(out / f"{segment}.onnx"), _initializers(int4_export[0] / f"{segment}.onnx")
    name = "model.language_model.layers.0.mlp.down_proj.weight.int4"
    assert gptq[name].dims == rtn[name].dims
    codes = [numpy_helper.to_array(t, str(d)) for t, d in ((gptq[name], out), (rtn[name], int4_export[0]))]
    assert not np.array_equal(*codes)  # GPTQ moved rounding error between columns


@pytest.mark.slow
def test_a_head_tied_to_the_embeddings_is_stored_once(tmp_path):
    """Qwen3-VL-2B / Qwen2.5-VL-3B tie lm_head to the input embeddings: the graph holding the head refers to the embed
    graph's table instead of a second copy (151,936 x 2,048 in fp16 is 0.62 GB on the real 2B)."""
    import json

    from trio_edge.exporters.export import export
    from trio_edge.models.random_weights import build_random

    model = build_random("qwen3-vl-2b", tmp_path / "model", dtype=torch.float32, scale=0.03, layers=2, vision_layers=2)
    export(str(model), tmp_path / "export", max_text_tokens=32, max_new_tokens=2, progress=False)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    graphs = manifest["graphs"]
    assert graphs["segment_00_02"]["weights"]["shared_tensors"] == 1
    assert graphs["segment_00_02"]["bytes"] < graphs["embed"]["bytes"] / 10 and manifest["weights"]["ratio"] < 1.1
