"""Benchmarks write their JSON through one function."""

import json

from trio_edge.runtime.bench import write_results


def test_write_results_makes_folders_and_writes_nothing_without_a_path(tmp_path):
    target = tmp_path / "results" / "nested" / "run.json"
    write_results(target, {"ratio": 1.5, "runs": {"a": [1, 2]}})
    assert json.loads(target.read_text()) == {"ratio": 1.5, "runs": {"a": [1, 2]}}
    write_results(None, {"ratio": 2.0})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["nested", "results", "run.json"]
