"""The real architectures of the aliases (random weights of their configs, scaled down): LLaVA-NeXT with
a Vicuna (Llama) decoder, with a Mistral decoder (grouped-query), and LLaVA-1.5 (one tile). Each runs
unpruned equal to transformers' generate, and pruned through validated ONNX graphs equal to PyTorch.

The real 336-pixel tiles and anyres grid, cut into 24-pixel patches instead of 14: 1,008 image tokens on
LLaVA-NeXT's 672x672 grid instead of 2,928, still over two NMS blocks, so the first select graph unrolls 3 blocks of
Cluster-NMS instead of 8 (their export was most of this test's time). The real token count runs in
tests/benchmarks/test_llava_next_7b_bench.py."""

from __future__ import annotations

import pytest
import torch

from trio_edge import load as load_export
from trio_edge.exporters.export import export
from trio_edge.models.random_weights import build_random
from trio_edge.models.registry import load
from trio_edge.runtime.open import open_model
from trio_edge.trio.schedule import Schedule
from trio_edge.trio.selection import NMS_BLOCK

PROMPT = "what color is the circle?"
PATCH = 24


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["llava-next-7b", "llava-next-mistral-7b", "llava-1.5-7b"])
def test_architecture_matches_transformers_and_its_onnx_export(alias, images, tmp_path):
    source = build_random(alias, tmp_path / "model", dtype=torch.float32, scale=0.03, layers=2, vision_layers=1,
                          patch_size=PATCH)
    loaded = load(str(source))
    adapter, image = loaded.adapter, images[0]
    if adapter.family == "llava-next":  # anyres tiles + newlines: the blocked Cluster-NMS runs several blocks
        assert adapter.image_token_count(adapter.default_grid()) == 1008 > 2 * NMS_BLOCK
    inputs = adapter.hf_inputs(image, PROMPT, adapter.default_grid())
    with torch.no_grad():
        out = loaded.model.generate(**inputs, do_sample=False, max_new_tokens=4, output_logits=True,
                                    return_dict_in_generate=True)
    full = open_model(loaded, Schedule(), max_text_tokens=64, max_new_tokens=4).generate(image, PROMPT)
    assert full.token_ids == out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    torch.testing.assert_close(full.first_logits[0], out.logits[0][0], rtol=1e-4, atol=1e-4)

    schedule = adapter.schedule(adapter.default_grid(), keep_ratio=0.3)
    cuts = ",".join(f"{cut.layer}:{cut.keep}" for cut in schedule.cuts)
    pruned = open_model(loaded, schedule, max_text_tokens=64, max_new_tokens=4).generate(image, PROMPT)
    export(str(source), tmp_path / "export", loaded=loaded, cuts=cuts, max_text_tokens=64, max_new_tokens=4,
           progress=False)  # validates every graph against its PyTorch module
    graphs = load_export(tmp_path / "export").generate(image, PROMPT)
    assert len(pruned.kept) == len(schedule.cuts) and graphs.kept == pruned.kept
    assert graphs.token_ids == pruned.token_ids


def test_a_patch_size_that_does_not_divide_the_tile_is_refused():
    from trio_edge.errors import InputError
    from trio_edge.models.random_weights import architecture

    with pytest.raises(InputError, match="patch_size must divide the tile size 336, got 25"):
        architecture("llava-next-7b", patch_size=25)
