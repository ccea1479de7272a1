"""Session fixtures: one tiny LLaVA-NeXT checkpoint built per test session, and test images."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # `from helpers import ...`, `from reference import ...`

from helpers import random_image  # noqa: E402

from trio_edge.exporters.export import export  # noqa: E402
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


@pytest.fixture(scope="session")
def export_model(tmp_path_factory):
    path = make_tiny_llava_next(tmp_path_factory.mktemp("tiny-export-model"), seed=3)
    return load(str(path))


@pytest.fixture(scope="session")
def export_tiny(export_model, tmp_path_factory):
    """Export the tiny model at a named schedule once per session (fp32, validated)."""
    done = {}

    def get(name, target="tensorrt"):
        key = name if target == "tensorrt" else f"{name}-{target}"
        if key not in done:
            out = tmp_path_factory.mktemp("exports") / key
            cuts, method = METHODS.get(name, (SCHEDULES.get(name), "trio"))
            summary = export(export_model.source, out, cuts=cuts, method=method, loaded=export_model,
                             max_text_tokens=48, max_new_tokens=12, progress=False, target=target)
            done[key] = (name, out, summary)
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
def hardening_export(tmp_path_factory):
    """A tiny export (cuts 1:40, at most 48 text and 8 new tokens) shared by the hardening tests; its
    model directory is its sibling `model`."""
    root = tmp_path_factory.mktemp("hardening-shared")
    model = make_tiny_llava_next(root / "model", seed=0)
    directory = root / "export"
    export(str(model), directory, cuts="1:40", max_text_tokens=48, max_new_tokens=8, progress=False,
           validate=False)
    return directory
