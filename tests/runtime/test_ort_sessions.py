"""ONNX Runtime session settings and the optimized-graph cache: a second load opens the cached optimized graphs
and generates exactly what an uncached load does."""

import pytest

from trio_edge.errors import InputError
from trio_edge.runtime.backends.ort_sessions import SESSION_SETTINGS
from trio_edge.runtime.open import open_export, open_pipeline


def test_second_load_hits_the_cache_and_answers_the_same(one_cut_dir, image, monkeypatch, tmp_path):
    monkeypatch.setenv("TRIO_EDGE_CACHE", str(tmp_path / "cache"))
    answers, states = [], []
    for cache in (False, True, True):
        with open_export(one_cut_dir, ort_cache=cache) as pipeline:
            states.append(set(pipeline.backend.cache.values()))
            result = pipeline.generate(image, "what color is the circle", max_new_tokens=6)
            answers.append((result.token_ids, result.kept, result.first_logits))
            assert pipeline.backend.settings["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert states == [{"off"}, {"miss"}, {"hit"}]
    cached = list((tmp_path / "cache" / "ort").iterdir())
    assert len(cached) == len(pipeline.plan.segments) + len(pipeline.plan.selects) + 2  # + vision, embed
    assert not [p for p in cached if p.name.startswith(".partial-")]
    for tokens, kept, logits in answers[1:]:
        assert tokens == answers[0][0] and kept == answers[0][1]
        assert (logits - answers[0][2]).abs().max() < 1e-4


def test_settings_are_recorded():
    assert SESSION_SETTINGS["enable_mem_pattern"] and SESSION_SETTINGS["session.disable_prepacking"] == "0"


def test_low_memory_turns_the_arena_off_and_answers_the_same(one_cut_dir, image):
    answers = []
    for low_memory in (False, True):
        with open_export(one_cut_dir, ort_cache=False, low_memory=low_memory) as pipeline:
            opened_at_load = set(pipeline.backend.sessions)
            for _ in range(1 + low_memory):  # a second request reopens the graphs closed after the first
                result = pipeline.generate(image, "what color is the circle", max_new_tokens=6)
                answers.append((result.token_ids, result.kept, result.first_logits))
            options = [s.get_session_options() for s in pipeline.backend.sessions.values()]
            assert {o.enable_cpu_mem_arena for o in options} == {not low_memory}
            assert {o.enable_mem_pattern for o in options} == {not low_memory}
            assert {o.get_session_config_entry("session.disable_prepacking") for o in options} == {str(int(low_memory))}
            assert pipeline.backend.settings["enable_cpu_mem_arena"] is (not low_memory)
            kinds = {pipeline.backend.specs[name].kind.value for name in pipeline.backend.sessions}
            if low_memory:  # graphs open at first use; vision and select stages close after their run
                assert not opened_at_load and kinds == {"embed", "segment"}
            else:
                assert opened_at_load == set(pipeline.backend.specs) and "select" in kinds
    for answer in answers[1:]:
        assert answer[:2] == answers[0][:2]
        assert (answer[2] - answers[0][2]).abs().max() < 1e-5


def test_low_memory_on_a_model_or_another_backend_is_refused(one_cut_dir, tiny_model_dir):
    with pytest.raises(InputError, match="low_memory"):
        open_pipeline(tiny_model_dir, low_memory=True)
    with pytest.raises(InputError, match="onnxruntime backend only"):
        open_export(one_cut_dir, backend="torch", low_memory=True)
