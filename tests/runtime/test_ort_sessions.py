"""ONNX Runtime session settings and the optimized-graph cache: a second load opens the cached optimized graphs
and generates exactly what an uncached load does."""

import os
import time

import pytest

from trio_edge.errors import InputError
from trio_edge.runtime.backends.ort_sessions import CACHE_LIMIT_ENV, SESSION_SETTINGS, evict
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


def test_low_memory_runs_a_freshly_optimized_graph_from_the_cache(one_cut_dir, image, monkeypatch, tmp_path):
    """On a cache miss a low-memory load closes the session it optimized and opens the cached graph, so the weights
    ONNX Runtime made while optimizing are mapped from the cache's file; the default mode keeps its session."""
    monkeypatch.setenv("TRIO_EDGE_CACHE", str(tmp_path / "cache"))
    answers = []
    for low_memory in (True, False):
        with open_export(one_cut_dir, low_memory=low_memory) as pipeline:
            result = pipeline.generate(image, "what color is the circle", max_new_tokens=6)
            answers.append((result.token_ids, result.kept))
            backend = pipeline.backend
            # each mode has its own cache entries (settings differ); low memory reopens graphs within a request
            assert set(backend.cache.values()) == ({"miss", "hit"} if low_memory else {"miss"})
            for name, session in backend.sessions.items():
                from_cache = session._model_path is not None and "/ort/" in session._model_path
                assert from_cache is low_memory, (name, session._model_path)
    assert answers[0] == answers[1]


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
            assert {o.get_session_config_entry("session.intra_op.spin_duration_us") for o in options} == {"200"}
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


def _fake_entry(root, name, size, age_s):
    entry = root / name
    entry.mkdir(parents=True)
    (entry / "model.onnx.data").write_bytes(b"\0" * size)
    when = time.time() - age_s
    os.utime(entry, (when, when))
    return entry


def test_cache_evicts_least_recently_used_and_rebuilds_a_damaged_entry(one_cut_dir, image, monkeypatch, tmp_path):
    monkeypatch.setenv("TRIO_EDGE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "ort"
    oldest = _fake_entry(root, "oldest", 3 << 20, age_s=7200)
    older = _fake_entry(root, "older", 3 << 20, age_s=3600)
    recent = _fake_entry(root, "recent", 3 << 20, age_s=10)  # maybe in use by another process: kept
    with open_export(one_cut_dir, ort_cache=True) as pipeline:  # fills the cache: every graph a miss
        assert set(pipeline.backend.cache.values()) == {"miss"}
        expected = pipeline.generate(image, "what color is the circle", max_new_tokens=6).token_ids
    new = set(root.iterdir()) - {oldest, older, recent}  # the default 20 GiB limit removed nothing
    new_bytes = sum(f.stat().st_size for entry in new for f in entry.iterdir())
    limit = new_bytes + (7 << 20)  # room for the new entries and two old ones: the oldest goes
    assert evict(root, limit, keep=next(iter(new))) == [oldest]
    assert older.exists() and recent.exists() and all(entry.exists() for entry in new)

    monkeypatch.setenv(CACHE_LIMIT_ENV, "0")  # the next miss trims the cache to what was used in the last minute
    damaged = next(iter(new)) / "model.onnx"
    damaged.write_bytes(b"not an onnx model")
    with open_export(one_cut_dir, ort_cache=True) as pipeline:  # the damaged graph is rebuilt: one miss
        assert sorted(pipeline.backend.cache.values()).count("miss") == 1
        assert pipeline.generate(image, "what color is the circle", max_new_tokens=6).token_ids == expected
    assert damaged.read_bytes() != b"not an onnx model"
    assert not older.exists() and recent.exists() and all(entry.exists() for entry in new)


def test_eviction_spares_the_graphs_of_the_export_being_loaded(tmp_path):
    """A large export's request opens its graphs over minutes: entries of that export are never evicted for its own
    next entry, even when the export alone is over the limit (its next load must find every graph)."""
    root = tmp_path / "ort"
    ours = [_fake_entry(root, f"aaaaaaaaaaaa-{i:032x}", 2 << 20, age_s=600 + i) for i in range(3)]
    theirs = _fake_entry(root, "bbbbbbbbbbbb-" + "0" * 32, 2 << 20, age_s=60_000)
    assert evict(root, 1 << 20, keep=ours[-1]) == [theirs]
    assert all(entry.exists() for entry in ours)


@pytest.mark.parametrize("value", ["lots", "-1", "nan"])
def test_a_bad_cache_limit_is_refused_before_loading(one_cut_dir, monkeypatch, value):
    monkeypatch.setenv(CACHE_LIMIT_ENV, value)
    with pytest.raises(InputError, match=CACHE_LIMIT_ENV):
        open_export(one_cut_dir, ort_cache=True)


def test_a_graph_that_fails_to_load_leaves_no_partial_cache_entry(tmp_path):
    """A miss whose graph cannot be opened raises ONNX Runtime's error and removes its staging directory, which
    eviction would otherwise never count or remove."""
    import onnxruntime as ort

    from trio_edge.runtime.backends.ort_sessions import open_session

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    cache = tmp_path / "cache"
    with pytest.raises(Exception, match="(?i)protobuf|parse|load"):
        open_session(ort, broken, ort.SessionOptions(), ["CPUExecutionProvider"], (), cache / "entry")
    assert list(cache.iterdir()) == []
