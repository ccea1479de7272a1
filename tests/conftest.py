"""Session fixtures: one tiny LLaVA-NeXT checkpoint built per test session, and test images."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # `from helpers import ...`, `from reference import ...`

from helpers import random_image  # noqa: E402

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
