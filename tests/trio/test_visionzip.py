"""VisionZip's rule equals a plain step-by-step implementation written from the authors' code
(dvlab-research/VisionZip visionzip/clip_encoder.py, llava_arch.py restore_image_features_sorted): kept tokens
identical, merged features equal; the whole pruned vision module on LLaVA-NeXT tiles too."""

import copy

import pytest
import torch

from trio_edge.trio.vision_stage import vision_rule
from trio_edge.trio.visionzip import VisionZipRule


def reference_tile(hidden, attention, keys, dominant: int, contextual: int):
    """One tile, token by token: hidden (S, D), attention (H, S, S), keys (H, S, dh) -> (tokens, kept)."""
    heads, length = attention.shape[0], hidden.shape[0]
    cls_score = {}
    for j in range(1, length):
        total = 0.0
        for h in range(heads):
            total += float(attention[h, 0, j])
        cls_score[j] = total
    ranked = sorted(cls_score, key=lambda j: cls_score[j], reverse=True)
    chosen = sorted([0] + ranked[:dominant - 1])  # the [CLS] always; masked_select keeps token order
    rest = [j for j in range(length) if j not in chosen]
    metric = {}
    for j in rest:
        mean = sum(keys[h, j].double() for h in range(heads)) / heads
        metric[j] = mean / mean.norm()
    tokens = [hidden[j] for j in chosen]
    kept = list(chosen)
    if contextual:
        step = max(1, len(rest) // contextual)
        targets = [rest[i] for i in range(0, len(rest), step)][:contextual]
        joined = {t: [] for t in targets}
        for j in rest:
            if j in targets:
                continue
            best, best_similarity = None, None
            for t in targets:
                similarity = float(metric[j] @ metric[t])
                if best is None or similarity > best_similarity:  # the first target on ties (argmax)
                    best, best_similarity = t, similarity
            joined[best].append(j)
        for t in targets:
            merged = sum(hidden[j].double() for j in joined[t]) / max(1, len(joined[t])) if joined[t] else 0.0
            tokens.append(hidden[t].double() + merged)
            kept.append(-1)
    return torch.stack([t.double() for t in tokens]), kept


def random_tower_outputs(tiles, length, heads, seed):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tiles, length, 24, generator=generator)
    attention = torch.softmax(torch.randn(tiles, heads, length, length, generator=generator) * 3, dim=-1)
    keys = torch.randn(tiles, heads, length, 8, generator=generator)
    return hidden, attention, keys


@pytest.mark.parametrize("length, dominant, contextual", [(17, 3, 1), (17, 5, 2), (50, 5, 1), (50, 14, 3),
                                                         (50, 9, 2), (17, 1, 4), (17, 17, 0), (17, 6, 11),
                                                         (17, 12, 0)])
def test_rule_equals_step_by_step_reference(length, dominant, contextual):
    hidden, attention, keys = random_tower_outputs(3, length, 4, seed=length * 100 + dominant * 10 + contextual)
    tokens, kept = VisionZipRule(dominant + contextual, dominant)(hidden, (attention,), (keys,))
    assert tokens.shape == (3, dominant + contextual, 24) and kept.dtype == torch.int64
    for tile in range(3):
        want_tokens, want_kept = reference_tile(hidden[tile], attention[tile], keys[tile], dominant, contextual)
        assert kept[tile].tolist() == want_kept
        torch.testing.assert_close(tokens[tile].double(), want_tokens, rtol=1e-5, atol=1e-5)


