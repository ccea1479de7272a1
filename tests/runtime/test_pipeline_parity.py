"""The torch-backend pipeline against transformers' generate (no pruning) and against the independent
slow reference of the pruned model in tests/reference.py (pruning on)."""

import warnings

import pytest
import torch
from helpers import PROMPTS, generate_with_logits, make_pipeline
from reference import reference_generate

from trio_edge.trio.schedule import Schedule

MAX_NEW = 12
TOL = 1e-5


@pytest.fixture(scope="module", params=["runtime_form", "export_form"])
def full_pipeline(tiny, request):
    return make_pipeline(tiny, Schedule(), runtime_form=request.param == "runtime_form")


def pairs(images, count):
    return [(images[i % len(images)], PROMPTS[i % len(PROMPTS)]) for i in range(count)]


# ---- (a) pruning off: identical to transformers' generate --------------------------------------------------
@pytest.mark.parametrize("index", range(5))
def test_unpruned_matches_hf_generate(tiny, images, full_pipeline, index):
    image, prompt = pairs(images, 5)[index]
    adapter = tiny.adapter
    inputs = adapter.hf_inputs(image, prompt, adapter.default_grid())
    with torch.no_grad():
        out = tiny.model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW, output_logits=True,
                                  return_dict_in_generate=True)
    expected = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    result, logits = generate_with_logits(full_pipeline, image, prompt, max_new_tokens=MAX_NEW)
    assert result.token_ids == expected
    assert result.prompt_tokens == inputs["input_ids"].shape[1]
    assert result.kept == []
    torch.testing.assert_close(result.first_logits[0], out.logits[0][0], rtol=TOL, atol=TOL)
    assert len(logits) == len(expected)
    for step, (ours, theirs) in enumerate(zip(logits, out.logits)):
        torch.testing.assert_close(ours, theirs[0], rtol=TOL, atol=TOL, msg=lambda m: f"step {step}: {m}")


# ---- (b) pruning on: identical to the independent reference ------------------------------------------------
SCHEDULES = ["1:40", "0:30,2:12", "0:20,1:10,2:5"]


@pytest.fixture(scope="module")
def pruned_pipelines(tiny):
    return {(text, positions): make_pipeline(tiny, Schedule.parse(text, positions=positions))
            for text in SCHEDULES for positions in ("renumber", "original")}


@pytest.mark.parametrize("positions", ["renumber", "original"])
@pytest.mark.parametrize("schedule_text", SCHEDULES)
@pytest.mark.parametrize("index", range(2))
def test_pruned_matches_reference(tiny, images, pruned_pipelines, schedule_text, positions, index):
    image, prompt = pairs(images, 6)[index * 3 + 1]
    schedule = Schedule.parse(schedule_text, positions=positions)
    adapter = tiny.adapter
    pipe = pruned_pipelines[schedule_text, positions]
    result, logits = generate_with_logits(pipe, image, prompt, max_new_tokens=MAX_NEW)
    ref = reference_generate(tiny.model, adapter.hf_inputs(image, prompt, adapter.default_grid()), schedule,
                             MAX_NEW, adapter.stop_token_ids())
    assert result.kept == ref.kept
    assert [len(k) for k in result.kept] == [c.keep for c in schedule.cuts]
    for kept in result.kept:
        assert kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < pipe.plan.num_image_tokens
    # Later cuts keep a subset of the earlier cut's tokens.
    for earlier, later in zip(result.kept, result.kept[1:]):
        assert set(later) <= set(earlier)
    assert result.token_ids == ref.token_ids
    assert len(logits) == len(ref.logits) == len(result.token_ids)
    for step, (ours, theirs) in enumerate(zip(logits, ref.logits)):
        torch.testing.assert_close(ours, theirs, rtol=TOL, atol=TOL, msg=lambda m: f"step {step}: {m}")
    torch.testing.assert_close(result.first_logits[0], ref.logits[0], rtol=TOL, atol=TOL)


def test_reference_is_discriminative(tiny, images):
    """Pruning changes the logits, and renumbered/original positions differ at decode: the parity above
    would catch a pipeline that ignored the cut or used the wrong positions."""
    adapter = tiny.adapter
    inputs = adapter.hf_inputs(images[1], PROMPTS[1], adapter.default_grid())
    full = reference_generate(tiny.model, inputs, Schedule(), 3)
    renumber = reference_generate(tiny.model, inputs, Schedule.parse("1:40", positions="renumber"), 3)
    original = reference_generate(tiny.model, inputs, Schedule.parse("1:40", positions="original"), 3)
    assert float((full.logits[0] - renumber.logits[0]).abs().max()) > 100 * TOL
    assert float((renumber.logits[0] - original.logits[0]).abs().max()) > 100 * TOL
    # pipeline without pruning == reference without pruning
    result, logits = generate_with_logits(make_pipeline(tiny, Schedule()), images[1], PROMPTS[1], max_new_tokens=3)
    assert result.token_ids == full.token_ids[: len(result.token_ids)]
    torch.testing.assert_close(logits[0], full.logits[0], rtol=TOL, atol=TOL)


