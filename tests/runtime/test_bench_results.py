"""Benchmarks write their JSON through one function."""

import json

from trio_edge.runtime.bench import write_results


def test_write_results_makes_folders_and_writes_nothing_without_a_path(tmp_path):
    target = tmp_path / "results" / "nested" / "run.json"
    write_results(target, {"ratio": 1.5, "runs": {"a": [1, 2]}})
    assert json.loads(target.read_text()) == {"ratio": 1.5, "runs": {"a": [1, 2]}}
    write_results(None, {"ratio": 2.0})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["nested", "results", "run.json"]


def test_interleaved_rounds_call_every_runner_once_per_round_in_rotating_order():
    from trio_edge.runtime.bench import interleaved_rounds

    calls = []
    runners = {name: (lambda name=name: calls.append(name) or f"{name}{len(calls)}") for name in "abc"}
    results = interleaved_rounds(runners, rounds=3, progress=False)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert results == {"a": ["a1", "a6", "a8"], "b": ["b2", "b4", "b9"], "c": ["c3", "c5", "c7"]}
