"""A user's plain mistakes get one `error: ...` line and exit code 2 before any work: bad option values, output
paths that cannot be written, options an export fixed, a missing path or an export where a model is needed."""

import json

import pytest

from trio_edge.cli import bench as bench_cli
from trio_edge.cli import calibrate as calibrate_cli
from trio_edge.cli import check as check_cli
from trio_edge.cli import eval as eval_cli
from trio_edge.cli import export as export_cli
from trio_edge.cli import serve as serve_cli
from trio_edge.errors import InputError, ModelNotFoundError, ScheduleError


def one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("cli, argv, needle", [
    (bench_cli, ["x", "--iters", "0"], "argument --iters: must be at least 1, got 0"),
    (bench_cli, ["x", "--warmup", "-1"], "argument --warmup: must be at least 0"),
    (bench_cli, ["x", "--scale", "nan"], "argument --scale: must be a positive number"),
    (eval_cli, ["--n", "0"], "argument --n: must be at least 1"),
    (eval_cli, ["--n", "-5"], "argument --n: must be at least 1"),
    (calibrate_cli, ["trio-tiny", "--budget", "0.1", "-o", "s.json", "--max-new-tokens", "-3"], "--max-new-tokens"),
    (serve_cli, ["x", "--max-image-mb", "-1"], "argument --max-image-mb: must be a positive number, got -1"),
    (export_cli, ["trio-tiny", "-o", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (check_cli, ["x", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_option_mistakes_are_one_line_naming_help(cli, argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    one_error_line(capsys.readouterr().err, needle, "--help)")


def test_output_paths_are_refused_before_the_work(one_cut_dir, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (bench_cli, [str(one_cut_dir), "--json", str(a_file / "r.json")], "file is a file, not a directory"),
        (bench_cli, [str(one_cut_dir), "--plot", str(tmp_path / "t.txt")], "use one of .png"),
        (bench_cli, [str(one_cut_dir), "--trace", str(tmp_path)], "is a directory; pass a file path"),
        (eval_cli, ["--json", str(tmp_path)], "is a directory"),
        (calibrate_cli, ["trio-tiny", "--budget", "0.1", "-o", str(tmp_path)], "--output"),
    ]
    for cli, argv, needle in cases:
        assert cli.main([*argv, "--quiet"]) == 2
        one_error_line(capsys.readouterr().err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_bench_refuses_what_an_export_fixed_and_shape_options_without_random_weights(one_cut_dir, capsys):
    assert bench_cli.main([str(one_cut_dir), "--keep-ratio", "0.3", "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "keep_ratio is fixed at export")
    assert bench_cli.main([str(one_cut_dir), "--scale", "0.5", "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "--scale shape the random-weights model: add --random-weights")


def test_export_opset_outside_the_tested_range(tmp_path, capsys):
    for opset in ("5", "99"):
        assert export_cli.main(["trio-tiny", "-o", str(tmp_path / "e"), "--opset", opset, "--quiet"]) == 2
        one_error_line(capsys.readouterr().err, "--opset must be within 18..23")
    assert not (tmp_path / "e").exists()


def test_calibrate_budget_mistakes_name_the_budget():
    from trio_edge.calibration.search import calibrate

    with pytest.raises(ScheduleError, match=r"--budget must be .* within \(0, 1\]"):
        calibrate("trio-tiny", budget=0)
    with pytest.raises(ScheduleError, match="raise --budget"):  # below one token per cut: no candidate at all
        calibrate("trio-tiny", budget=0.001, n=1, progress=False)


def test_paths_and_exports_where_they_do_not_belong(one_cut_dir, tmp_path, monkeypatch, capsys):
    from trio_edge.models.registry import resolve

    (tmp_path / "exports").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"exports/llava-next-7b does not exist \(the folder exports/ does\)"):
        resolve("exports/llava-next-7b")
    assert resolve("llava-hf/llava-v1.6-vicuna-7b-hf") == "llava-hf/llava-v1.6-vicuna-7b-hf"  # still a hub id
    assert eval_cli.main([str(one_cut_dir), "--n", "1", "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "is an export directory (it has manifest.json), not a model")


def test_serve_refuses_bad_options_before_it_starts(one_cut_dir, capsys):
    cases = [([str(one_cut_dir), "--keep-ratio", "0.2"], "keep_ratio is fixed at export"),
             ([str(one_cut_dir), "--backend", "tensorrt"], "has no TensorRT engines"),
             (["trio-tiny", "--method", "trioo", "--keep-ratio", "0.1"], "unknown selection method 'trioo'")]
    for argv, needle in cases:
        assert serve_cli.main([*argv, "--port", "0"]) == 2
        one_error_line(capsys.readouterr().err, needle)  # no uvicorn start-up lines before it


def test_check_unreadable_graph_or_manifest_is_exit_2(one_cut_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(one_cut_dir, broken)
    graph = sorted(broken.glob("*.onnx"))[0]
    graph.write_bytes(b"not a protobuf")
    assert check_cli.main([str(broken)]) == 2
    one_error_line(capsys.readouterr().err, f"{graph.name} cannot be checked: not a readable ONNX model")
    graph.unlink()
    (broken / "manifest.json").write_text("{")
    assert check_cli.main([str(broken)]) == 2
    one_error_line(capsys.readouterr().err, "manifest.json cannot be checked: manifest.json is malformed")


def test_closed_pipeline_and_non_numeric_sampling_options(one_cut_dir):
    from helpers import random_image

    from trio_edge import load

    image = random_image(64, 64, seed=1)
    with load(one_cut_dir) as pipeline:
        with pytest.raises(InputError, match="temperature must be a number"):
            pipeline.generate(image, "what color?", temperature="hot")
    with pytest.raises(InputError, match="this pipeline is closed"):
        pipeline.generate(image, "what color?")


def test_eval_n_is_the_number_of_samples():
    from trio_edge.calibration.data import load_records

    assert len(load_records("synthetic", n=3)) == 3
    with pytest.raises(InputError, match="at least 1"):
        load_records("synthetic", n=0)
    assert json.dumps(len(load_records("synthetic", n=None))) == "200"


def test_an_error_after_a_progress_bar_starts_its_own_line(capsys):
    from tqdm import tqdm

    from trio_edge.cli.common import cli_entry

    @cli_entry
    def command(argv=None):
        bar = tqdm(total=10, desc="work")
        bar.update(3)
        raise InputError("the third step failed")

    assert command() == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: the third step failed"


@pytest.mark.slow
def test_bench_compare_full_matches_the_export_and_refuses_an_unpruned_one(export_tiny, tmp_path, capsys):
    from trio_edge.artifact.manifest import read_manifest
    from trio_edge.cli.bench import _export_full_like

    gqa = read_manifest(export_tiny("one_cut", target="onnxruntime")[1], verify_hashes=False)
    full = read_manifest(_export_full_like(gqa, tmp_path / "full", progress=False), verify_hashes=False)
    assert full.target == "onnxruntime" and not full.plan.schedule.pruning  # same attention form, unpruned
    assert bench_cli.main([str(tmp_path / "full"), "--compare-full", "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "is unpruned already")


def test_paths_spelled_as_paths_are_missing_directories(tmp_path):
    from trio_edge.models.registry import resolve

    for name in (str(tmp_path / "nope"), "./nope", "a/b/c"):
        with pytest.raises(ModelNotFoundError, match=f"{name} does not exist: pass an export directory"):
            resolve(name)


def test_stream_prints_the_same_summary_line(one_cut_dir, tmp_path, capsys):
    from helpers import random_image

    from trio_edge.cli import run as run_cli

    image = tmp_path / "in.png"
    random_image(90, 140, seed=4).save(image)
    argv = [str(one_cut_dir), "--image", str(image), "--prompt", "what color is the circle?"]
    assert run_cli.main(argv) == 0
    plain = capsys.readouterr()
    assert run_cli.main([*argv, "--stream"]) == 0
    streamed = capsys.readouterr()
    assert streamed.out == plain.out
    summary = [line.split("; TTFT")[0] for line in (plain.err, streamed.err)]
    assert summary[0] == summary[1] and summary[0].startswith("[40 kept")


def test_timeline_plot_gives_every_stage_its_own_colour(tmp_path):
    from PIL import Image

    from trio_edge.runtime.bench import write_timeline_png

    names = [f"stage_{i}" for i in range(11)]
    report = {"timeline": [(name, 10.0 * i, 10.0) for i, name in enumerate(names)]}
    write_timeline_png({"pruned": report}, tmp_path / "t.png")
    image = Image.open(tmp_path / "t.png").convert("RGB")
    row = {image.getpixel((x, 40)) for x in range(170, 1180)}  # the bars of the one row
    assert len(row - {(255, 255, 255)}) == len(names)