# ---- (c) sampling and stop tokens --------------------------------------------------------------------------
def test_sampling_is_reproducible_with_a_seed(tiny, images, full_pipeline):
    image, prompt = images[2], PROMPTS[2]
    run = lambda seed: full_pipeline.generate(image, prompt, max_new_tokens=MAX_NEW, temperature=1.5,  # noqa: E731
                                              top_p=0.95, seed=seed).token_ids
    first = run(7)
    assert run(7) == first
    assert len(first) >= 1
    # Some other seed samples something else (the tiny model's distribution is far from one-hot at T=1.5).
    others = [run(seed) for seed in (8, 9, 10)]
    assert any(other != first for other in others)
    greedy = full_pipeline.generate(image, prompt, max_new_tokens=MAX_NEW).token_ids
    assert full_pipeline.generate(image, prompt, max_new_tokens=MAX_NEW, seed=123).token_ids == greedy


@pytest.mark.parametrize("schedule_text", ["", "0:30,2:12"])
def test_stop_token_ends_generation(tiny, images, schedule_text):
    free = make_pipeline(tiny, schedule_text, stop_token_ids=[])
    # Find a prompt whose greedy output first emits some token at a later step (so generation must stop
    # early, not at step 0).
    for index in range(12):
        image, prompt = images[index % len(images)], PROMPTS[index % len(PROMPTS)]
        greedy = free.generate(image, prompt, max_new_tokens=MAX_NEW).token_ids
        assert len(greedy) == MAX_NEW
        first_seen = {}
        for step, token in enumerate(greedy):
            first_seen.setdefault(token, step)
        later = sorted((step, token) for token, step in first_seen.items() if step >= 1)
        if later:
            break
    else:
        pytest.fail("no image/prompt pair found whose greedy output changes token")
    step, stop = later[0]
    stopping = make_pipeline(tiny, schedule_text, stop_token_ids=[stop])
    result = stopping.generate(image, prompt, max_new_tokens=MAX_NEW)
    assert result.token_ids == greedy[: step + 1]
    assert result.token_ids[-1] == stop
    assert result.text == stopping.decode_text(greedy[:step])
    # max_new_tokens bounds the output too.
    assert len(free.generate(image, prompt, max_new_tokens=3).token_ids) == 3


@pytest.mark.parametrize("threshold", [0.8, 0.3])
def test_unconverged_nms_falls_back_to_exact_selection(tiny, images, threshold):
    """With one Cluster-NMS iteration the graph does not converge here; the pipeline warns and still
    selects exactly what the reference selects. The torch runtime's own form iterates to the fixed point
    instead: no fallback, same selection."""
    schedule = Schedule.parse("0:30,2:12", threshold=threshold)
    pipe = make_pipeline(tiny, schedule, nms_iterations=1, runtime_form=False)  # the exported graphs' form
    adapter = tiny.adapter
    with pytest.warns(RuntimeWarning, match="Cluster-NMS"):
        result, logits = generate_with_logits(pipe, images[0], PROMPTS[0], max_new_tokens=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime_result = make_pipeline(tiny, schedule, nms_iterations=1).generate(images[0], PROMPTS[0],
                                                                                 max_new_tokens=4)
    assert runtime_result.kept == result.kept and runtime_result.token_ids == result.token_ids
    ref = reference_generate(tiny.model, adapter.hf_inputs(images[0], PROMPTS[0], adapter.default_grid()), schedule,
                             4, adapter.stop_token_ids())
    assert result.kept == ref.kept
    assert result.token_ids == ref.token_ids
    for ours, theirs in zip(logits, ref.logits):
        torch.testing.assert_close(ours, theirs, rtol=TOL, atol=TOL)


def test_decode_step_moves_its_small_inputs_in_one_copy(tiny, images):
    """Token id, positions and past lengths of a decode step come from one tensor copied once, before the
    step's first graph: on a GPU a copy from host memory waits for the device, so one copy per segment
    would stall it between segments."""
    pipe = make_pipeline(tiny, "0:30,2:12")
    storages = []
    original = pipe.backend.run_impl

    def recording(graph, inputs):
        ids = inputs.get("input_ids", inputs.get("position_ids"))
        if ids is not None and ids.shape[1] == 1:  # decode calls only
            storages.append({name: inputs[name].untyped_storage().data_ptr() for name in
                             ("input_ids", "position_ids", "past_length") if name in inputs})
        return original(graph, inputs)

    pipe.backend.run_impl = recording
    result = pipe.generate(images[0], PROMPTS[0], max_new_tokens=4)
    calls_per_step = 1 + len(pipe.plan.segments)
    assert len(storages) == (len(result.token_ids) - 1) * calls_per_step
    for start in range(0, len(storages), calls_per_step):
        step = storages[start:start + calls_per_step]
        assert len({ptr for call in step for ptr in call.values()}) == 1
