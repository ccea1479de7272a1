"""Exports are atomic: a killed (SIGKILL) or failing trio-export never leaves a directory the runtime accepts,
a rerun succeeds (mentioning the leftover `.NAME.partial-*` directory in one notice line), and --force swaps
the new export in with one rename, the old one staying complete and loadable until then.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trio_edge import load
from trio_edge.errors import ArtifactError
from trio_edge.files import atomic_directory, stale_notice, stale_siblings

PROMPT = "what color is the circle?"


@pytest.fixture(scope="module")
def shared_export(hardening_export):
    return hardening_export


@pytest.fixture(scope="module")
def model_dir(shared_export):
    return shared_export.parent / "model"


def export_command(model_dir: Path, output: Path, *options: str) -> list[str]:
    code = "import sys; from trio_edge.cli.export import main; sys.exit(main())"
    return [sys.executable, "-c", code, str(model_dir), "-o", str(output), "--quiet", *options]


def partials(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f".{output.name}.partial-*"))


def kill_midway(command: list[str], output: Path, log: Path) -> list[Path]:
    """Start an export, SIGKILL it once its partial directory holds a graph file, return the partials."""
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            found = [p for p in partials(output) if any(p.iterdir())]
            if found:
                break
            assert process.poll() is None, f"export ended before it could be killed:\n{log.read_text()}"
            time.sleep(0.05)
        else:
            pytest.fail(f"no partial export directory appeared:\n{log.read_text()}")
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return partials(output)


def assert_not_loadable(directory: Path):
    with pytest.raises(ArtifactError):
        load(directory)


@pytest.mark.slow
def test_sigkill_midway_leaves_nothing_loadable_and_a_rerun_succeeds(model_dir, tmp_path):
    output = tmp_path / "exports" / "tiny"
    # 1. a validated export (long enough to be caught mid-write), killed while it writes graphs
    left = kill_midway(export_command(model_dir, output, "--cuts", "1:40"), output, tmp_path / "killed.log")
    if output.exists():
        assert_not_loadable(output)
    assert left, "the killed export left no partial directory: it was not killed midway"
    for partial in left:
        assert not (partial / "manifest.json").exists()
        assert_not_loadable(partial)

    # 2. a rerun succeeds despite the leftover, says so in one line, and the result loads and runs
    done = subprocess.run(export_command(model_dir, output, "--no-validate"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and left[0].name in notices[0] and "processes are gone" in notices[0], done.stderr
    pipeline = load(output)
    assert len(pipeline.generate(_image(tmp_path), PROMPT, max_new_tokens=2).token_ids) >= 1
    old_manifest = (output / "manifest.json").read_bytes()

    # 3. a --force export over it, killed midway: the old export is untouched and still loads
    for partial in left:  # the user cleaned up, as the notice says
        shutil.rmtree(partial)
    left = kill_midway(export_command(model_dir, output, "--cuts", "1:40", "--force"), output,
                       tmp_path / "killed-force.log")
    assert left
    assert (output / "manifest.json").read_bytes() == old_manifest
    load(output).generate(_image(tmp_path), PROMPT, max_new_tokens=1)
    assert not list(output.parent.glob(f".{output.name}.old-*"))


def _image(tmp_path: Path) -> Path:
    from helpers import random_image

    path = tmp_path / "image.png"
    if not path.exists():
        random_image(90, 60, seed=2).save(path)
    return path


def test_force_replaces_an_export_atomically(shared_export, model_dir, tmp_path, monkeypatch):
    """While the new export is written, the old one stays complete and loadable; then one rename swaps them."""
    import trio_edge.exporters.export as exporter

    target = tmp_path / "tiny"
    shutil.copytree(shared_export, target)
    old = json.loads((target / "manifest.json").read_text())
    seen = []
    real_write_manifest = exporter.write_manifest

    def checking_write_manifest(directory, *args, **kwargs):
        assert directory != target and directory.name.startswith(".tiny.partial-")
        assert json.loads((target / "manifest.json").read_text()) == old  # untouched so far
        seen.append(load(target).plan.selects)  # and loadable
        return real_write_manifest(directory, *args, **kwargs)

    monkeypatch.setattr(exporter, "write_manifest", checking_write_manifest)
    exporter.export(str(model_dir), target, max_text_tokens=40, max_new_tokens=6, force=True, validate=False,
                    progress=False)
    assert len(seen) == 1 and len(seen[0]) == 1  # the old export (one cut) was loadable mid-export
    new = load(target)
    assert new.plan.selects == () and new.plan.max_new_tokens == 6  # the new export (no cut) replaced it
    assert stale_siblings(target) == []  # no partial or old directory left behind
    new.generate(_image(tmp_path), PROMPT, max_new_tokens=2)


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_inside_the_export_leaves_nothing(failure, shared_export, model_dir, tmp_path, monkeypatch):
    import trio_edge.exporters.export as exporter

    def failing_export_all(*args, **kwargs):
        directory = next(a for a in [*args, *kwargs.values()] if isinstance(a, Path) and ".partial-" in a.name)
        (directory / "vision.onnx").write_bytes(b"half a graph")
        raise failure

    monkeypatch.setattr(exporter, "_export_all", failing_export_all)
    fresh = tmp_path / "fresh"
    with pytest.raises(type(failure)):
        exporter.export(str(model_dir), fresh, progress=False)
    assert not fresh.exists() and stale_siblings(fresh) == [] and partials(fresh) == []
    # the same failure during a --force over an existing export leaves the old one as it was
    existing = tmp_path / "existing"
    shutil.copytree(shared_export, existing)
    before = (existing / "manifest.json").read_bytes()
    with pytest.raises(type(failure)):
        exporter.export(str(model_dir), existing, force=True, progress=False)
    assert (existing / "manifest.json").read_bytes() == before and stale_siblings(existing) == []
    load(existing)


def test_atomic_directory_swaps_in_one_rename(tmp_path, monkeypatch):
    import trio_edge.files as files

    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    exchanges, replaces = [], []
    real_exchange, real_replace = files._exchange, os.replace
    monkeypatch.setattr(files, "_exchange", lambda a, b: exchanges.append(real_exchange(a, b)) or exchanges[-1])
    monkeypatch.setattr(files.os, "replace", lambda a, b: replaces.append((a, b)) or real_replace(a, b))
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "a").write_text("2")
        assert (target / "a").read_text() == "1"
    assert (target / "a").read_text() == "2" and stale_siblings(target) == []
    if sys.platform.startswith("linux") and exchanges == [True]:
        assert replaces == []  # one atomic exchange: the target never went missing
    else:  # no RENAME_EXCHANGE here: two renames, the second right after the first
        assert len(replaces) == 2
    # refusing to overwrite without --force
    with pytest.raises(ArtifactError, match="--force"):
        with atomic_directory(target):
            pass


def test_stale_partial_notice_is_one_line(tmp_path):
    target = tmp_path / "model-export"
    assert stale_notice(target) is None
    dead = tmp_path / ".model-export.partial-999999999-abcd"
    dead.mkdir()
    (tmp_path / ".other.partial-1-x").mkdir()  # another export's leftovers: not ours to mention
    notice = stale_notice(target)
    assert notice.count("\n") == 0 and dead.name in notice and "processes are gone" in notice
    alive = tmp_path / f".model-export.partial-{os.getppid()}-efgh"
    alive.mkdir()
    notice = stale_notice(target)
    assert "2 leftover" in notice and "may belong to an export still running" in notice
    mine = tmp_path / f".model-export.partial-{os.getpid()}-ijkl"  # this process's own: not stale
    mine.mkdir()
    assert mine not in stale_siblings(target)


# ---- no pickle anywhere: weights via safetensors, any torch.load with weights_only=True ----------------------------
PICKLE_MODULES = ("pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal")


def pickle_uses(source: str) -> list[str]:
    """Lines that (may) unpickle: a pickle-family module named anywhere, torch.load without weights_only=True,
    np.load / numpy.load with allow_pickle=True."""
    import ast
    import re

    found = [f"line {n}: {line.strip()}" for n, line in enumerate(source.splitlines(), 1)
             if re.search(r"\b(" + "|".join(PICKLE_MODULES) + r")\b", line)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            found.append(f"line {node.lineno}: from torch import load")
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name in ("torch.load", "torch.serialization.load") and keywords.get("weights_only") != "True":
            found.append(f"line {node.lineno}: {ast.unparse(node)} (needs weights_only=True)")
        if name in ("np.load", "numpy.load") and keywords.get("allow_pickle", "False") != "False":
            found.append(f"line {node.lineno}: {ast.unparse(node)} (allow_pickle)")
    return found


def test_pickle_checker_catches_each_pattern():
    assert pickle_uses("import pickle\n")
    assert pickle_uses("import torch\nx = torch.load(path)\n")
    assert pickle_uses("import torch\nx = torch.load(path, weights_only=False)\n")
    assert pickle_uses("import numpy as np\nx = np.load(p, allow_pickle=True)\n")
    assert pickle_uses("from torch import load\n")
    assert not pickle_uses("import torch, numpy as np\nx = torch.load(p, weights_only=True)\ny = np.load(p)\n")


def test_no_pickle_in_the_package_source():
    root = Path(__file__).resolve().parents[2]
    offenders = {}
    for path in sorted([*(root / "trio_edge").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]):
        uses = pickle_uses(path.read_text(encoding="utf-8"))
        if uses:
            offenders[str(path.relative_to(root))] = uses
    assert not offenders, f"pickle-based loading in the package: {offenders}"


def test_exports_and_tiny_checkpoints_hold_no_pickle_files(shared_export, model_dir):
    for directory in (shared_export, model_dir):
        names = [p.name for p in directory.rglob("*") if p.is_file()]
        assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy"))], names
    assert any(name.endswith(".safetensors") for name in map(str, model_dir.iterdir()))


def test_force_never_replaces_what_is_not_an_export(tmp_path, monkeypatch, capsys):
    """--force replaces an earlier export only: a plain file, a directory of other files, the current directory
    and a path under a file are refused before any work, and left as they were."""
    from trio_edge.cli.export import main

    other = tmp_path / "notes"
    other.mkdir()
    (other / "important.txt").write_text("keep me")
    plain_file = tmp_path / "README.md"
    plain_file.write_text("keep me too")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    cases = {other: "not an earlier export", plain_file: "is a file, not a directory",
             Path("."): "current directory", plain_file / "sub": "README.md is a file, not a directory"}
    for output, message in cases.items():
        assert main(["trio-tiny", "-o", str(output), "--force", "--quiet"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and "Traceback" not in error
    assert (other / "important.txt").read_text() == "keep me" and plain_file.read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "notes", "work"]  # no partial left behind


def test_output_directory_rules(tmp_path):
    from trio_edge.errors import InputError
    from trio_edge.files import check_output_directory

    (tmp_path / "empty").mkdir()
    assert check_output_directory(tmp_path / "empty", force=False, marker="manifest.json")  # nothing to lose
    assert not check_output_directory(tmp_path / "new" / "deeper", force=False, marker="manifest.json")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="already exists; pass --force"):
        check_output_directory(tmp_path / "old", force=False, marker="manifest.json")
    assert check_output_directory(tmp_path / "old", force=True, marker="manifest.json")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="broken symbolic link"):
        check_output_directory(tmp_path / "dangling", force=True, marker="manifest.json")


def test_artifact_directory_gets_the_umask_mode_not_mkdtemp_0700(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "artifact") as tmp:
            (tmp / "file").write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "artifact").stat().st_mode & 0o777 == 0o755
