"""The vision-stage infrastructure: what a vision-tower rule reads equals CLIP's own outputs, and a plan with a
vision stage carries the reduced image-token count through prompt ids, graphs, manifest and pipeline."""

import copy

import pytest
import torch
from helpers import make_pipeline

from trio_edge.artifact.graphs import VISION_KEPT, graph_specs
from trio_edge.artifact.plan import PipelinePlan, plan_for
from trio_edge.errors import ScheduleError
from trio_edge.models.vision_tower import tower_signals
from trio_edge.trio.schedule import Schedule


def test_tower_signals_equal_clip_eager_outputs(tiny):
    model = copy.deepcopy(tiny.model)
    tower = model.model.vision_tower
    tower.config._attn_implementation = "eager"  # the copy's only: returns attention probabilities
    pixels = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = tower(pixels, output_hidden_states=True, output_attentions=True)
        features, attentions, keys = tower_signals(tower, pixels, -2, (-2, 0), (-2,))
        layer = tower.encoder.layers[-2]
        expected_keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[-3]))  # layer -2's input
    torch.testing.assert_close(features, out.hidden_states[-2], rtol=0, atol=0)
    torch.testing.assert_close(attentions[0], out.attentions[-2], rtol=0, atol=0)
    torch.testing.assert_close(attentions[1], out.attentions[0], rtol=0, atol=0)
    heads = keys[0].shape[1]
    torch.testing.assert_close(keys[0], expected_keys.view(3, 17, heads, -1).transpose(1, 2), rtol=1e-6, atol=1e-6)


def test_vision_stage_reduces_the_image_tokens_everywhere(tiny):
    adapter, grid = tiny.adapter, tiny.adapter.default_grid()
    schedule = adapter.schedule(grid, method="visionzip", cuts="vision:5+2")
    tiles = adapter.tile_count(grid)
    assert (schedule.vision.keep, schedule.vision.dominant, schedule.vision.tokens) == (7, 5, 7 * tiles)
    assert Schedule.from_json(schedule.to_json()) == schedule and Schedule.parse(schedule.text()).vision.keep == 7
    plan = plan_for(adapter, schedule, grid=grid, method="visionzip")
    assert (plan.num_image_tokens, plan.full_image_tokens) == (7 * tiles, adapter.image_token_count(grid))
    assert PipelinePlan.from_dict(plan.to_dict()) == plan
    assert plan.segments[0].image_tokens == 7 * tiles and "35 image tokens" in plan.describe()
    vision = graph_specs(plan, tile_count=tiles, pixel_shape=adapter.pixel_shape(grid), dtype="float32")["vision"]
    assert [(t.name, t.shape) for t in vision.outputs] == [("image_features", (7 * tiles, plan.hidden_size)),
                                                           (VISION_KEPT, (tiles, 7))]
    ids = adapter.prompt_ids("what colour?", plan.num_image_tokens)
    assert int((ids == adapter.image_token_id).sum()) == 7 * tiles
    result = make_pipeline(tiny, schedule, method="visionzip").generate(tiny_image(), "what colour?", max_new_tokens=2)
    assert len(result.vision_kept) == tiles and all(row[0] == 0 and row[-2:] == [-1, -1] for row in result.vision_kept)
    assert result.prompt_tokens == ids.shape[1]


def tiny_image():
    from helpers import random_image

    return random_image(90, 70, seed=5)


@pytest.mark.parametrize("options, message", [
    ({"method": "visionzip", "cuts": "vision:18"}, "vision keep 18 per tile is outside 1..17"),
    ({"method": "visionzip", "cuts": "vision:0+3"}, "at least one dominant token"),
    ({"method": "visionzip", "cuts": "vision:five"}, "bad vision stage 'vision:five'"),
    ({"method": "visionzip", "cuts": "vision:6,2:3"}, "has no decoder cuts"),
    ({"method": "visionzip"}, "prunes inside the vision tower: pass --preset"),
    ({"method": "trio", "cuts": "vision:6"}, "needs a method that acts there"),
    ({"preset": "visionzip-32"}, "unknown preset 'visionzip-32'"),
])
def test_bad_vision_stage_is_refused(tiny, options, message):
    with pytest.raises(ScheduleError, match=message.replace("(", r"\(").replace("+", r"\+")):
        tiny.adapter.schedule(tiny.adapter.default_grid(), **options)


def test_vision_method_needs_a_cls_token(tiny):
    config = copy.deepcopy(tiny.model.config)
    config.vision_config.model_type = "siglip_vision_model"  # a tower without [CLS]
    adapter = type(tiny.adapter)(config, tiny.processor)
    with pytest.raises(ScheduleError, match=r"has no \[CLS\] token"):
        adapter.schedule(adapter.default_grid(), preset="visionzip-64")