def reference_next_packing(projected, kept, rows, cols, side, dominant):
    """restore_image_features_sorted + the base tile, as lists: base tile as is; grid tiles' dominant patches
    in raster order of the packed (rows*side, cols*side) grid; each grid tile's [CLS]; their contextual tokens."""
    placed = {}
    for tile in range(rows * cols):
        for slot in range(1, dominant):
            patch = int(kept[tile + 1, slot]) - 1
            r, c = divmod(patch, side)
            placed[((tile // cols) * side + r, (tile % cols) * side + c)] = projected[tile + 1, slot]
    out = list(projected[0])
    for y in range(rows * side):
        for x in range(cols * side):
            if (y, x) in placed:
                out.append(placed[(y, x)])
    out += [projected[tile + 1, 0] for tile in range(rows * cols)]
    out += [projected[tile + 1, s] for tile in range(rows * cols) for s in range(dominant, projected.shape[1])]
    return torch.stack(out)


@pytest.mark.parametrize("cuts", ["vision:5+2", "vision:3+1", "vision:17+0"])
def test_pruned_llava_next_vision_equals_reference(tiny, images, cuts):
    adapter, grid = tiny.adapter, tiny.adapter.default_grid()
    stage = adapter.schedule(grid, method="visionzip", cuts=cuts).vision
    module = adapter.vision_module(grid, vision_rule("visionzip", stage)).eval()
    # the reference reads transformers' own outputs (eager attention returns the probabilities)
    model = copy.deepcopy(tiny.model)
    tower = model.model.vision_tower
    tower.config._attn_implementation = "eager"
    layer = tower.encoder.layers[-2]
    side = adapter.tile_size // tiny.model.config.vision_config.patch_size
    rows, cols = grid[1] // adapter.tile_size, grid[0] // adapter.tile_size
    for image in images[:3]:
        pixels = adapter.pixel_values(image, grid)
        with torch.no_grad():
            features, kept = module(pixels)
            out = tower(pixels, output_hidden_states=True, output_attentions=True)
            keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[-3]))
            keys = keys.view(*keys.shape[:2], -1, layer.self_attn.head_dim).transpose(1, 2)
            per_tile = [reference_tile(out.hidden_states[-2][t], out.attentions[-2][t], keys[t], stage.dominant,
                                       stage.keep - stage.dominant) for t in range(pixels.shape[0])]
            projected = model.model.multi_modal_projector(torch.stack([t for t, _ in per_tile]).float())
        want_kept = torch.tensor([k for _, k in per_tile])
        assert kept.tolist() == want_kept.tolist()
        want = reference_next_packing(projected, want_kept, rows, cols, side, stage.dominant)
        assert features.shape == (stage.tokens, projected.shape[-1]) == want.shape
        torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # ~30 s: 577 tokens through the token-by-token reference
def test_llava_15_at_the_authors_numbers_equals_reference(images, tmp_path):
    """LLaVA-1.5's real tower geometry (336 px, 576 patches + [CLS]; random weights, scaled widths): the preset
    visionzip-64 is the authors' 54+10 itself, and the vision graph's module equals the reference + projector."""
    from trio_edge.models.random_weights import build_random
    from trio_edge.models.registry import load

    loaded = load(str(build_random("llava-1.5-7b", tmp_path / "model", dtype=torch.float32, scale=0.03, layers=1,
                                   vision_layers=3)))
    adapter, grid = loaded.adapter, loaded.adapter.default_grid()
    schedule = adapter.schedule(grid, preset="visionzip-64")
    assert (schedule.vision.dominant, schedule.vision.keep, schedule.vision.tokens) == (54, 64, 64)
    module = adapter.vision_module(grid, vision_rule("visionzip", schedule.vision)).eval()
    tower = copy.deepcopy(loaded.model.model.vision_tower)
    tower.config._attn_implementation = "eager"
    layer = tower.encoder.layers[-2]
    pixels = adapter.pixel_values(images[1], grid)
    with torch.no_grad():
        features, kept = module(pixels)
        out = tower(pixels, output_hidden_states=True, output_attentions=True)
        keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[-3]))
        keys = keys.view(*keys.shape[:2], -1, layer.self_attn.head_dim).transpose(1, 2)
        tokens, want_kept = reference_tile(out.hidden_states[-2][0], out.attentions[-2][0], keys[0], 54, 10)
        want = loaded.model.model.multi_modal_projector(tokens.float())
    assert kept.tolist() == [want_kept] and want_kept[0] == 0 and want_kept[54:] == [-1] * 10
    torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-5)
