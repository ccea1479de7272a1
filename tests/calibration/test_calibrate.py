"""trio-calibrate and trio-eval on the tiny model: budgets respected, schedule file consumed by trio-export."""

import json

import pytest

from trio_edge.artifact.manifest import read_manifest
from trio_edge.calibration import search
from trio_edge.calibration.data import load_records, normalize_answer
from trio_edge.cli import calibrate as calibrate_cli
from trio_edge.errors import ScheduleError
from trio_edge.exporters.export import export
from trio_edge.trio.schedule import Schedule


def test_candidates_respect_budget_and_include_default(tiny):
    adapter = tiny.adapter
    grid = adapter.default_grid()
    layers, m = adapter.num_layers, adapter.image_token_count(grid)
    candidates = search.candidate_schedules(adapter, grid, 0.111)
    assert candidates[0].cuts == adapter.schedule(grid, keep_ratio=0.111).cuts
    assert len(candidates) > 5
    for schedule in candidates:
        assert schedule.layer_averaged_tokens(layers, m) <= 0.111 * m + 0.5
        entering = [m] + [c.keep for c in schedule.cuts[:-1]]
        assert all(c.keep < n for c, n in zip(schedule.cuts, entering)), "no-op cuts are not candidates"


def test_pareto_front_drops_dominated():
    def cand(budget, exact):
        c = search.Candidate(Schedule(), budget)
        c.exact_match, c.first_token, c.mean_kl = exact, exact, 0.1
        return c

    a, b, c = cand(0.1, 0.9), cand(0.1, 0.5), cand(0.05, 0.6)
    front = search.pareto([a, b, c])
    assert a in front and c in front and b not in front


@pytest.mark.slow
def test_calibrate_writes_schedule_that_export_consumes(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "schedule.json"
    code = calibrate_cli.main([str(tiny_model_dir), "--budget", "0.2", "--n", "4", "--top", "1", "-o", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "<- chosen" in printed
    body = json.loads(out.read_text())
    provenance = body["provenance"]
    assert provenance["tool"] == "trio-calibrate" and provenance["n"] == 4 and provenance["budget"] == 0.2
    chosen = provenance["metrics"]
    default = provenance["default_schedule"]
    assert (chosen["exact_match"], chosen["first_token"], -chosen["mean_kl"]) >= (
        default["exact_match"], default["first_token"], -default["mean_kl"])
    schedule = Schedule.from_json(out.read_text())
    assert schedule.budget_ratio(4, 88) <= 0.2 + 0.5 / 88
    target = tmp_path / "export"
    export(str(tiny_model_dir), target, schedule_file=str(out), max_text_tokens=32, max_new_tokens=4,
           validate=False, progress=False)
    plan = read_manifest(target).plan
    assert plan.schedule.cuts == schedule.cuts
    assert plan.schedule.threshold == schedule.threshold


def test_unreachable_latency_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    code = calibrate_cli.main([str(tiny_model_dir), "--budget", "0.2", "--n", "2", "--top", "1", "--latency-ms",
                               "0.001", "-o", str(tmp_path / "s.json"), "--quiet"])
    assert code == 2
    assert "--latency-ms" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_schedule_file_from_a_newer_tool_is_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"format_version": 9, "cuts": []}))
    with pytest.raises(ScheduleError, match="format_version 9"):
        Schedule.from_json(path.read_text())


def test_records_protocol_and_answer_normalisation(tmp_path):
    from trio_edge.data.synthetic_vqa import make_split, write_records

    write_records(make_split(3, seed=5), tmp_path)
    records = load_records(str(tmp_path), n=2)
    assert len(records) == 2 and {"image", "question", "answer"} <= set(records[0])
    assert normalize_answer(" Red. ") == "red" and normalize_answer("...") == ""


def test_accuracy_by_kind_counts_each_kind():
    from trio_edge.calibration.evaluate import accuracy_by_kind

    records = [{"answer": "Red", "kind": "color"}, {"answer": "two", "kind": "count"},
               {"answer": "three", "kind": "count"}, {"answer": "circle"}]
    assert accuracy_by_kind(["red", "two", "one", "circle"], records) == {"color": 1.0, "count": 0.5}
    assert accuracy_by_kind(["circle"], [{"answer": "circle"}]) == {}


@pytest.mark.slow
def test_trio_eval_reports_methods_kinds_and_onnx_parity(tmp_path, capsys):
    """trio-eval on the shipped trio-tiny: every method at the budget, per-kind accuracy, and TRIO through
    its exported ONNX graphs answering exactly as TRIO in PyTorch."""
    import json

    from trio_edge.cli.eval import main

    out = tmp_path / "eval.json"
    main(["trio-tiny", "--budgets", "0.111", "--methods", "full,trio,random", "--backend", "onnxruntime",
          "--n", "12", "--json", str(out), "--quiet"])
    body = json.loads(out.read_text())
    assert body["n"] == 12 and set(body["full_by_kind"]) <= {"color", "shape", "count"} and body["full_by_kind"]
    rows = {(row["method"], row["backend"]): row for row in body["rows"]}
    assert set(rows) == {("trio", "torch"), ("random", "torch"), ("trio", "onnxruntime")}
    assert rows["trio", "onnxruntime"]["accuracy"] == rows["trio", "torch"]["accuracy"]
    assert rows["trio", "onnxruntime"]["by_kind"] == rows["trio", "torch"]["by_kind"]
    for row in rows.values():
        assert abs(row["budget"] - 0.111) < 0.005 and row["retention"] == row["accuracy"] / body["full_accuracy"]
    assert "count" in capsys.readouterr().out  # the table has a column per kind
