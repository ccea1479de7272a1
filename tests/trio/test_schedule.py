"""TRIO schedules: parsing, validation, layer-averaged budgets, ratio targeting, JSON round trip, errors."""

import json

import pytest

from trio_edge.errors import InputError, ScheduleError
from trio_edge.models.llava import REFERENCE_KEEP_WEIGHTS
from trio_edge.trio.schedule import Cut, Schedule, schedule_for_ratio

LLAVA15 = "1:92,10:54,15:22"


def test_parse():
    s = Schedule.parse(LLAVA15)
    assert s.cuts == (Cut(1, 92), Cut(10, 54), Cut(15, 22))
    assert s.pruning and s.threshold == 0.8 and s.positions == "renumber"
    assert Schedule.parse(" 1:92 , 10:54 ").cuts == (Cut(1, 92), Cut(10, 54))
    for empty in ("", "none", "NONE", "full", None):
        assert Schedule.parse(empty).cuts == () and not Schedule.parse(empty).pruning
    assert Schedule.parse("0:30", positions="original", threshold=0.5) == Schedule((Cut(0, 30),), 0.5, "original")


def test_llava15_budget_is_64_tokens():
    s = Schedule.parse(LLAVA15).validate(32, 576)
    counts = s.tokens_per_layer(32, 576)
    assert counts == [576] + [92] * 9 + [54] * 5 + [22] * 17
    assert s.layer_averaged_tokens(32, 576) == 64.0
    assert round(100 * s.budget_ratio(32, 576), 1) == 11.1
    assert s.describe(32, 576) == "cuts 1:92,10:54,15:22: 64.0 of 576 image tokens layer-averaged (11.1%)"


def test_no_pruning_budget():
    s = Schedule()
    assert s.tokens_per_layer(4, 88) == [88] * 4
    assert s.budget_ratio(4, 88) == 1.0
    assert "none" in s.describe(4, 88)


def test_cut_at_layer_zero():
    s = Schedule.parse("0:20,1:10,2:5").validate(4, 88)
    assert s.tokens_per_layer(4, 88) == [20, 10, 5, 5]
    assert s.layer_averaged_tokens(4, 88) == 10.0


@pytest.mark.parametrize("layers, tokens, cut_layers", [
    (32, 576, (1, 10, 15)), (32, 2880, (1, 10, 15)), (4, 88, (0, 1, 2)), (40, 576, (1, 12, 19)), (28, 1000, (2,)),
])
@pytest.mark.parametrize("ratio", [0.06, 0.111, 0.2, 0.35, 0.5, 0.75, 0.9, 1.0])
def test_schedule_for_ratio_hits_the_ratio_within_one_token(layers, tokens, cut_layers, ratio):
    weights = REFERENCE_KEEP_WEIGHTS[-len(cut_layers):]
    floor = cut_layers[0] / layers + (layers - cut_layers[0]) / (layers * tokens)  # every KEEP = 1
    if ratio < floor:
        with pytest.raises(ScheduleError):
            schedule_for_ratio(ratio, cut_layers, weights, layers, tokens)
        return
    s = schedule_for_ratio(ratio, cut_layers, weights, layers, tokens, positions="original")
    assert [c.layer for c in s.cuts] == list(cut_layers)
    assert s.positions == "original"
    s.validate(layers, tokens)
    keeps = [c.keep for c in s.cuts]
    assert keeps == sorted(keeps, reverse=True)
    average = s.layer_averaged_tokens(layers, tokens)
    assert abs(average - ratio * tokens) <= 1.0, (s.cuts, average, ratio * tokens)


def test_schedule_for_ratio_reproduces_llava15():
    s = schedule_for_ratio(0.111, (1, 10, 15), REFERENCE_KEEP_WEIGHTS, 32, 576)
    assert s.cuts == (Cut(1, 92), Cut(10, 54), Cut(15, 22))


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01])
def test_schedule_for_ratio_rejects_bad_ratios(ratio):
    with pytest.raises(ScheduleError, match="keep-ratio"):
        schedule_for_ratio(ratio, (1, 10, 15), REFERENCE_KEEP_WEIGHTS, 32, 576)


def test_schedule_for_ratio_below_reach():
    # Layers 0..9 see all 576 tokens: at most ratio 10/32 is the floor.
    with pytest.raises(ScheduleError, match=r"below what cuts at layers \[10, 20\] can reach \(0\.312\)"):
        schedule_for_ratio(0.2, (10, 20), (0.2, 0.1), 32, 576)


def test_json_round_trip():
    s = Schedule.parse(LLAVA15, threshold=0.7, positions="original")
    s = Schedule(s.cuts, s.threshold, s.positions, {"source": "test", "ratio": 0.111})
    text = s.to_json()
    body = json.loads(text)
    assert body["format_version"] == 1
    assert body["cuts"] == [{"layer": 1, "keep": 92}, {"layer": 10, "keep": 54}, {"layer": 15, "keep": 22}]
    back = Schedule.from_json(text)
    assert back == s
    assert back.provenance == {"source": "test", "ratio": 0.111}
    assert (back.threshold, back.positions) == (0.7, "original")
    assert Schedule.from_json(Schedule().to_json()) == Schedule()


