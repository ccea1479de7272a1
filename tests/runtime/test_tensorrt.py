"""TensorRT path: engine compatibility, optimization profiles, import-safe errors, the build's manifest
contract (with a recording stand-in for the TensorRT builder API), and - where `import tensorrt` works
and a GPU is present - real engines that must give the onnxruntime backend's tokens."""

from __future__ import annotations

import importlib.util
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from helpers import PROMPTS, assert_same_generations

from trio_edge.artifact.dtypes import TORCH_DTYPES
from trio_edge.artifact.graphs import typical_lengths
from trio_edge.artifact.manifest import GraphEntry, read_manifest
from trio_edge.errors import ArtifactError, BackendUnavailableError, ExportError, InputError
from trio_edge.exporters import engine_build
from trio_edge.exporters.engine_build import build_engines, optimization_profiles
from trio_edge.runtime.backends.tensorrt_backend import (
    TRT_TORCH_DTYPES,
    TensorRTBackend,
    check_engine_compatibility,
    select_profile,
    torch_dtype,
)


def tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None and tensorrt_importable()
needs_tensorrt_gpu = pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()),
                                        reason="needs `import tensorrt` (TensorRT 10) and a CUDA GPU")
without_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="asserts the install hint shown when tensorrt is absent")

JETSON = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "engines": {}}


@pytest.fixture(scope="module")
def tiny_export(one_cut_dir):
    """A real tiny export (one cut, fp32) without engines: the session's, shared with other tests (copy it to
    write into it: `export_copy`)."""
    return one_cut_dir


@pytest.fixture
def export_copy(tiny_export, tmp_path):
    directory = tmp_path / "export"
    shutil.copytree(tiny_export, directory)
    return directory


@pytest.fixture(scope="module")
def image_file(images, tmp_path_factory):
    path = tmp_path_factory.mktemp("trt-image") / "image.png"
    images[0].save(path)
    return path


