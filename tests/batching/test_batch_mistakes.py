"""trio-batch's and trio-serve --engine ray's refusals: one `error: ...` line, exit code 2, before any work and
with nothing lost (an existing output is left as it was). Fast: no Ray cluster starts."""

from __future__ import annotations

import json
import socket
import sys

import pytest

from trio_edge.cli import batch as batch_cli
from trio_edge.cli import serve as serve_cli

SAMPLE = "trio_edge/assets/samples/color.png"
ANSWERED = '{"id": "a", "text": "red"}\n'


def one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once it is closed


def write_records(path, *records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" if isinstance(r, dict) else r for r in records))
    return str(path)


@pytest.fixture
def records(tmp_path):
    image = str((tmp_path.parent / "color.png"))
    from pathlib import Path

    Path(image).write_bytes(Path(SAMPLE).read_bytes())
    return write_records(tmp_path / "in.jsonl", {"id": "a", "image": image, "prompt": "what color?"},
                         {"id": "b", "image": image, "prompt": "what shape?"})


def test_engine_ray_without_ray_names_the_pip_command(one_cut_dir, records, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    assert batch_cli.main([str(one_cut_dir), records, "-o", str(tmp_path / "out.jsonl"), "--engine", "ray"]) == 2
    one_error_line(capsys.readouterr().err, "pip install 'trio-edge[ray]'")
    assert serve_cli.main([str(one_cut_dir), "--engine", "ray", "--replicas", "2"]) == 2
    one_error_line(capsys.readouterr().err, "pip install 'trio-edge[ray]'")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("address, needle", [("127.0.0.1:{port}", "cannot reach the Ray cluster"),
                                             ("ray://127.0.0.1:{port}", "cannot reach the Ray cluster"),
                                             ("not an address", "is not a Ray cluster address")])
def test_an_unreachable_or_malformed_address(one_cut_dir, records, tmp_path, address, needle, capsys):
    address = address.format(port=closed_port())
    out = tmp_path / "out.jsonl"
    assert batch_cli.main([str(one_cut_dir), records, "-o", str(out), "--engine", "ray", "--address", address]) == 2
    one_error_line(capsys.readouterr().err, needle)
    assert serve_cli.main([str(one_cut_dir), "--engine", "ray", "--address", address]) == 2
    one_error_line(capsys.readouterr().err, needle)
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--engine", "ray", "--replicas", "0"], "argument --replicas: must be at least 1, got 0"),
    (["--engine", "ray", "--autoscale", "4:2"], "MIN is over MAX"),
    (["--engine", "ray", "--autoscale", "two"], "is not MIN:MAX"),
    (["--engine", "ray", "--replicas", "2", "--autoscale", "1:2"], "not allowed with argument"),
    (["--engine", "ray", "--cpus-per-replica", "0"], "must be a positive number"),
    (["--replicas", "2"], "--replicas applies to --engine ray only"),
])
def test_serve_scale_mistakes(one_cut_dir, argv, needle, capsys):
    try:
        code = serve_cli.main([str(one_cut_dir), *argv])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    assert code == 2
    one_error_line(capsys.readouterr().err, needle)


def test_input_mistakes(one_cut_dir, tmp_path, capsys):
    image = str(tmp_path / "x.png")
    good = {"id": 1, "image": image, "prompt": "what?"}
    out = tmp_path / "out.jsonl"
    cases = [
        (write_records(tmp_path / "csv.jsonl", "id,image,prompt\n", "1,x.png,what?\n"), "line 1 is not JSON",),
        (write_records(tmp_path / "list.jsonl", "[1, 2]\n"), "line 1 is a JSON list"),
        (write_records(tmp_path / "noimage.jsonl", good, {"id": 2, "prompt": "what?"}), "line 2 (id 2) has no image"),
        (write_records(tmp_path / "noprompt.jsonl", {"id": 2, "image": image}), "line 1 (id 2) has no prompt"),
        (write_records(tmp_path / "noid.jsonl", {"image": image, "prompt": "q"}), "line 1 has no id"),
        (write_records(tmp_path / "dup.jsonl", good, "\n", good), "line 3: the id 1 is already used on line 1"),
        (write_records(tmp_path / "typo.jsonl", {**good, "max_tokens": 3}), "unknown keys ['max_tokens']"),
        (write_records(tmp_path / "empty.jsonl", "\n"), "has no records"),
        (str(tmp_path / "missing.jsonl"), "not found"),
        (str(tmp_path), "pass --prompt"),
    ]
    for path, needle in cases:
        assert batch_cli.main([str(one_cut_dir), path, "-o", str(out), "--quiet"]) == 2, needle
        one_error_line(capsys.readouterr().err, needle)
    assert not out.exists()


def test_an_existing_output_needs_resume_or_force(one_cut_dir, records, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text(ANSWERED)
    assert batch_cli.main([str(one_cut_dir), records, "-o", str(out), "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "exists; pass --resume", "or --force")
    with pytest.raises(SystemExit) as exit_:
        batch_cli.main([str(one_cut_dir), records, "-o", str(out), "--resume", "--force"])
    assert exit_.value.code == 2
    one_error_line(capsys.readouterr().err, "not allowed with argument")
    assert batch_cli.main([str(one_cut_dir), records, "-o", records, "--force", "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "is the input")
    out.write_text("not json\n")
    assert batch_cli.main([str(one_cut_dir), records, "-o", str(out), "--resume", "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "line 1 is not a trio-batch answer")
    assert out.read_text() == "not json\n"
    with pytest.raises(SystemExit):
        batch_cli.main([str(one_cut_dir), records, "-o", str(out), "--actors", "2"])
    one_error_line(capsys.readouterr().err, "--actors applies to --engine ray only")


def test_the_api_function_is_not_shadowed_by_its_package():
    """`trio_edge.batch` stays the function after the package that implements it is imported (a subpackage named
    `batch` would replace the lazily bound function with itself: 'module' object is not callable)."""
    import importlib

    import trio_edge

    importlib.import_module("trio_edge.batching")
    assert callable(trio_edge.batch) and trio_edge.batch.__name__ == "batch"
