"""The commands as a user runs them: trio-run on models and exports, trio-bench, trio-export errors."""

import json

import pytest
import torch

from trio_edge.cli import bench as bench_cli
from trio_edge.cli import export as export_cli
from trio_edge.cli import run as run_cli


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from helpers import random_image

    path = tmp_path_factory.mktemp("img") / "in.png"
    random_image(90, 140, seed=4).save(path)
    return str(path)


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_run_json_on_export_matches_run_on_model(one_cut_dir, export_model, image_file, capsys):
    assert run_cli.main([str(one_cut_dir), "--image", image_file, "--prompt", "what color is it?", "--json",
                         "--max-new-tokens", "5"]) == 0
    from_export = last_json(capsys.readouterr().out)
    assert set(from_export) >= {"text", "token_ids", "kept", "timings", "prompt_tokens"}
    assert len(from_export["kept"]) == 1 and len(from_export["kept"][0]) == 40
    assert {"vision", "ttft", "decode_ms_per_token"} <= set(from_export["timings"])
    assert run_cli.main([export_model.source, "--image", image_file, "--prompt", "what color is it?", "--json",
                         "--cuts", "1:40", "--max-new-tokens", "5"]) == 0
    from_model = last_json(capsys.readouterr().out)
    assert from_model["kept"] == from_export["kept"]
    assert from_model["token_ids"] == from_export["token_ids"]


