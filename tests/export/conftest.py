import pytest

from trio_edge.export.exporter import export
from trio_edge.models.registry import load
from trio_edge.models.tiny import make_tiny_llava_next

SCHEDULES = {"one_cut": "1:40", "three_cuts": "0:30,1:16,2:8"}


@pytest.fixture(scope="session")
def export_model(tmp_path_factory):
    path = make_tiny_llava_next(tmp_path_factory.mktemp("tiny-export-model"), seed=3)
    return load(str(path))


@pytest.fixture(scope="session")
def export_tiny(export_model, tmp_path_factory):
    """Export the tiny model at a named schedule once per session (fp32, validated)."""
    done = {}

    def get(name):
        if name not in done:
            out = tmp_path_factory.mktemp("exports") / name
            summary = export(export_model.source, out, cuts=SCHEDULES[name], loaded=export_model,
                             max_text_tokens=48, max_new_tokens=12, progress=False)
            done[name] = (name, out, summary)
        return done[name]

    return get


@pytest.fixture(scope="session", params=sorted(SCHEDULES))
def exported(request, export_tiny):
    """(schedule name, export dir, summary) for one cut and for three cuts."""
    return export_tiny(request.param)


@pytest.fixture(scope="session")
def one_cut_dir(export_tiny):
    return export_tiny("one_cut")[1]
