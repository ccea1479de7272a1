"""The published peers (FastV, DART own decoder layer N-1; PyramidDrop scores with layer N like TRIO):
the plan's graphs, the torch pipeline against the independent reference (tests/reference.py, transformers'
own layers and a plain head-by-head attention), exact kept indices, and the fixed-shape top-k."""

import pytest
import torch
from helpers import PROMPTS, generate_with_logits, make_pipeline
from reference import reference_generate

from trio_edge.artifact.plan import plan_for
from trio_edge.errors import ScheduleError
from trio_edge.trio.methods import METHODS, REGISTRY, check_cuts, method_info
from trio_edge.trio.schedule import Schedule
from trio_edge.trio.selection import top_k_fixed

TOL = 1e-5
MAX_NEW = 6


def test_registry_says_where_each_method_acts():
    assert set(METHODS) == set(REGISTRY)
    assert method_info("fastv").owns_layer and method_info("fastv").positions == "original"
    assert not method_info("trio").owns_layer and method_info("trio").positions == "renumber"
    with pytest.raises(ScheduleError, match="unknown selection method"):
        method_info("fastvv")


def test_owned_cut_plan_splits_off_the_owned_layer(tiny):
    adapter = tiny.adapter
    m = adapter.image_token_count(adapter.default_grid())
    plan = plan_for(adapter, Schedule.parse("1:60,3:20"), grid=adapter.default_grid(), method="fastv")
    assert [(s.start, s.end, s.image_tokens) for s in plan.segments] == [(0, 1, m), (1, 2, 60), (2, 3, 60),
                                                                         (3, 4, 20)]
    assert [s.owned_segment for s in plan.selects] == ["segment_00_01", "segment_02_03"]
    # prefill: each select replaces the segment it owns; decode runs every segment
    assert [s.name for s in plan.stages()] == ["select_0_layer01", "segment_01_02", "select_1_layer03",
                                               "segment_03_04"]
    trio_plan = plan_for(adapter, Schedule.parse("1:60,3:20"), grid=adapter.default_grid())
    assert [(s.start, s.end) for s in trio_plan.segments] == [(0, 1), (1, 3), (3, 4)]
    with pytest.raises(ScheduleError, match="N must be at least 1"):
        plan_for(adapter, Schedule.parse("0:40"), grid=adapter.default_grid(), method="fastv")


def test_keeping_every_token_equals_the_unpruned_model(tiny, images):
    """The owned layer inside the select (prefill) and in its one-layer segment (decode) is the model's layer."""
    m = tiny.adapter.image_token_count(tiny.adapter.default_grid())
    full = make_pipeline(tiny, Schedule())
    for form in (True, False):
        owned = make_pipeline(tiny, Schedule.parse(f"2:{m}", positions="original"), method="fastv", runtime_form=form)
        want, want_logits = generate_with_logits(full, images[1], PROMPTS[0], max_new_tokens=MAX_NEW)
        have, have_logits = generate_with_logits(owned, images[1], PROMPTS[0], max_new_tokens=MAX_NEW)
        assert have.token_ids == want.token_ids and have.kept == [list(range(m))]
        for ours, theirs in zip(have_logits, want_logits):
            torch.testing.assert_close(ours, theirs, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("method, schedule_text", [("fastv", "2:40"), ("fastv", "1:60,3:20"), ("dart", "2:36"),
                                                   ("dart", "2:41"), ("dart", "1:60,3:9"),
                                                   ("pdrop", "1:44,2:22,3:11")])
@pytest.mark.parametrize("positions", ["original", "renumber"])
def test_peer_matches_the_authors_rule_step_by_step(tiny, images, method, schedule_text, positions):
    adapter = tiny.adapter
    schedule = Schedule.parse(schedule_text, positions=positions)
    pipe = make_pipeline(tiny, schedule, method=method)
    for index in (0, 3):
        image, prompt = images[index], PROMPTS[index % len(PROMPTS)]
        result, logits = generate_with_logits(pipe, image, prompt, max_new_tokens=MAX_NEW)
        ref = reference_generate(tiny.model, adapter.hf_inputs(image, prompt, adapter.default_grid()), schedule,
                                 MAX_NEW, adapter.stop_token_ids(), method=method)
        assert result.kept == ref.kept
        assert result.token_ids == ref.token_ids
        for ours, theirs in zip(logits, ref.logits):
            torch.testing.assert_close(ours, theirs, rtol=TOL, atol=TOL)


def test_top_k_fixed_equals_a_stable_descending_sort():
    generator = torch.Generator().manual_seed(0)
    for trial in range(50):
        scores = torch.randint(0, 6, (40,), generator=generator).float()  # many ties
        keep = 1 + trial % 40
        expected = sorted(sorted(range(40), key=lambda i: (-float(scores[i]), i))[:keep])
        assert top_k_fixed(scores, keep).tolist() == expected


def test_dart_visits_pivots_in_python_set_order():
    import random

    from trio_edge.trio.dart import set_iteration_order

    rng = random.Random(0)
    for _ in range(300):
        start, m = rng.choice([(3, 88), (35, 576), (10, 2880), (700, 2880)])
        keys = rng.sample(range(start, start + m), 4) + rng.sample(range(start + m, start + m + 60), 4)
        assert [keys[i] for i in set_iteration_order(torch.tensor(keys)).tolist()] == list(set(keys))


def test_dart_budget_split():
    from trio_edge.trio.dart import picks_per_pivot

    assert picks_per_pivot(4 + 8 * 16) == [16] * 8  # the released code's "128": 132 kept
    assert picks_per_pivot(64) == [8, 8, 8, 8, 7, 7, 7, 7] and sum(picks_per_pivot(64)) == 60
    with pytest.raises(ScheduleError, match="at least 4"):
        check_cuts("dart", [(2, 3)])