def test_run_stream_prints_the_same_text(one_cut_dir, image_file, capsys):
    run_cli.main([str(one_cut_dir), "--image", image_file, "--prompt", "what color is it?", "--max-new-tokens", "5"])
    plain = capsys.readouterr().out.strip()
    run_cli.main([str(one_cut_dir), "--image", image_file, "--prompt", "what color is it?", "--max-new-tokens", "5",
                  "--stream"])
    assert capsys.readouterr().out.strip() == plain


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_one_clear_line(one_cut_dir, image_file, capsys):
    code = run_cli.main([str(one_cut_dir), "--image", image_file, "--prompt", "x", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "no CUDA GPU is usable here" in err and "Traceback" not in err


def test_backend_for_model_needs_an_export(export_model, image_file, capsys):
    code = run_cli.main([export_model.source, "--image", image_file, "--prompt", "x", "--backend", "onnxruntime"])
    assert code == 2 and "trio-export" in capsys.readouterr().err


def test_low_memory_run_answers_and_on_a_model_is_refused(one_cut_dir, export_model, image_file, capsys):
    args = ["--image", image_file, "--prompt", "what color is it?", "--max-new-tokens", "5"]
    run_cli.main([str(one_cut_dir), *args])
    plain = capsys.readouterr().out.strip()
    assert run_cli.main([str(one_cut_dir), *args, "--low-memory"]) in (0, None)
    assert capsys.readouterr().out.strip() == plain
    code = run_cli.main([export_model.source, *args, "--low-memory"])
    err = capsys.readouterr().err
    assert code == 2 and "low_memory (--low-memory)" in err and len(err.strip().splitlines()) == 1


def test_schedule_flags_on_an_export_are_refused(one_cut_dir, image_file, capsys):
    code = run_cli.main([str(one_cut_dir), "--image", image_file, "--prompt", "x", "--cuts", "1:10"])
    assert code == 2 and "fixed at export" in capsys.readouterr().err


@pytest.mark.slow
def test_fp16_export_with_model_precision_selection(image_file, tmp_path, capsys):
    """trio-export --dtype fp16 --select-precision model: validated graphs, the choice in the manifest, no
    fp32 proxy copy in the select graph, and trio-run answers from it."""
    from trio_edge.artifact.manifest import read_manifest

    out = tmp_path / "fp16"
    assert export_cli.main(["trio-tiny", "-o", str(out), "--dtype", "fp16", "--cuts", "1:40",
                            "--select-precision", "model", "--max-new-tokens", "4", "--quiet"]) == 0
    manifest = read_manifest(out)
    assert manifest.plan.schedule.precision == "model"
    assert all(check["ok"] for check in manifest.validation)
    assert "selection in the model's precision" in capsys.readouterr().out
    import onnx

    select = next(g for g in manifest.graphs.values() if g.kind == "select")
    weights = [t for t in onnx.load(str(out / select.file)).graph.initializer  # matrices, not folded index
               if len(t.dims) == 2 and t.dims[0] * t.dims[1] >= 2048 and t.data_type != onnx.TensorProto.BOOL]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)  # no fp32 proxy copy
    assert run_cli.main([str(out), "--image", image_file, "--prompt", "what color is the circle?", "--json"]) == 0
    assert len(last_json(capsys.readouterr().out)["kept"][0]) == 40


def test_export_cli_errors_are_one_line(export_model, tmp_path, capsys):
    code = export_cli.main([export_model.source, "-o", str(tmp_path / "e"), "--cuts", "1:999", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "KEEP must be within 1..88" in err and len(err.strip().splitlines()) == 1
    code = export_cli.main([export_model.source, "-o", str(tmp_path / "e"), "--method", "sparsevlm", "--quiet"])
    err = capsys.readouterr().err  # a named rule without a budget would otherwise export an unpruned model
    assert code == 2 and "--method sparsevlm needs a token budget: pass --budget" in err
    assert len(err.strip().splitlines()) == 1
    code = export_cli.main(["no-such-alias", "-o", str(tmp_path / "e")])
    assert code == 2 and "unknown model 'no-such-alias'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_bench_on_export_reports_stages_ratios_trace_and_plot(one_cut_dir, tmp_path, capsys):
    out, trace, plot = tmp_path / "b.json", tmp_path / "t.json", tmp_path / "p.png"
    code = bench_cli.main([str(one_cut_dir), "--compare-full", "--warmup", "1", "--iters", "2", "--new-tokens", "4",
                           "--prompt", "describe the objects in this picture",
                           "--json", str(out), "--trace", str(trace), "--plot", str(plot), "--quiet"])
    assert code == 0
    result = json.loads(out.read_text())
    pruned, full = result["results"]["pruned"], result["results"]["full"]
    assert {"select_0_layer01", "segment_00_01", "segment_01_04", "vision", "ttft"} <= set(pruned["stages"])
    assert pruned["kept"] == [40] and full["kept"] == []
    assert pruned["flops"]["prefill_total"] < full["flops"]["prefill_total"]
    assert pruned["kv_used_bytes"] < full["kv_used_bytes"]
    ratios = result["ratios"]
    assert ratios["prefill_flops_reduction"] == pytest.approx(full["flops"]["prefill_total"] / pruned["flops"]["prefill_total"])
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["name"] for e in events} >= {"vision", "select_0_layer01"}
    from PIL import Image

    assert Image.open(plot).size[0] == 1200
    assert "ratios" in last_json(capsys.readouterr().out)


def test_run_and_bench_take_trio_ve(export_model, image_file, tmp_path, capsys):
    """--method trio-ve on a model: vision_kept per tile in --json, TRIO's cut on the reduced span; trio-bench
    times it against the unpruned model; the text summary names the vision stage; a bad cut is one line, exit 2."""
    tiles = export_model.adapter.tile_count(export_model.adapter.default_grid())
    assert run_cli.main([export_model.source, "--image", image_file, "--prompt", "what color is it?", "--json",
                         "--method", "trio-ve", "--cuts", "vision:6,2:20", "--max-new-tokens", "3"]) == 0
    body = last_json(capsys.readouterr().out)
    assert len(body["vision_kept"]) == tiles and all(len(row) == 6 and min(row) >= 1 for row in body["vision_kept"])
    assert [len(kept) for kept in body["kept"]] == [20]
    report = tmp_path / "bench.json"
    assert bench_cli.main([export_model.source, "--method", "trio-ve", "--cuts", "vision:6,2:20", "--compare-full",
                           "--warmup", "0", "--iters", "1", "--new-tokens", "2", "--json", str(report)]) in (0, None)
    assert "vision 6 per tile" in json.loads(report.read_text())["schedule"]
    capsys.readouterr()
    assert run_cli.main([export_model.source, "--image", image_file, "--prompt", "what color is it?",
                         "--method", "trio-ve", "--cuts", "vision:9", "--max-new-tokens", "2"]) in (0, None)
    assert "[9 kept per tile in the vision tower;" in capsys.readouterr().err  # not "no pruning"
    assert run_cli.main([export_model.source, "--image", image_file, "--prompt", "x", "--method", "trio-ve",
                         "--cuts", "vision:9,2:80"]) == 2
    err = capsys.readouterr().err.strip()
    assert "KEEP must be within" in err and len(err.splitlines()) == 1