# ---- engine compatibility ------------------------------------------------------------------------------------
def test_matching_platform_is_accepted():
    check_engine_compatibility(JETSON, {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"})


def test_missing_tensorrt_section_says_run_trio_build():
    for recorded in (None, {}):
        with pytest.raises(ArtifactError) as error:
            check_engine_compatibility(recorded, {}, directory="/data/llava-export")
        assert "no TensorRT engines" in str(error.value)
        assert "run trio-build /data/llava-export first" in str(error.value)


def test_tensorrt_version_mismatch_is_refused():
    with pytest.raises(ArtifactError) as error:
        check_engine_compatibility(JETSON, {"version": "10.7.0", "gpu": "Orin", "compute_capability": "8.7"},
                                   directory="out")
    message = str(error.value)
    assert "do not fit this machine (TensorRT version differs)" in message
    assert "built for Orin (sm_87) with TensorRT 10.3.0" in message
    assert "this is Orin (sm_87) with TensorRT 10.7.0" in message
    assert message.endswith("rebuild with trio-build out")


def test_gpu_mismatch_is_refused():
    with pytest.raises(ArtifactError) as error:
        check_engine_compatibility(JETSON, {"version": "10.3.0", "gpu": "NVIDIA GeForce RTX 3090",
                                            "compute_capability": "8.7"}, directory="out")
    message = str(error.value)
    assert "(GPU differs)" in message
    assert "this is NVIDIA GeForce RTX 3090 (sm_87) with TensorRT 10.3.0" in message


def test_compute_capability_mismatch_is_refused():
    with pytest.raises(ArtifactError) as error:
        check_engine_compatibility(JETSON, {"version": "10.8.0", "gpu": "NVIDIA H100 80GB HBM3",
                                            "compute_capability": "9.0"}, directory="out")
    message = str(error.value)
    assert "(TensorRT version and GPU and compute capability differ)" in message
    assert "engines were built for Orin (sm_87) with TensorRT 10.3.0; this is NVIDIA H100 80GB HBM3 (sm_90) " \
           "with TensorRT 10.8.0: rebuild with trio-build out" in message


def test_incomplete_section_is_refused():
    with pytest.raises(ArtifactError, match="lacks compute_capability, engines"):
        check_engine_compatibility({"version": "10.3.0", "gpu": "Orin"}, JETSON, directory="out")


# ---- profiles, dtype table, profile choice --------------------------------------------------------------------
def test_optimization_profiles_of_a_real_manifest(tiny_export):
    manifest = read_manifest(tiny_export)
    plan, graphs = manifest.plan, manifest.graphs
    kinds = {name: g.kind for name, g in graphs.items()}
    assert sorted(kinds.values()) == ["embed", "segment", "segment", "select", "vision"]
    profiles = {name: optimization_profiles(g, typical_lengths(plan, name, g.kind)) for name, g in graphs.items()}
    assert profiles["vision"] == []
    d, m, text = plan.hidden_size, plan.num_image_tokens, plan.max_text_tokens  # 48 text tokens
    decode_embed, prefill_embed = profiles["embed"]
    assert decode_embed == {"input_ids": ((1, 1), (1, 1), (1, 1))}
    assert prefill_embed == {"input_ids": ((1, 2), (1, 48 + m), (1, text + m))}  # typical text 64 > 48 allowed
    for segment in plan.segments:
        decode, prefill = profiles[segment.name]
        assert decode == {"hidden": ((1, 1, d),) * 3, "position_ids": ((1, 1),) * 3}
        high = text + segment.image_tokens
        assert prefill["hidden"] == ((1, 2, d), (1, high, d), (1, high, d))
        assert prefill["position_ids"] == ((1, 2), (1, high), (1, high))
        assert "kv" not in prefill and "past_length" not in prefill  # static inputs need no profile entry
    (select,) = plan.selects
    (only,) = profiles[select.name]
    low, high = graphs[select.name].dynamic_ranges["seq"]
    assert only["hidden"] == ((1, low, d), (1, min(high, 48 + select.tokens_in), d), (1, high, d))
    assert set(only) == {"hidden", "position_ids"}


def test_profiles_without_typical_lengths_optimise_for_the_maximum():
    entry = GraphEntry.from_dict({"file": "g.onnx", "kind": "segment", "bytes": 0, "outputs": [],
                                  "inputs": [{"name": "hidden", "shape": [1, "query", 8], "dynamic_axes": [1]}],
                                  "dynamic_ranges": {"query": [1, 300]}})
    assert optimization_profiles(entry) == [{"hidden": ((1, 1, 8),) * 3},
                                            {"hidden": ((1, 2, 8), (1, 300, 8), (1, 300, 8))}]


def test_dtype_table_covers_every_graph_dtype():
    assert set(TORCH_DTYPES.values()) <= set(TRT_TORCH_DTYPES.values())
    assert torch_dtype("HALF") is torch.float16
    assert torch_dtype(SimpleNamespace(name="INT64")) is torch.int64  # a trt.DataType member has .name
    with pytest.raises(ArtifactError, match="FP8"):
        torch_dtype("FP8")


def test_select_profile_picks_decode_or_prefill():
    ranges = [{"hidden": ((1, 1, 8), (1, 1, 8))}, {"hidden": ((1, 2, 8), (1, 300, 8))}]
    assert select_profile(ranges, {"hidden": (1, 1, 8)}) == 0
    assert select_profile(ranges, {"hidden": (1, 57, 8)}) == 1
    assert select_profile(ranges, {"hidden": (1, 301, 8)}) is None
    assert select_profile([{}], {"pixel_values": (5, 3, 56, 56)}) == 0  # static engine: its default profile


# ---- clear errors without TensorRT / without engines ---------------------------------------------------------------
@without_tensorrt
def test_trio_build_without_tensorrt_exits_2_with_install_hint(tiny_export, capsys):
    from trio_edge.cli.build import main

    assert main([str(tiny_export), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT is not installed here")
    assert "pip install 'trio-edge[tensorrt]'" in err
    assert "sudo apt install python3-libnvinfer" in err
    assert "trio-check work without TensorRT" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_trio_build_without_cuda_says_so(tiny_export, monkeypatch):
    monkeypatch.setattr(engine_build, "import_tensorrt", lambda: SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="trio-build needs an NVIDIA GPU, but CUDA is not usable"):
        build_engines(tiny_export, progress=False)


def test_trio_build_refuses_bad_arguments_and_directories(tmp_path, capsys):
    from trio_edge.cli.build import main

    with pytest.raises(InputError, match="--precision must be one of fp16, bf16, fp32"):
        build_engines(tmp_path, precision="int8")
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a directory; pass the output directory of trio-export" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "has no manifest.json" in capsys.readouterr().err


def test_trio_run_tensorrt_without_engines_says_run_trio_build(tiny_export, image_file, capsys):
    from trio_edge.cli.run import main

    code = main([str(tiny_export), "--image", str(image_file), "--prompt", PROMPTS[0], "--backend", "tensorrt"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{tiny_export} has no TensorRT engines" in err
    assert f"run trio-build {tiny_export} first" in err


def test_tensorrt_backend_needs_a_cuda_device(tiny_export):
    manifest, specs = _manifest_and_specs(tiny_export)
    manifest.tensorrt = JETSON
    with pytest.raises(BackendUnavailableError, match="pass --device cuda"):
        TensorRTBackend.from_export(tiny_export, manifest, specs, device="cpu")


@without_tensorrt
def test_tensorrt_backend_without_tensorrt_gives_install_hint(tiny_export):
    manifest, specs = _manifest_and_specs(tiny_export)
    manifest.tensorrt = JETSON
    with pytest.raises(BackendUnavailableError, match=r"pip install 'trio-edge\[tensorrt\]'"):
        TensorRTBackend.from_export(tiny_export, manifest, specs, device="cuda")


def _manifest_and_specs(directory):
    manifest = read_manifest(directory)
    return manifest, manifest.specs()


# ---- the build's contract with the manifest, against a recording stand-in of the builder API -------------------
class RecordingTensorRT:
    """Just the TensorRT 10 builder calls build_engines makes; records them and returns fake plans."""

    __version__ = "10.3.0"
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    BuilderFlag = SimpleNamespace(FP16="FP16", BF16="BF16", TF32="TF32")

    def __init__(self, fail_on: str | None = None):
        self.fail_on, self.configs, self.parsed = fail_on, {}, []
        outer = self

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                assert severity == 2

        class Parser:
            def __init__(self, network, logger):
                self.network, self.num_errors = network, 0

            def parse_from_file(self, path):
                outer.parsed.append(path)
                self.network.name = path.rsplit("/", 1)[-1].removesuffix(".onnx")
                self.num_errors = int(self.network.name == outer.fail_on)
                return not self.num_errors

            def get_error(self, index):
                return SimpleNamespace(node=lambda: 7, node_name=lambda: "/layers.0/NonZero",
                                       node_operator=lambda: "NonZero", desc=lambda: "unsupported operator")

        self.Logger, self.OnnxParser = Logger, Parser

    def Builder(self, logger):  # noqa: N802 - TensorRT's name
        outer = self

        class Config:
            def __init__(self):
                self.flags, self.cleared, self.pools, self.profiles, self.cache = [], [], {}, [], None

            def set_memory_pool_limit(self, pool, size):
                self.pools[pool] = size

            def set_flag(self, flag):
                self.flags.append(flag)

            def clear_flag(self, flag):
                self.cleared.append(flag)

            def create_timing_cache(self, data):
                return SimpleNamespace(data=data, serialize=lambda: b"timing-cache:" + data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return True

            def add_optimization_profile(self, profile):
                self.profiles.append(profile.shapes)
                return len(self.profiles) - 1

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

        class Builder:
            def create_network(self, flags):
                return SimpleNamespace(name=None, num_inputs=0)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                outer.configs[network.name] = config
                return memoryview(f"engine of {network.name}".encode())

        return Builder()


@pytest.fixture
def recording_trt(monkeypatch):
    def install(fail_on=None):
        fake = RecordingTensorRT(fail_on)
        monkeypatch.setattr(engine_build, "import_tensorrt", lambda: fake)
        monkeypatch.setattr(engine_build, "require_cuda", lambda what: None)
        monkeypatch.setattr(engine_build, "_current_cuda_device", lambda: 0)
        monkeypatch.setattr(engine_build, "platform_info",
                            lambda version, index: {"version": version, "gpu": "Orin", "compute_capability": "8.7"})
        return fake

    return install


def test_build_writes_engines_and_rewrites_the_manifest(export_copy, recording_trt, tmp_path):
    fake = recording_trt()
    original = read_manifest(export_copy)
    cache = tmp_path / "cache" / "timing.cache"
    cache.parent.mkdir()
    result = build_engines(export_copy, precision="bf16", workspace_gb=2, timing_cache=cache, progress=False)
    manifest = read_manifest(export_copy)  # sha256 of every file, engines included, verified
    section = manifest.tensorrt
    assert section == result["tensorrt"]
    assert (section["version"], section["gpu"], section["compute_capability"], section["precision"]) == \
        ("10.3.0", "Orin", "8.7", "bf16")
    assert list(section["engines"]) == list(manifest.graphs)
    for name, engine in section["engines"].items():
        assert (export_copy / engine["file"]).read_bytes() == f"engine of {name}".encode()
        assert engine["file"] in manifest.files
        config = fake.configs[name]
        graph = manifest.graphs[name]
        # select graphs stay fp32 (not even TF32) so the kept tokens equal the reference exactly
        assert config.flags == ([] if graph.kind == "select" else ["BF16"])
        assert config.cleared == (["TF32"] if graph.kind == "select" else [])
        assert config.pools == {"WORKSPACE": 2 * 2**30}
        expected = optimization_profiles(graph, typical_lengths(manifest.plan, name, graph.kind))
        assert config.profiles == expected
        assert engine["profiles"] == json.loads(json.dumps(
            [{k: {"min": list(lo), "opt": list(op), "max": list(hi)} for k, (lo, op, hi) in p.items()} for p in expected]))
    assert [len(section["engines"][g.name]["profiles"]) for g in manifest.plan.segments] == [2, 2]
    assert cache.read_bytes() == b"timing-cache:"  # created (empty cache serialized) when it did not exist
    assert not list(export_copy.glob("*.partial")) and not list(export_copy.glob("*.tmp"))
    for key in ("plan", "graphs", "model", "io", "tool", "weights", "validation"):  # everything else is kept
        assert getattr(manifest, key) == getattr(original, key)


def test_rebuild_with_fp32_reuses_the_timing_cache(export_copy, recording_trt, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    recording_trt()
    build_engines(export_copy, precision="fp16", progress=False)
    fake = recording_trt()
    build_engines(export_copy, precision="fp32", timing_cache=cache, progress=False)
    assert all(config.flags == [] and config.cache.data == b"old" for config in fake.configs.values())
    assert read_manifest(export_copy).tensorrt["precision"] == "fp32"
    assert cache.read_bytes() == b"timing-cache:old"


def test_parse_error_names_graph_and_node_and_keeps_the_export_valid(export_copy, recording_trt):
    recording_trt()
    build_engines(export_copy, progress=False)
    before = read_manifest(export_copy)
    select = before.plan.selects[0].name
    recording_trt(fail_on=select)
    with pytest.raises(ExportError) as error:
        build_engines(export_copy, progress=False)
    message = str(error.value)
    assert f"TensorRT could not parse graph {select} ({select}.onnx)" in message
    assert "node 7 '/layers.0/NonZero' (NonZero): unsupported operator" in message
    assert read_manifest(export_copy) == before  # earlier engines untouched, hashes still valid
    assert not list(export_copy.glob("*.partial"))


# ---- real engines (where TensorRT and a GPU are available) ----------------------------------------------------------
@needs_tensorrt_gpu
def test_tensorrt_engines_match_onnxruntime(export_copy, images):
    from trio_edge import load

    build_engines(export_copy, precision="fp32", progress=False)
    assert set(read_manifest(export_copy).tensorrt["engines"]) == set(read_manifest(export_copy).graphs)
    reference = load(export_copy, backend="onnxruntime", device="cpu")
    engines = load(export_copy, backend="tensorrt", device="cuda")
    assert_same_generations(reference, engines, zip(images[:3], PROMPTS))  # KV ping-pong, captured graphs
    assert any(graph is not None for graph in engines.backend.decode_graphs.graphs.values()), "no decode graph replayed"
    engines.backend.cuda_graphs = False
    plain = engines.generate(images[0], PROMPTS[0], max_new_tokens=8)
    assert plain.token_ids == reference.generate(images[0], PROMPTS[0], max_new_tokens=8).token_ids
