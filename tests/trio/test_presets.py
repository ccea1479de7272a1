"""The authors' released schedules as presets: exact on the 32-layer / 576-token reference, scaled elsewhere
(and saying so), method taken from the preset, conflicts refused."""

import pytest

from trio_edge.errors import ScheduleError
from trio_edge.trio.presets import PRESETS, method_for, preset_info
from trio_edge.trio.schedule import Schedule, resolve_schedule


@pytest.mark.parametrize("name, cuts, average", [("trio-64", "1:92,10:54,15:22", 64), ("trio-128", "1:218,10:128,15:54", 128),
                                                 ("dart-128", "2:132", None), ("fastv", "2:288", None),
                                                 ("pdrop", "8:288,16:144,24:72", None)])
def test_presets_are_the_released_tables_on_the_reference_model(name, cuts, average):
    text, scaled = preset_info(name).cuts_for(32, 576)
    assert text == cuts and not scaled
    if average is not None:  # TRIO's tables are layer-averaged budgets
        assert Schedule.parse(text).layer_averaged_tokens(32, 576) == average


def test_presets_scale_to_shallow_models_and_say_so():
    for name in PRESETS:
        if PRESETS[name].method == "trio-ve":  # a vision stage and a cut: tests/trio/test_trio_ve.py
            continue
        if PRESETS[name].vision:  # per tile: scaled by the tile's patches (trio-tiny: 49)
            schedule = resolve_schedule(preset=name, num_layers=4, num_image_tokens=259, tile_tokens=50,
                                        vision_tokens_for=lambda keep, method: 5 * keep)
            assert schedule.provenance["scaled"] == "from 576 patches per tile to 49" and not schedule.cuts
            continue
        schedule = resolve_schedule(preset=name, num_layers=4, num_image_tokens=259)
        assert schedule.provenance["preset"] == name and "4 / 259" in schedule.provenance["scaled"]
        assert schedule.positions == ("original" if PRESETS[name].method in ("fastv", "dart") else "renumber")
    assert [c.layer for c in resolve_schedule(preset="fastv", num_layers=4, num_image_tokens=259).cuts] == [1]


def test_preset_conflicts_are_refused():
    with pytest.raises(ScheduleError, match="mutually exclusive"):
        resolve_schedule(preset="trio-64", cuts="1:40", num_layers=4, num_image_tokens=259)
    with pytest.raises(ScheduleError, match="is a fastv schedule"):
        method_for("dart", "fastv", "trio")
    with pytest.raises(ScheduleError, match="unknown preset"):
        preset_info("trio-999")
    assert method_for(None, "dart-64", "trio") == "dart" and method_for(None, None, "trio") == "trio"


def test_deeper_models_take_the_authors_layers_and_pdrop_keeps_int_of_its_ratios():
    """The authors' scripts pass the same layers to 13B (40 layers) as to 7B; PyramidDrop keeps int(M * ratio)."""
    def cuts(name, layers, tokens):
        return preset_info(name).cuts_for(layers, tokens)[0]

    assert cuts("pdrop", 40, 576) == "8:288,16:144,24:72" and cuts("fastv", 40, 576) == "2:288"
    assert cuts("trio-64", 40, 576) == "1:92,10:54,15:22"
    assert cuts("pdrop", 32, 135) == "8:67,16:33,24:16"  # int(135 * 0.5), int(135 * 0.25), int(135 * 0.125)
    assert cuts("pdrop", 12, 51) == "3:25,6:12,9:6"  # shallower: layers by depth
    assert cuts("fastv", 32, 135) == "2:68"  # FastV's code rounds: round(135 * (1 - 0.5))
