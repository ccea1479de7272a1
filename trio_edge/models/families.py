"""The model families trio-edge supports: a checkpoint's declared architecture -> its adapter class."""

from __future__ import annotations

from ..errors import UnsupportedModelError
from .llava import LlavaAdapter, LlavaNextAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen3_vl import Qwen3VLAdapter

ADAPTERS = {
    "LlavaNextForConditionalGeneration": LlavaNextAdapter,
    "LlavaForConditionalGeneration": LlavaAdapter,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLAdapter,
    "Qwen3VLForConditionalGeneration": Qwen3VLAdapter,
}
# architectures people reach for that are not supported yet, with what to use instead
NOT_YET = {
    "Qwen2VLForConditionalGeneration": "Qwen2-VL (an older version) is not supported; use a Qwen2.5-VL or Qwen3-VL "
                                       "checkpoint",
    "Qwen3VLMoeForConditionalGeneration": "Qwen3-VL-MoE is not supported; use a dense Qwen3-VL (2B/4B/8B), Qwen2.5-VL "
                                          "or LLaVA checkpoint",
}


def adapter_class_for(config):
    """The adapter class of a checkpoint's config (its `architectures`); UnsupportedModelError otherwise."""
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    if arch in ADAPTERS:
        ADAPTERS[arch].check_config(config)
        return ADAPTERS[arch]
    hint = NOT_YET.get(arch, f"supported: {', '.join(ADAPTERS)}")
    raise UnsupportedModelError(f"no adapter for {arch}: {hint}")


def adapter_for(config, processor, model=None):
    """The adapter of a model family, chosen by the checkpoint's declared architecture."""
    return adapter_class_for(config)(config, processor, model)
