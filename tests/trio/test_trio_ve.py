"""TRIO-VE's rule (trio/trio_ve.py) against plain step-by-step implementations written from the authors' code
(ocy1/TRIO llava_arch.py: window_cls_selection, encode_images, token_merging): per-window Python loops, per-token
merging, F.cosine_similarity; kept indices identical, merged features equal."""

import numpy as np
import pytest
import torch

from helpers import assert_fixed_shape_ops
from reference import plain_encode, plain_local

from trio_edge.errors import InputError
from trio_edge.trio import trio_ve as ve

# ---- plain references ------------------------------------------------------------------------------------------


def authors_window_selection(attn: torch.Tensor, visual_token_num: int, window_size: int = 6) -> list[list[int]]:
    """window_cls_selection as released (24x24 only, torch.topk per window): for tie-free scores."""
    batch = attn.shape[0]
    grid = attn.view(batch, 24, 24)
    per_window = visual_token_num // ((24 // window_size) ** 2)
    out = []
    for b in range(batch):
        picked = []
        for i in range(24 // window_size):
            for j in range(24 // window_size):
                window = grid[b, i * window_size:(i + 1) * window_size, j * window_size:(j + 1) * window_size]
                for idx in torch.topk(window.reshape(-1), per_window).indices.tolist():
                    dy, dx = divmod(idx, window_size)
                    picked.append((i * window_size + dy) * 24 + j * window_size + dx)
        out.append(picked)
    return out


def attention_like(gen, batch, tokens, levels=None):
    """Positive scores summing to 1 per row; `levels` quantises them so that many tie."""
    raw = torch.rand(batch, tokens, generator=gen)
    if levels:
        raw = torch.floor(raw * levels) + 1.0
    return raw / raw.sum(dim=-1, keepdim=True)


def check_against_plain(side, keep, seed, levels=None, batch=3, dim=24):
    gen = torch.Generator().manual_seed(seed)
    tokens = side * side
    shallow = attention_like(gen, batch, tokens, levels)
    deep = attention_like(gen, batch, tokens, levels)
    features = torch.randn(batch, tokens, dim, generator=gen)
    kept = ve.ve_select(shallow, deep, side, keep)
    merged = ve.merge_into_kept(features, kept)
    want_kept, want_merged = plain_encode(shallow, deep, features, side, keep)
    assert kept.shape == (batch, ve.ve_kept_count(side, keep))
    assert kept.tolist() == want_kept
    for b in range(batch):
        torch.testing.assert_close(merged[b], want_merged[b], rtol=1e-5, atol=1e-5)


# ---- the rule equals the plain implementations ------------------------------------------------------------------


@pytest.mark.parametrize("keep", [96, 64, 128, 192, 100, 31, 576])
def test_authors_grid_equals_plain(keep):
    check_against_plain(24, keep, seed=keep)


@pytest.mark.parametrize("side, keep", [(7, 16), (7, 5), (7, 33), (7, 49), (7, 1), (12, 40), (16, 64), (9, 20)])
def test_other_grids_equal_plain(side, keep):
    check_against_plain(side, keep, seed=side * 100 + keep)


@pytest.mark.parametrize("side, keep", [(24, 96), (7, 16)])
def test_ties_go_to_the_lower_index(side, keep):
    check_against_plain(side, keep, seed=5, levels=3)


def test_local_windows_equal_the_released_window_cls_selection():
    """On tie-free scores our windows are the released window_cls_selection's (torch.topk, 6x6 on 24x24)."""
    gen = torch.Generator().manual_seed(11)
    shallow = attention_like(gen, 2, 576)
    for keep in (64, 96, 128, 192):
        released = authors_window_selection(shallow, int(keep * 0.5))
        ours = [sorted(plain_local(row.tolist(), 24, int(keep * 0.5))) for row in shallow]
        assert [sorted(r) for r in released] == ours
        deep = attention_like(gen, 2, 576)
        kept = ve.ve_select(shallow, deep, 24, keep)
        for b in range(2):
            assert set(released[b]) <= set(kept[b].tolist())


def test_counts_follow_the_released_rounding():
    assert ve.ve_counts(24, 96) == (3, 48, 48)
    assert ve.ve_kept_count(24, 96) == 96
    assert ve.ve_kept_count(24, 100) == 98  # 16 * (50 // 16) local + 50 global
    assert ve.ve_kept_count(24, 16) == 8  # int(16/2) // 16 = 0 per window: only the 8 global tokens
    assert ve.ve_kept_count(24, 576) == 576
    assert ve.ve_kept_count(7, 16) == 16  # one 7x7 window
    assert ve.window_edges(24) == [0, 6, 12, 18, 24]
    assert ve.window_edges(7) == [0, 7]
    assert ve.window_edges(9) == [0, 4, 9]


def test_layers_scale_with_depth():
    assert ve.ve_layers(24) == (5, 22)  # attentions[5], attentions[-2]
    assert ve.ve_layers(3) == (0, 1)
    assert ve.ve_layers(2) == (0, 0)
    assert ve.ve_layers(32) == (6, 30)
    with pytest.raises(InputError, match="L-2"):
        ve.ve_layers(1)


@pytest.mark.parametrize("keep, message", [(0, "between 1 and"), (50, "between 1 and"), (2.5, "whole number"),
                                           (True, "whole number")])
def test_bad_keep_says_what_to_do(keep, message):
    with pytest.raises(InputError, match=message):
        ve.check_ve_keep(keep, 7)


def test_every_grid_window_holds_its_share():
    """k = int(T/2) // n^2 never exceeds the smallest window, on any grid up to LLaVA's 24x24 and beyond."""
    for side in range(1, 49):
        smallest = min(len(w) for w in ve.windows(side))
        assert sum(len(w) for w in ve.windows(side)) == side * side
        assert ve.ve_counts(side, side * side)[0] <= smallest, side


def test_cls_attention_reads_the_cls_row_over_patches_head_mean():
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(2, 4, 10, 10, generator=gen)
    want = torch.stack([torch.stack([probs[b, h, 0, 1:] for h in range(4)]).mean(0) for b in range(2)])
    torch.testing.assert_close(ve.cls_attention(probs[:, :, 0]), want)


# ---- export ------------------------------------------------------------------------------------------------------


class VEGraph(torch.nn.Module):
    def __init__(self, side, keep):
        super().__init__()
        self.side, self.keep = side, keep

    def forward(self, shallow, deep, features):
        kept = ve.ve_select(shallow, deep, self.side, self.keep)
        return kept, ve.merge_into_kept(features, kept)


@pytest.mark.parametrize("side, keep", [(24, 96), (7, 16)])
def test_rule_exports_to_onnx_and_matches(tmp_path, side, keep):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    gen = torch.Generator().manual_seed(4)
    tokens = side * side

    def inputs(levels=None):
        return (attention_like(gen, 2, tokens, levels), attention_like(gen, 2, tokens, levels),
                torch.randn(2, tokens, 16, generator=gen))

    module = VEGraph(side, keep).eval()
    path = tmp_path / "ve.onnx"
    torch.onnx.export(module, inputs(), str(path), dynamo=True, opset_version=18)
    model = onnx.load(str(path))
    assert_fixed_shape_ops(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for levels in (None, 3):  # other data than the traced one, ties included
        example = inputs(levels)
        expected = module(*example)
        got = session.run(None, dict(zip(names, (t.numpy() for t in example))))
        assert got[0].tolist() == expected[0].tolist()
        np.testing.assert_allclose(got[1], expected[1].numpy(), rtol=1e-5, atol=1e-5)


# ---- the plain vision-side reference on a real model -------------------------------------------------------------


def test_reference_keeping_everything_is_transformers_own_features(tiny, images):
    """trio_ve_image_features at T = every patch is exactly LLaVA-NeXT's own packed features (the packing of the
    plain reference is transformers')."""
    from reference import trio_ve_image_features

    adapter = tiny.adapter
    grid = adapter.default_grid()
    pixels = adapter.pixel_values(images[0], grid)
    side = adapter.tile_size // int(adapter.config.vision_config.patch_size)
    with torch.no_grad():
        want = adapter.vision_module(grid)(pixels)
    have, kept = trio_ve_image_features(tiny.model, pixels, grid, side * side)
    assert have.shape == want.shape == (adapter.image_token_count(grid), want.shape[1])
    torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
    reduced, kept = trio_ve_image_features(tiny.model, pixels, grid, 8)
    tiles = adapter.tile_count(grid)
    assert reduced.shape[0] == tiles * 8 + (grid[1] // adapter.tile_size) * side


# ---- schedules: presets, --keep-ratio, --cuts --------------------------------------------------------------------


def llava15_tokens(keep, method):
    return keep  # one tile, no newline


def next_tokens(keep, method):
    return 5 * keep + 14  # trio-tiny: base + 4 tiles of 7x7, 14 newline rows


@pytest.mark.parametrize("name, vision, cut, average", [("trio-ve-64", 96, "16:32", 64),
                                                        ("trio-ve-128", 192, "16:64", 128),
                                                        ("trio-ve-192", 288, "16:96", 192)])
def test_presets_on_the_reference_model(name, vision, cut, average):
    from trio_edge.trio.schedule import resolve_schedule

    schedule = resolve_schedule(preset=name, num_layers=32, num_image_tokens=576, tile_tokens=577,
                                vision_tokens_for=llava15_tokens)
    assert schedule.vision.keep == schedule.vision.tokens == vision
    assert schedule.text() == f"vision:{vision},{cut}" and schedule.provenance["scaled"] is None
    assert schedule.layer_averaged_tokens(32, 576) == average


def test_presets_scale_to_trio_tiny_and_say_so():
    from trio_edge.trio.schedule import resolve_schedule

    schedule = resolve_schedule(preset="trio-ve-64", num_layers=4, num_image_tokens=259, tile_tokens=50,
                                vision_tokens_for=next_tokens)
    assert schedule.text() == "vision:8,2:18"  # 96 * 49/576 = 8.2 -> 8 per tile: 54 tokens, a third of it at 2
    assert "8 of 49" in schedule.provenance["scaled"]


@pytest.mark.parametrize("ratio", [1 / 3, 2 / 9, 1 / 9])
def test_keep_ratio_takes_the_authors_shape(ratio):
    from trio_edge.trio.schedule import resolve_schedule

    schedule = resolve_schedule(method="trio-ve", keep_ratio=ratio, num_layers=4, num_image_tokens=259, tile_tokens=50,
                                vision_tokens_for=next_tokens)
    assert [c.layer for c in schedule.cuts] == [2]
    assert abs(schedule.vision.tokens - 1.5 * ratio * 259) <= 2.5  # 5 tokens per step of T
    assert abs(schedule.layer_averaged_tokens(4, 259) - ratio * 259) <= 0.5


@pytest.mark.parametrize("cuts, message", [("vision:100", "keeps 98 .* pass vision:97 or vision:128"),
                                           ("vision:0", "outside 1..577"), ("vision:577", "between 1 and the 576"),
                                           ("2:40", "pass --preset trio-ve-64"),
                                           ("vision:96,0:200", "within 1..96")])
def test_bad_trio_ve_schedules_say_what_to_do(cuts, message):
    from trio_edge.errors import ScheduleError
    from trio_edge.trio.schedule import resolve_schedule

    with pytest.raises((ScheduleError, InputError), match=message):
        resolve_schedule(method="trio-ve", cuts=cuts, num_layers=32, num_image_tokens=576, tile_tokens=577,
                         vision_tokens_for=llava15_tokens)
