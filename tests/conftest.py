"""Session fixtures: tiny LLaVA-NeXT checkpoints, their exports and test images.

The exports (and the checkpoint they come from) are built once per test run, not once per xdist worker: the
first worker to need one builds it into a directory both workers share, under a file lock, and writes a
`<name>.json` record last; every worker reads the export only once that record exists."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from filelock import FileLock

sys.path.insert(0, os.path.dirname(__file__))  # `from helpers import ...`, `from reference import ...`

from helpers import random_image  # noqa: E402

from trio_edge.artifact.manifest import GraphEntry  # noqa: E402
from trio_edge.exporters.export import ExportInfo, export  # noqa: E402
from trio_edge.models.registry import load  # noqa: E402
from trio_edge.models.tiny import make_tiny_llava_next  # noqa: E402

# ONNX Runtime's optimized-graph cache goes to a directory of this session, never the user's ~/.cache
os.environ["TRIO_EDGE_CACHE"] = tempfile.mkdtemp(prefix="trio-edge-test-cache-")
atexit.register(shutil.rmtree, os.environ["TRIO_EDGE_CACHE"], ignore_errors=True)

# Two cores and tiny tensors: one intra-op thread is fastest and leaves a core to the rest.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from trio_edge.models.tiny import make_tiny_llava_next

    return make_tiny_llava_next(tmp_path_factory.mktemp("tiny-llava-next"), seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from trio_edge.models.registry import load

    return load(str(tiny_model_dir))


@pytest.fixture(scope="session")
def images():
    """Deterministic RGB images of different sizes and aspect ratios (width x height)."""
    sizes = [(120, 80), (64, 64), (50, 150), (200, 90), (33, 47), (112, 112)]
    return [random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]


@pytest.fixture(scope="session")
def image(images):
    return images[0]


# ---- exports of the tiny model, shared by export, CLI and hardening tests ----------------------------
SCHEDULES = {"one_cut": "1:40", "three_cuts": "0:30,1:16,2:8"}
# peer exports: (cuts, method)
METHODS = {"fastv_one_cut": ("2:40", "fastv"), "dart_one_cut": ("2:36", "dart"),
           "pdrop_three_cuts": ("1:44,2:22,3:11", "pdrop"), "sparsevlm_two_cuts": ("1:40,2:16", "sparsevlm"),
           "trio_ve": ("vision:6,2:20", "trio-ve"),
           "visionzip": ("vision:5+2", "visionzip")}


def built_once(root: Path, name: str, build) -> tuple[Path, dict]:
    """`root / name` built by `build(path) -> JSON-able record` once for every worker of this run; returns
    (path, record). The record file is written last, so its presence means the build is complete; a build
    left half-done by a worker that died is removed and redone."""
    path, record = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not record.exists():
            if path.exists():
                shutil.rmtree(path)
            written = record.with_suffix(".json.tmp")
            written.write_text(json.dumps(build(path)))
            os.replace(written, record)
    return path, json.loads(record.read_text())


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """A directory every xdist worker of this run sees (the workers' common base temp), else this session's."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-builds"
    root.mkdir(exist_ok=True)
    return root


def _info_record(info: ExportInfo) -> dict:
    return {**{f.name: getattr(info, f.name) for f in dataclasses.fields(ExportInfo)},
            "directory": str(info.directory), "graphs": {k: g.to_dict() for k, g in info.graphs.items()}}


def _info_from_record(record: dict) -> ExportInfo:
    return ExportInfo(**{**record, "directory": Path(record["directory"]),
                         "graphs": {k: GraphEntry.from_dict(g) for k, g in record["graphs"].items()}})


def loaded_once(shared_root, name: str, make, seed: int):
    """The tiny model `make(path, seed=seed)` builds, saved once per test run under `name` and loaded."""
    path, _ = built_once(shared_root, name, lambda p: str(make(p, seed=seed)))
    return load(str(path))


@pytest.fixture(scope="session")
def export_model(shared_root):
    return loaded_once(shared_root, "tiny-export-model", make_tiny_llava_next, seed=3)


@pytest.fixture(scope="session")
def export_tiny(export_model, shared_root):
    """Export the tiny model at a named schedule once per test run (fp32, validated); tests must not write into
    the export (copy it first): other tests, on either worker, read the same directory."""
    done = {}

    def build(name, target, out):
        cuts, method = METHODS.get(name, (SCHEDULES.get(name), "trio"))
        return _info_record(export(export_model.source, out, cuts=cuts, method=method, loaded=export_model,
                                   max_text_tokens=48, max_new_tokens=12, progress=False, target=target))

    def get(name, target="tensorrt"):
        key = name if target == "tensorrt" else f"{name}-{target}"
        if key not in done:
            out, record = built_once(shared_root, f"export-{key}", lambda out: build(name, target, out))
            done[key] = (name, out, _info_from_record(record))
        return done[key]

    return get


@pytest.fixture(scope="session", params=["one_cut", pytest.param("three_cuts", marks=pytest.mark.slow)])
def exported(request, export_tiny):
    """(schedule name, export dir, summary) for one cut and for three cuts."""
    return export_tiny(request.param)


@pytest.fixture(scope="session")
def one_cut_dir(export_tiny):
    return export_tiny("one_cut")[1]


@pytest.fixture(scope="session")
def hardening_export(shared_root):
    """A tiny export (cuts 1:40, at most 48 text and 8 new tokens) shared by the hardening tests; its
    model directory is its sibling `model`."""

    def build(root):
        model = make_tiny_llava_next(root / "model", seed=0)
        export(str(model), root / "export", cuts="1:40", max_text_tokens=48, max_new_tokens=8, progress=False,
               validate=False)
        return {}

    root, _ = built_once(shared_root, "hardening-shared", build)
    return root / "export"


# ---- the tiny Qwen3-VL, shared by tests/models/test_qwen3_vl*.py -------------------------------------------
@pytest.fixture(scope="session")
def qwen3(shared_root):
    """A tiny random Qwen3-VL (models.tiny_qwen3: patch 16, 3 DeepStack layers of 4), loaded once per run."""
    from trio_edge.models.tiny_qwen3 import make_tiny_qwen3_vl

    return loaded_once(shared_root, "tiny-qwen3", make_tiny_qwen3_vl, seed=1)


# ---- the tiny Qwen2.5-VL, shared by the several-images and video tests ---------------------------------------------
@pytest.fixture(scope="session")
def qwen2_5(shared_root):
    """A tiny random Qwen2.5-VL (models.tiny_qwen: patch 14, 112-px windows, one full-attention block), loaded once."""
    from trio_edge.models.tiny_qwen import make_tiny_qwen2_5_vl

    return loaded_once(shared_root, "tiny-qwen2.5", make_tiny_qwen2_5_vl, seed=1)


@pytest.fixture(scope="session")
def qwen3_fp16_export(qwen3, shared_root):
    """get(weights) -> the tiny Qwen3-VL exported in fp16 with TRIO's selection in the model's precision (its select
    graphs read the embed graph's token table as the proxy head), `weights` "fp16" or "int4" (the Orin Nano proof's
    Qwen configuration, scaled down); built once per run, not validated."""

    def get(weights: str) -> Path:
        def build(out):
            export(qwen3.source, out, loaded=qwen3, cuts="1:24,2:8", dtype="fp16", weights=weights,
                   precision="model", max_text_tokens=48, max_new_tokens=4, progress=False, validate=False)
            return {}

        return built_once(shared_root, f"tiny-qwen3-{weights}-fp16", build)[0]

    return get