def test_select_precision_round_trips_and_defaults_to_fp32():
    s = Schedule.parse(LLAVA15, precision="model")
    assert Schedule.from_json(s.to_json()).precision == "model"
    older = json.loads(Schedule.parse(LLAVA15).to_json())
    del older["precision"]  # files written before the field existed
    assert Schedule.from_json(json.dumps(older)).precision == "fp32"
    assert "model's precision" in s.describe(32, 576) and "precision" not in Schedule.parse(LLAVA15).describe(32, 576)
    with pytest.raises(ScheduleError, match="select precision must be one of"):
        Schedule.parse(LLAVA15, precision="fp16")


def test_plan_keeps_select_precision_and_reads_older_manifests(tiny):
    from trio_edge.artifact.plan import PipelinePlan, plan_for

    adapter = tiny.adapter
    plan = plan_for(adapter, Schedule.parse("1:40", precision="model"), grid=adapter.default_grid(),
                    max_text_tokens=16, max_new_tokens=4)
    body = json.loads(json.dumps(plan.to_dict()))
    assert PipelinePlan.from_dict(body).schedule.precision == "model"
    del body["schedule"]["precision"]
    assert PipelinePlan.from_dict(body).schedule.precision == "fp32"


@pytest.mark.parametrize("text, match", [
    ("{", "not a trio-edge schedule file"),
    ('{"format_version": 1}', "not a trio-edge schedule file"),
    ('{"format_version": 99, "cuts": []}', "format_version 99 is not supported"),
    ("[1, 2]", "not a trio-edge schedule file"),
])
def test_json_errors(text, match):
    with pytest.raises(ScheduleError, match=match):
        Schedule.from_json(text)


# ---- error messages --------------------------------------------------------------------------------------
def test_keep_larger_than_image_tokens_names_the_numbers():
    with pytest.raises(ScheduleError) as info:
        Schedule.parse("1:700").validate(32, 576)
    message = str(info.value)
    assert "1:700" in message and "576" in message and "KEEP" in message
    # A later cut may not keep more than the previous one left.
    with pytest.raises(ScheduleError) as info:
        Schedule.parse("1:50,2:60").validate(32, 576)
    assert "2:60" in str(info.value) and "50" in str(info.value)
    with pytest.raises(ScheduleError, match="1:0"):
        Schedule.parse("1:0").validate(32, 576)


@pytest.mark.parametrize("text", ["32:10", "40:10", "-1:5"])
def test_cut_layer_out_of_range(text):
    with pytest.raises(ScheduleError) as info:
        Schedule.parse(text).validate(32, 576)
    message = str(info.value)
    assert text in message and "0..31" in message and "32 decoder layers" in message


@pytest.mark.parametrize("text, layers", [("10:54,1:92", "[10, 1]"), ("1:92,1:54", "[1, 1]")])
def test_non_increasing_layers(text, layers):
    with pytest.raises(ScheduleError, match="strictly increasing") as info:
        Schedule.parse(text)
    assert layers in str(info.value)


@pytest.mark.parametrize("text", ["1-92", "a:b", "1:2:3", "1:", ":5", "1:92,,2:3", "1.5:3", "92"])
def test_malformed_text(text):
    with pytest.raises(ScheduleError) as info:
        Schedule.parse(text)
    message = str(info.value)
    assert "LAYER:KEEP" in message and "bad cut" in message
    assert "\n" not in message


def test_schedule_errors_are_input_errors():
    assert issubclass(ScheduleError, InputError)
    with pytest.raises(ScheduleError, match="positions"):
        Schedule(positions="shifted")
    with pytest.raises(ScheduleError, match="threshold"):
        Schedule(threshold=1.5)


@pytest.mark.parametrize("method, hint", [("sparsevlm", "--budget 64/96/128/192"), ("fastv", "--preset fastv"),
                                          ("random", "--keep-ratio R or --cuts")])
def test_a_named_rule_without_a_budget_is_refused(method, hint):
    """Naming a rule and no budget would run unpruned without a word; only TRIO (the default) does that."""
    from trio_edge.trio.schedule import resolve_schedule

    with pytest.raises(ScheduleError, match=f"--method {method} needs a token budget: pass .*{hint}"):
        resolve_schedule(method=method, num_layers=32, num_image_tokens=576)
    assert resolve_schedule(method="trio", num_layers=32, num_image_tokens=576).cuts == ()
    assert resolve_schedule(method=method, cuts="3:100", num_layers=32, num_image_tokens=576).cuts


def test_keep_ratio_places_a_peer_at_its_authors_layers():
    """--keep-ratio with FastV / DART cuts once at K=2, PyramidDrop at 8/16/24 (32 layers; as trio-eval does),
    not at TRIO's three layers; the random baseline keeps TRIO's."""
    from trio_edge.models.llava import REFERENCE_KEEP_WEIGHTS
    from trio_edge.trio.schedule import resolve_schedule

    def cut_layers(method, ratio):
        schedule = resolve_schedule(method=method, keep_ratio=ratio, num_layers=32, num_image_tokens=576,
                                    default_cut_layers=(1, 10, 15), default_keep_weights=REFERENCE_KEEP_WEIGHTS)
        return [cut.layer for cut in schedule.cuts]

    assert cut_layers("fastv", 0.3) == [2] and cut_layers("dart", 0.25) == [2]
    assert cut_layers("pdrop", 0.4) == [8, 16, 24]
    assert cut_layers("random", 0.3) == cut_layers("trio", 0.3) == [1, 10, 15]
    with pytest.raises(ScheduleError, match="--method pdrop cuts at layers \\[8, 16, 24\\] of 32 here .* more "
                                            "than 0.250 .* raise --keep-ratio above that"):
        cut_layers("pdrop", 0.2)
