"""trio-eval's per-method schedules: exact budgets (1/9, 2/9, 1/3), each method at its authors' layers, an
honest n/a where a method cannot reach a budget on a shallow model."""

import pytest

from trio_edge.calibration.evaluate import method_schedule, parse_budgets
from trio_edge.errors import InputError, ScheduleError


def test_budgets_are_exact_fractions():
    assert parse_budgets("1/3,2/9,1/9") == [1 / 3, 2 / 9, 1 / 9]
    assert parse_budgets("0.25") == [0.25]
    for bad in ("1/0", "x", "0", "1.5"):
        with pytest.raises(InputError, match="--budgets"):
            parse_budgets(bad)


def test_each_method_runs_at_its_authors_placement(tiny):
    adapter, grid = tiny.adapter, tiny.adapter.default_grid()
    layers, m = adapter.num_layers, adapter.image_token_count(grid)
    for method, budget, first_layer in [("trio", 1 / 9, 0), ("fastv", 1 / 3, 1), ("dart", 1 / 3, 1), ("pdrop", 1 / 3, 1)]:
        schedule, placement = method_schedule(adapter, grid, method, budget)
        assert abs(schedule.budget_ratio(layers, m) - budget) * m <= 1.0  # within one token, layer-averaged
        assert schedule.cuts[0].layer == first_layer and placement
    assert method_schedule(adapter, grid, "fastv", 1 / 3)[0].positions == "original"
    # 4 layers: FastV/DART run layer 0 on every token before their first cut, so 1/9 is out of reach
    with pytest.raises(ScheduleError, match="below what cuts"):
        method_schedule(adapter, grid, "fastv", 1 / 9)
    schedule, placement = method_schedule(adapter, grid, "pdrop", 1 / 9)  # falls back to TRIO's earlier layers
    assert "TRIO's cut layers" in placement and schedule.cuts[0].layer == 0


def test_visionzip_runs_its_authors_per_tile_table(tiny):
    adapter, grid = tiny.adapter, tiny.adapter.default_grid()
    layers, m, tiles = adapter.num_layers, adapter.image_token_count(grid), adapter.tile_count(grid)
    # the tiny tower: 16 patches per tile; 54+10, 108+20, 162+30 of 576 scale (round half to even) to 2+0, 3+1, 4+1
    for budget, split in [(1 / 9, (2, 0)), (2 / 9, (3, 1)), (1 / 3, (4, 1))]:
        schedule, placement = method_schedule(adapter, grid, "visionzip", budget)
        vision = schedule.vision
        assert (vision.dominant, vision.keep - vision.dominant) == split and "visionzip-" in placement
        assert schedule.budget_ratio(layers, m) == tiles * vision.keep / m and not schedule.cuts
    schedule, placement = method_schedule(adapter, grid, "visionzip", 0.25)  # no table: KEEP per tile for it
    assert schedule.vision.keep == round(0.25 * m / tiles) and placement == "KEEP per tile for the budget"


def test_a_cut_below_a_methods_minimum_is_an_na_row_not_an_abort():
    """trio-tiny-qwen at 1/9: DART's one cut would keep 2 tokens, under its 4 pivots; the run goes on."""
    from trio_edge.calibration.data import load_records
    from trio_edge.calibration.evaluate import evaluate
    from trio_edge.models.registry import load

    loaded = load("trio-tiny-qwen")
    result = evaluate(loaded, load_records("synthetic", n=2), budgets=[1 / 9], methods=["full", "dart", "uniform"],
                      progress=False)
    rows = {row["method"]: row for row in result.rows}
    assert rows["dart"]["schedule"] == "n/a" and "keeps at least 4 image tokens" in rows["dart"]["note"]
    assert rows["uniform"]["accuracy"] is not None
